"""Vision-language GGUF models: a llama.cpp language model plus its projector (mmproj), via mtmd.

The conversation is rendered by the model's own chat template with each image replaced by
mtmd's media marker; the text around the markers is tokenized as any chat is, and mtmd turns
each image into a chunk of image tokens (adding whatever wrapping tokens the projector type
needs). The prompt
is a list of segments, token lists and image chunks; `_feed_prompt` puts them into the context
in order (encoding each image with the projector and decoding its embeddings), and the shared
sampling loop of LlamaEngine does the rest, so streaming, stop strings, logprobs and seeds work
exactly as for text.

The KV cache keeps the longest prefix shared with the previous request, images included (an
image matches when the same picture sat at the same position), so a conversation that goes on
turn after turn encodes each image once.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nexa.engines.base import Task
from nexa.engines.llama.engine import LlamaEngine
from nexa.engines.llama.native_log import route_llama_logs
from nexa.engines.llama.scheduler import Scheduler, Slot, redecode
from nexa.errors import ContextLengthExceeded, InvalidRequest

log = logging.getLogger("nexa.engine.vision")

# Projector types of the llava family: without a chat template in the GGUF, these models were
# trained on llava-1.5's "USER: ... ASSISTANT:" conversation format.
_LLAVA_PROJECTORS = {"mlp", "mlp_norm", "ldp", "ldpv2"}
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


class RGBImage(Protocol):
    """What the engine needs of an input image (the server's image_input.InputImage)."""

    rgb: bytes
    width: int
    height: int
    digest: str


@dataclass
class ImageSegment:
    chunk: int  # an mtmd_input_chunk this segment owns
    n_tokens: int  # KV cells it fills
    n_pos: int  # positions it advances (fewer than n_tokens for M-RoPE models)
    digest: str


class VisionPrompt:
    """Token lists and image chunks in order; len() is the number of tokens they fill."""

    def __init__(self, segments: list[list[int] | ImageSegment], free_chunk: Any):
        self.segments = segments
        self._free_chunk = free_chunk
        self.n_tokens = sum(len(s) if isinstance(s, list) else s.n_tokens for s in segments)
        self.n_pos = sum(len(s) if isinstance(s, list) else s.n_pos for s in segments)
        self.images = [s for s in segments if isinstance(s, ImageSegment)]

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def image_tokens(self) -> int:
        return sum(s.n_tokens for s in self.images)

    def close(self) -> None:
        for seg in self.images:
            if seg.chunk:
                self._free_chunk(seg.chunk)
                seg.chunk = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the library may already be gone
            pass


def _projector_type(path: Path) -> str:
    """clip.projector_type of a projector GGUF ("" when it cannot be read)."""
    try:
        import gguf

        field = gguf.GGUFReader(str(path)).get_field("clip.projector_type")
        return field.contents() if field is not None else ""
    except Exception:  # a projector mtmd can load but gguf cannot read: fall back to ChatML
        return ""


def format_llava(messages: list[dict[str, Any]]) -> Any:
    """llava-1.5's conversation format (as llama-cpp-python's Llava15ChatHandler writes it)."""
    from llama_cpp.llama_chat_format import ChatFormatterResponse

    system = next((m["content"] for m in messages if m["role"] == "system"), "") or LLAVA_SYSTEM
    parts = [system]
    for m in messages:
        if m["role"] == "user":
            parts.append(f"\nUSER: {m['content']}")
        elif m["role"] == "assistant" and m.get("content"):
            parts.append(f"\nASSISTANT: {m['content']}")
    parts.append("\nASSISTANT: ")
    return ChatFormatterResponse(prompt="".join(parts), stop=["</s>", "\nUSER:"], added_special=False)


class VisionEngine(LlamaEngine):
    tasks = LlamaEngine.tasks | {Task.VISION}
    _ctx_mtmd: Any = None

    def __init__(self, path: Path, *, projector: Path, **kwargs: Any):
        import llama_cpp.mtmd_cpp as mtmd

        self._mtmd = mtmd
        self.projector = Path(projector)
        self._projector_type = _projector_type(self.projector)
        super().__init__(path, **kwargs)  # also picks the chat format (see _chat_formatter)
        _route_mtmd_logs(mtmd)
        started = time.perf_counter()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = bool(self.offload and self.offload["gpu_layers"])  # where the model went
        params.n_threads = self.n_threads
        params.print_timings = False
        ctx = mtmd.mtmd_init_from_file(str(self.projector).encode(), self._model.model, params)
        if not ctx:
            super().close()
            raise ValueError(
                f"llama.cpp could not load the vision projector {self.projector.name} with {path.name} "
                "(is it the mmproj GGUF made for this model? its output width must match the model's)"
            )
        if not mtmd.mtmd_support_vision(ctx):
            mtmd.mtmd_free(ctx)
            super().close()
            raise ValueError(f"{self.projector.name} has no vision encoder (an audio-only projector?)")
        self._ctx_mtmd = ctx
        self._marker = mtmd.mtmd_default_marker().decode("utf-8")
        # mtmd's context holds the last encoder output: tokenizing (in request threads) and
        # encoding (in the scheduler's thread) take turns on it.
        self._mtmd_lock = threading.Lock()
        log.info(
            "loaded projector %s (%s) in %.2fs",
            self.projector.name,
            self._projector_type or "unknown type",
            time.perf_counter() - started,
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "projector": self.projector.name, "projector_type": self._projector_type}

    # -- prompts ---------------------------------------------------------------------------

    def _chat_formatter(self, chat_format: str | None, lcf: Any) -> Any:
        """The GGUF's own template when it has one; else one chosen from the model's metadata."""
        if chat_format in ("llava-1-5", "vicuna"):
            self.chat_template_source = f"format {chat_format}"
            return format_llava
        if chat_format or self._metadata.get("tokenizer.chat_template"):
            return super()._chat_formatter(chat_format, lcf)
        name = self._metadata.get("general.name", "").lower()
        if "mistral" in name:
            formatter = super()._chat_formatter("mistral-instruct", lcf)
        elif self._projector_type in _LLAVA_PROJECTORS:
            formatter = format_llava
        else:
            return super()._chat_formatter(None, lcf)  # ChatML
        self.chat_template_source = (
            f"{'format mistral-instruct' if formatter is not format_llava else 'format llava-1-5'} "
            f"(the GGUF has no template; chosen from its metadata)"
        )
        return formatter

    def _flatten(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """String content with the media marker where each image was, for any chat template."""
        out, n_images = [], 0
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                pieces = []
                for part in content:
                    if part.get("type") == "image_url":
                        pieces.append(self._marker)
                        n_images += 1
                    else:
                        pieces.append(self._scrub(part.get("text") or ""))
                content = "\n".join(pieces)
            else:
                content = self._scrub(content or "")
            out.append({**message, "content": content})
        return out, n_images

    def _scrub(self, text: str) -> str:
        # A client's text must not smuggle in markers: they would claim images it never sent.
        return text.replace(self._marker, "")

    def vision_prompt(
        self, messages: list[dict[str, Any]], images: Sequence[RGBImage]
    ) -> tuple[VisionPrompt, list[str]]:
        """Render the chat with its images: (prompt, extra stop strings). Runs in a request thread."""
        mtmd = self._mtmd
        flat, n_refs = self._flatten(messages)
        if n_refs != len(images):
            raise InvalidRequest(f"The messages refer to {n_refs} images but {len(images)} were given.")
        text, stops, special = self.render_chat(flat)
        if text.count(self._marker) != len(images):
            raise InvalidRequest(
                "The model's chat template left out some of the messages that hold images; "
                "put the images in user messages.",
                param="messages",
            )
        # The text between the images is tokenized as any chat is (client text never becomes a
        # special token, engines/specials.py); mtmd adds each image with its wrapping tokens.
        segments: list[list[int] | ImageSegment] = []
        try:
            for i, part in enumerate(text.split(self._marker)):
                _append(segments, self.tokenize_chat(part, special or i > 0))
                for segment in self._image_segments(images[i]) if i < len(images) else []:
                    _append(segments, segment)
        except BaseException:
            VisionPrompt(segments, mtmd.mtmd_input_chunk_free).close()
            raise
        prompt = VisionPrompt(segments, mtmd.mtmd_input_chunk_free)
        self.check_prompt(prompt, "messages")
        return prompt, stops

    def _image_segments(self, image: RGBImage) -> list[list[int] | ImageSegment]:
        """mtmd's chunks for one image alone: its image chunks and the tokens it wraps them in."""
        mtmd = self._mtmd
        raw = self._marker.encode("utf-8")
        source = mtmd.mtmd_input_text()
        source.text, source.text_len = raw, len(raw)
        source.add_special = False
        source.parse_special = True  # the wrapping text is the projector's, never a client's
        bitmap = self._bitmap(image)
        chunks = mtmd.mtmd_input_chunks_init()
        segments: list[list[int] | ImageSegment] = []
        try:
            array = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            with self._mtmd_lock:
                rc = mtmd.mtmd_tokenize(self._ctx_mtmd, chunks, ctypes.byref(source), array, 1)
            if rc != 0:
                raise InvalidRequest(
                    f"The images could not be prepared for the model (mtmd error {rc}).", param="messages"
                )
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    segments.append([ptr[j] for j in range(n.value)])
                else:
                    segments.append(
                        ImageSegment(
                            chunk=mtmd.mtmd_input_chunk_copy(chunk),
                            n_tokens=mtmd.mtmd_input_chunk_get_n_tokens(chunk),
                            n_pos=mtmd.mtmd_input_chunk_get_n_pos(chunk),
                            digest=(mtmd.mtmd_input_chunk_get_id(chunk) or b"").decode(),
                        )
                    )
        except BaseException:
            VisionPrompt(segments, mtmd.mtmd_input_chunk_free).close()
            raise
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
        return segments

    def _bitmap(self, image: RGBImage) -> Any:
        if len(image.rgb) != image.width * image.height * 3:
            raise InvalidRequest("An image's pixel data does not match its size.")
        # A pointer straight into the bytes object: mtmd copies the pixels, we do not.
        data = ctypes.cast(ctypes.c_char_p(image.rgb), ctypes.POINTER(ctypes.c_uint8))
        bitmap = self._mtmd.mtmd_bitmap_init(image.width, image.height, data)
        if not bitmap:
            raise InvalidRequest("The image could not be handed to the model.")
        self._mtmd.mtmd_bitmap_set_id(bitmap, image.digest.encode())
        return bitmap

    def check_prompt(self, prompt: Any, param: str) -> None:
        if not isinstance(prompt, VisionPrompt):
            return super().check_prompt(prompt, param)
        if prompt.n_tokens >= self.n_ctx:
            raise ContextLengthExceeded(
                f"The prompt is {prompt.n_tokens} tokens, {prompt.image_tokens} of them for "
                f"{len(prompt.images)} image(s), but the model's context is {self.n_ctx} tokens (and at "
                f"least one must be left for the answer). Send fewer images or a shorter conversation, "
                f"or restart the server with a larger --nctx.",
                param=param,
            )

    def embed_image(self, image: RGBImage) -> np.ndarray:
        """The projector's output for one image: (image tokens, model width). For tests and benchmarks."""
        prompt, _ = self.vision_prompt([{"role": "user", "content": [{"type": "image_url"}]}], [image])
        (segment,) = prompt.images
        with self._mtmd_lock:
            if self._mtmd.mtmd_encode_chunk(self._ctx_mtmd, segment.chunk) != 0:
                raise RuntimeError("the projector failed to encode the image")
            out = self._mtmd.mtmd_get_output_embd(self._ctx_mtmd)
            width = self._model.n_embd()
            return np.ctypeslib.as_array(out, shape=(segment.n_tokens * width,)).reshape(-1, width).copy()

    # -- generation ------------------------------------------------------------------------

    def feed_special(self, scheduler: Scheduler, slot: Slot, prompt: Any, keep: int) -> None:
        """Decode a prompt of text and images into the slot's stream, from position `keep` on."""
        if not isinstance(prompt.segments[-1], list):
            raise InvalidRequest("A prompt cannot end with an image: the chat template must follow it with text.")
        pos = 0  # positions, like len(slot.cache)
        last = len(prompt.segments) - 1
        for i, seg in enumerate(prompt.segments):
            if isinstance(seg, list):
                if pos + len(seg) > keep:
                    scheduler.decode_tokens(slot, seg[max(0, keep - pos) :], logits_last=i == last)
                pos += len(seg)
            else:
                if pos + seg.n_pos > keep:  # keep never ends inside an image
                    self._decode_image(scheduler, slot, seg)
                pos += seg.n_pos

    def reusable(self, slot: Slot, prompt: Any) -> tuple[int, int]:
        """(positions, tokens) of the prompt's prefix already in the slot's KV stream."""
        if not isinstance(prompt, VisionPrompt):
            return super().reusable(slot, prompt)
        have, ids = len(slot.cache), slot.cache
        spans: list[tuple[int, int, int, bool]] = []  # (start pos, end pos, start token, is image)
        pos = tok = 0
        for seg in prompt.segments:
            n_pos = len(seg) if isinstance(seg, list) else seg.n_pos
            spans.append((pos, pos + n_pos, tok, not isinstance(seg, list)))
            pos += n_pos
            tok += len(seg) if isinstance(seg, list) else seg.n_tokens
        keep = 0
        for seg, (start, end, _, _) in zip(prompt.segments, spans):
            if isinstance(seg, list):
                n = 0
                while n < len(seg) and start + n < have and ids[start + n] == seg[n]:
                    n += 1
                keep = start + n
                if n < len(seg):
                    break
            elif end <= have and slot.images.get(start) == (seg.digest, seg.n_pos):
                keep = end
            else:
                break
        # Decode some positions again (see LlamaEngine.reusable), and never stop inside an
        # image: an image is decoded whole or not at all.
        keep = max(0, min(keep, prompt.n_pos - redecode(prompt.n_pos)))
        for start, end, start_tok, is_image in spans:
            if start <= keep < end:
                if is_image and keep > start:
                    keep = start
                return keep, start_tok + (0 if is_image else keep - start)
        return keep, prompt.n_tokens

    def _decode_image(self, scheduler: Scheduler, slot: Slot, seg: ImageSegment) -> None:
        mtmd = self._mtmd
        import llama_cpp

        start = len(slot.cache)
        with self._mtmd_lock:
            if mtmd.mtmd_encode_chunk(self._ctx_mtmd, seg.chunk) != 0:
                raise RuntimeError("the vision projector failed to encode an image")
            embd = mtmd.mtmd_get_output_embd(self._ctx_mtmd)
            new_n_past = llama_cpp.llama_pos(0)
            rc = mtmd.mtmd_helper_decode_image_chunk(
                self._ctx_mtmd,
                scheduler.ctx.ctx,
                seg.chunk,
                embd,
                start,
                slot.seq,
                scheduler.n_batch,
                ctypes.byref(new_n_past),
                mtmd.mtmd_helper_post_decode_callback(),  # none
                None,
            )
        if rc != 0:
            raise RuntimeError(f"llama.cpp failed to decode an image's embeddings (error {rc})")
        end = new_n_past.value
        # No token id is -1: a later text prompt never "matches" the positions an image fills.
        slot.cache.extend([-1] * (end - start))
        slot.images[start] = (seg.digest, end - start)

    def close(self) -> None:
        if self._ctx_mtmd:
            self._mtmd.mtmd_free(self._ctx_mtmd)
            self._ctx_mtmd = None
        super().close()


def _append(segments: list[list[int] | ImageSegment], segment: list[int] | ImageSegment) -> None:
    """Add a segment, joining consecutive token lists into one."""
    if isinstance(segment, list) and segments and isinstance(segments[-1], list):
        segments[-1].extend(segment)
    elif segment:
        segments.append(segment)


def _route_mtmd_logs(mtmd: Any) -> None:
    """mtmd/clip's log lines into Python logging at their levels, as llama.cpp's (native_log.py)."""
    callback = route_llama_logs()
    mtmd.mtmd_log_set(callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
