"""Text generation with onnxruntime-genai: a folder holding genai_config.json, the decoder .onnx
and the tokenizer (as `python -m onnxruntime_genai.models.builder` writes it, and as the ONNX
repositories on the hub ship it).

onnxruntime-genai owns the KV cache and the sampler; we add what the GGUF engine has around
them: the model's chat template (rendered in a jinja2 sandbox), stop strings held back until
they are decided (stops.StopMatcher), per-request seeds, logprobs from the step's logits, and a
cancelled request stopping at the next token.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from nexa.config import default
from nexa.engines.base import Finish, SamplingParams, Task, TextDelta, TextEngine, TokenLogprob, token_logprob
from nexa.engines.specials import SpecialTokens
from nexa.engines.stops import StopMatcher
from nexa.errors import InvalidRequest

log = logging.getLogger("nexa.engine.onnx.text")

# The template most chat models without one of their own were tuned on (the GGUF engine's fallback too).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _token_text(value: Any) -> str:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


def read_chat_template(folder: Path) -> tuple[str | None, dict[str, Any]]:
    """(template, tokenizer_config) from the places transformers writes them: chat_template.jinja
    (transformers 5), chat_template.json (processors), tokenizer_config.json (older builds)."""
    config: dict[str, Any] = {}
    path = folder / "tokenizer_config.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
    template: Any = None
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    else:
        template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return (template or None), config


class ChatTemplate:
    """A Hugging Face chat template rendered in jinja2's ImmutableSandboxedEnvironment, so a
    hostile template in a downloaded model cannot reach Python internals."""

    def __init__(self, template: str, *, bos_token: str, eos_token: str):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(template)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict[str, Any]]) -> str:
        return self._template.render(
            messages=messages, bos_token=self.bos_token, eos_token=self.eos_token, add_generation_prompt=True
        )


def special_tokens(folder: Path) -> dict[str, int]:
    """The tokens the tokenizer parses out of any text: tokenizer.json's special added tokens."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return {}
    added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens") or []
    return {str(t["content"]): int(t["id"]) for t in added if isinstance(t, dict) and t.get("special")}


def _raise_exception(message: str) -> None:
    raise ValueError(message)


class OnnxTextEngine(TextEngine):
    tasks = frozenset({Task.COMPLETION, Task.CHAT})

    def __init__(
        self, folder: Path, *, name: str, n_ctx: int = default("n_ctx"), n_threads: int = default("n_threads")
    ):
        import onnxruntime_genai as og  # type: ignore[import-untyped]

        self._og = og
        self.name = name
        self.path = Path(folder)
        started = time.perf_counter()
        genai = json.loads((self.path / "genai_config.json").read_text(encoding="utf-8"))
        model_cfg = genai.get("model", {})
        config = og.Config(str(self.path))
        # The installed package is onnxruntime-genai's CPU build: a folder built for CUDA or
        # DirectML names its provider in genai_config.json, and its graph also runs on CPU.
        config.clear_providers()
        config.overlay(
            json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": n_threads}}}})
        )
        self._model = og.Model(config)
        self._tokenizer = og.Tokenizer(self._model)
        self.n_ctx = min(n_ctx, int(model_cfg.get("context_length") or n_ctx))
        self.n_vocab = int(model_cfg.get("vocab_size") or 0)
        eos = model_cfg.get("eos_token_id", [])
        self._eos = set(eos if isinstance(eos, list) else [eos])
        self._bos = model_cfg.get("bos_token_id")
        self._lock = threading.Lock()  # one generation at a time: they would share the CPU anyway

        template, tok_config = read_chat_template(self.path)
        bos, eos_text = _token_text(tok_config.get("bos_token")), _token_text(tok_config.get("eos_token"))
        if template:
            self.chat_template_source = "the model's own template"
        else:
            template = CHATML
            self.chat_template_source = "chatml (the model has no template)"
        self._template = ChatTemplate(template, bos_token=bos, eos_token=eos_text)
        self._specials = SpecialTokens(special_tokens(self.path))
        self._adds_bos = self._bos is not None and [int(t) for t in self._tokenizer.encode("a")][:1] == [self._bos]
        log.info(
            "loaded %s (%s) in %.1fs (n_ctx=%d, threads=%d, chat template: %s)",
            self.path.name, model_cfg.get("type"), time.perf_counter() - started, self.n_ctx, n_threads,
            self.chat_template_source,
        )

    # -- prompts ---------------------------------------------------------------------------

    def render_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[str], bool]:
        """Special tokens' text in messages comes out marked (see engines/specials.py)."""
        try:
            prompt = self._template.render(self._specials.escape(messages))
        except Exception as exc:  # template errors (raise_exception) are the client's to fix
            raise InvalidRequest(f"The model's chat template refused these messages: {exc}", param="messages") from exc
        stops = [self._template.eos_token] if self._template.eos_token else []
        return prompt, stops, True

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        tokens = [int(t) for t in self._tokenizer.encode(text)]
        # The tokenizer adds the model's BOS itself; a rendered chat that spells out its BOS
        # (`{{ bos_token }}`) would then start with two.
        if special and self._bos is not None and tokens[:2] == [self._bos, self._bos]:
            tokens = tokens[1:]
        return tokens

    def tokenize_chat(self, text: str, has_bos: bool) -> list[int]:
        if not self._specials.marked(text):  # no client text spelled a special token
            return super().tokenize_chat(text, has_bos)
        tokens = [self._bos] if self._adds_bos else []
        for piece in self._specials.pieces(text):
            if isinstance(piece, int):
                if not (piece == self._bos and tokens == [self._bos]):  # the template's BOS, already there
                    tokens.append(piece)
            else:
                tokens += self._plain(piece)
        return tokens

    def _plain(self, text: str) -> list[int]:
        """Tokens of `text` with any special token's text in it spelled as ordinary tokens: this
        tokenizer always parses specials, so each is cut after its first character."""
        bounds = [0, *(start + 1 for start in self._specials.starts(text)), len(text)]
        return [t for a, b in zip(bounds, bounds[1:]) for t in self._encode(text[a:b])]

    def _encode(self, text: str) -> list[int]:
        tokens = [int(t) for t in self._tokenizer.encode(text)] if text else []
        return tokens[1:] if self._adds_bos and tokens[:1] == [self._bos] else tokens

    def describe(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "chat_template": self.chat_template_source, "runtime": "onnxruntime-genai"}

    # -- generation ------------------------------------------------------------------------

    def _search_options(self, n_prompt: int, p: SamplingParams) -> dict[str, Any]:
        if p.presence_penalty or p.frequency_penalty:
            raise InvalidRequest(
                "presence_penalty and frequency_penalty are not supported by the ONNX Runtime engine; "
                "use repeat_penalty instead.",
                param="presence_penalty" if p.presence_penalty else "frequency_penalty",
            )
        if p.grammar:
            raise InvalidRequest("Constrained output (grammars) is not supported by the ONNX Runtime engine.")
        budget = self.n_ctx - n_prompt if p.max_tokens is None else min(self.n_ctx - n_prompt, p.max_tokens)
        opts: dict[str, Any] = {"max_length": n_prompt + budget, "repetition_penalty": p.repeat_penalty}
        if p.temperature <= 0:
            opts["do_sample"] = False
        else:
            # min_p has no counterpart in onnxruntime-genai's sampler; top_k 0 means "off" here.
            opts.update(
                do_sample=True,
                temperature=p.temperature,
                top_p=p.top_p,
                top_k=p.top_k if p.top_k > 0 else (self.n_vocab or 1 << 20),
                random_seed=-1 if p.seed is None else p.seed & 0x7FFFFFFF,
            )
        return opts

    def generate(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[TextDelta | Finish]:
        self.check_prompt(prompt, "prompt")
        opts = self._search_options(len(prompt), params)
        with self._lock:
            yield from self._generate_locked(prompt, params, opts, cancel)

    def _generate_locked(
        self, prompt: list[int], params: SamplingParams, opts: dict[str, Any], cancel: threading.Event
    ) -> Iterator[TextDelta | Finish]:
        og = self._og
        started = time.perf_counter()
        gp = og.GeneratorParams(self._model)
        gp.set_search_options(**opts)
        generator = og.Generator(self._model, gp)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))  # runs the prompt through the model
        prompt_done = time.perf_counter()

        stream = self._tokenizer.create_stream()
        matcher = StopMatcher(params.stop)
        produced, reason = 0, "length"
        pending: list[TokenLogprob] = []
        while not generator.is_done():
            if cancel.is_set():
                return
            # The distribution the next token is drawn from: onnxruntime-genai runs the model on
            # each token as soon as it is chosen, so after generate_next_token the logits are
            # already those of the token after it.
            logits = generator.get_logits() if params.logprobs is not None else None
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self._eos:
                reason = "stop"
                break
            if logits is not None:
                pending.append(token_logprob(logits, token, params.logprobs, self._piece))  # type: ignore[arg-type]
            produced += 1
            text = matcher.feed(stream.decode(token).encode("utf-8"))
            if text or matcher.stopped:
                yield TextDelta(text, pending)
                pending = []
            if matcher.stopped:
                reason = "stop"
                break
        if not matcher.stopped:
            tail = matcher.flush()
            if tail or pending:
                yield TextDelta(tail, pending)
        yield Finish(
            reason=reason,
            prompt_tokens=len(prompt),
            completion_tokens=produced,
            prompt_seconds=prompt_done - started,
            generation_seconds=time.perf_counter() - prompt_done,
            stop_sequence=matcher.matched,
        )

    def _piece(self, token: int) -> bytes:
        return str(self._tokenizer.decode(np.asarray([token], dtype=np.int32))).encode("utf-8")

    def close(self) -> None:
        # onnxruntime-genai frees the model when the last reference goes.
        self._tokenizer = None  # type: ignore[assignment]
        self._model = None  # type: ignore[assignment]
