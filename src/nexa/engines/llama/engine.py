"""llama.cpp engine (llama-cpp-python) for GGUF text and chat models.

The model (weights, vocabulary, metadata) tokenizes and llama-cpp-python's formatters render
chat templates; generation runs in our scheduler (llama/scheduler.py) over the one context, with
one KV stream per parallel slot, sampling through llama.cpp's C sampler chain: sampling stays out of Python, every
request carries its own seed, stop strings and logprobs, and a cancelled request stops at
the next token.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nexa.config import FLASH_ATTN_CTX, default, usable_cores
from nexa.engines.base import (
    EngineStats,
    Finish,
    SamplingParams,
    Task,
    TextDelta,
    TextEngine,
    TokenLogprob,
    token_logprob,
)
from nexa.engines.llama.scheduler import Scheduler, Slot, kept
from nexa.engines.llama.weights import load_model
from nexa.engines.specials import SpecialTokens
from nexa.errors import InvalidRequest

log = logging.getLogger("nexa.engine.llama")

N_BATCH = 512  # rows per decode step: generating requests first, then prompt chunks
_C_SPACE = " \t\n\v\f\r"  # what llama.cpp's isspace() strips beside an lstrip/rstrip token
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a fresh random seed per sampler

# Catalogue chat formats -> llama-cpp-python's formatter functions (by their registered names).
_FORMATTERS = {
    "llama-2": "format_llama2",
    "llama-3": "format_llama3",
    "gemma": "format_gemma",
    "qwen": "format_qwen",
    "mistral-instruct": "format_mistral_instruct",
    "chatml": "format_chatml",
}


class LlamaEngine(TextEngine):
    # TOOLS: any chat model can call functions, because a grammar constrains the calls.
    tasks = frozenset({Task.COMPLETION, Task.CHAT, Task.TOOLS, Task.EMBEDDING})
    _embedder: Any = None  # embedding mode, built on the first /v1/embeddings request

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        n_ctx: int = default("n_ctx"),
        n_threads: int = default("n_threads"),
        n_gpu_layers: int | str = default("n_gpu_layers"),
        main_gpu: int | None = default("main_gpu"),
        tensor_split: tuple[float, ...] | None = default("tensor_split"),
        chat_format: str | None = None,
        parallel: int | None = None,
        max_queue: int = default("max_queue"),
        repack: bool = default("repack"),
        flash_attn: str = default("flash_attn"),
    ):
        import llama_cpp
        from llama_cpp import llama_chat_format

        self._llama_cpp = llama_cpp
        self.name = name
        self.path = path
        started = time.perf_counter()
        # The weights alone: tokenizer, template and metadata come from the model, and every
        # token is decoded in the scheduler's context below (no second context beside it).
        self._model, report, self.offload = load_model(
            path, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu, tensor_split=tensor_split, repack=repack
        )
        self.weights = report.buffers
        self._metadata: dict[str, str] = self._model.metadata()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._vocab = self._model.vocab
        self.n_vocab = self._n_vocab = self._model.n_vocab()
        self._row_type = ctypes.c_float * self._n_vocab  # one row of logits (see _logits)
        # The logits pointer as a plain address (llama-cpp-python's prototype returns a POINTER
        # object), and a view per address the rows have been at: llama.cpp keeps its output
        # buffer until a bigger batch needs more rows, so a handful of addresses recur.
        self._logits_ith = llama_cpp.llama_cpp._lib["llama_get_logits_ith"]  # a prototype of our own
        self._logits_ith.argtypes, self._logits_ith.restype = [ctypes.c_void_p, ctypes.c_int32], ctypes.c_void_p
        self._rows: dict[int, np.ndarray] = {}
        # What the scheduler asks of every generated token, remembered: each was a ctypes call.
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._piece_buf = ctypes.create_string_buffer(64)
        self._embedder_lock = threading.Lock()
        self._formatter = self._chat_formatter(chat_format, llama_chat_format)
        self._specials, self._lstrip, self._rstrip = self._special_tokens()
        self.parallel = parallel or default_parallel(self._model, n_ctx)
        self.flash_attn = use_flash_attn(flash_attn, self.offload["gpu_layers"], n_ctx)
        self._ctx = self._context(n_threads)
        self.scheduler = Scheduler(self, self._ctx, parallel=self.parallel, n_batch=N_BATCH, max_waiting=max_queue)
        log.info(
            "loaded %s in %.1fs (n_ctx=%d per request, %d parallel, threads=%d, flash attention %s, chat template: %s)",
            path.name,
            time.perf_counter() - started,
            self.n_ctx,
            self.parallel,
            n_threads,
            "on" if self.flash_attn else "off",
            self.chat_template_source,
        )

    def _context(self, n_threads: int) -> Any:
        lc = self._llama_cpp
        from llama_cpp import _internals

        cp = lc.llama_context_default_params()
        cp.n_ctx = self.n_ctx * self.parallel  # split into one full-context stream per slot
        cp.n_batch = cp.n_ubatch = N_BATCH
        cp.n_seq_max = self.parallel
        # Logits for one row per slot at most (a generating token, or a prompt's last): the
        # default, one per batch row, is a 512 x n_vocab float buffer (96 MiB on SmolLM2) that
        # is never filled. llama-server sets the same limits.
        cp.n_outputs_max = self.parallel
        cp.n_outputs_max_per_seq = 1
        cp.kv_unified = False  # see llama/scheduler.py: same tokens alone or in company
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.no_perf = True
        try:
            return _internals.LlamaContext(model=self._model, params=cp, verbose=True)
        except ValueError:  # a model or backend without flash attention
            cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
            return _internals.LlamaContext(model=self._model, params=cp, verbose=True)

    # -- prompts ---------------------------------------------------------------------------

    def _chat_formatter(self, chat_format: str | None, lcf: Any) -> Any:
        if chat_format:
            if chat_format not in _FORMATTERS:
                raise ValueError(f"unknown chat format {chat_format!r}")
            self.chat_template_source = f"format {chat_format}"
            return getattr(lcf, _FORMATTERS[chat_format])
        template = self._metadata.get("tokenizer.chat_template")
        if not template:
            # A base model without a template: ChatML is the most common convention today.
            self.chat_template_source = "format chatml (the GGUF has no template)"
            return lcf.format_chatml
        model = self._model
        eos_id, bos_id = model.token_eos(), model.token_bos()
        self.chat_template_source = "the GGUF's own template"
        # Jinja2ChatFormatter renders inside jinja2's ImmutableSandboxedEnvironment, so a
        # hostile template in a downloaded file cannot reach Python internals.
        return lcf.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
        )

    def _special_tokens(self) -> tuple[SpecialTokens, set[int], set[int]]:
        """The tokens llama.cpp parses only with `special` (control and unknown ones; user-defined
        tokens it parses in any text), and those of them that swallow whitespace beside them."""
        lc = self._llama_cpp
        texts: dict[str, int] = {}
        lstrip, rstrip = set(), set()
        for token in range(self._n_vocab):
            attr = lc.llama_vocab_get_attr(self._vocab, token)
            if attr & (lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNKNOWN):
                texts.setdefault(lc.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace"), token)
                if attr & lc.LLAMA_TOKEN_ATTR_LSTRIP:
                    lstrip.add(token)
                if attr & lc.LLAMA_TOKEN_ATTR_RSTRIP:
                    rstrip.add(token)
        return SpecialTokens(texts), lstrip, rstrip

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[str, list[str], bool]:
        """`tools` (OpenAI tool dicts) reach a Jinja template as `tools`; other formats ignore them.
        Special tokens' text in messages and tools comes out marked (see engines/specials.py)."""
        messages, tools = self._specials.escape(messages), self._specials.escape(tools)
        try:
            result = self._formatter(messages=messages, tools=tools) if tools else self._formatter(messages=messages)
        except Exception as exc:  # template errors (raise_exception) are the client's to fix
            raise InvalidRequest(f"The model's chat template refused these messages: {exc}", param="messages") from exc
        stop = result.stop
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return result.prompt, [s for s in stops if s], bool(result.added_special)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        # A prompt that already spells out its special tokens (a rendered chat) gets no
        # second BOS; a plain completion prompt gets the model's usual BOS.
        return self._model.tokenize(text.encode("utf-8"), add_bos=not special, special=special)

    def tokenize_chat(self, text: str, has_bos: bool) -> list[int]:
        # Built-in formats (format_chatml...) spell out special tokens but no BOS: parse the
        # former, add the latter, as llama-cpp-python's own chat handlers do.
        if not self._specials.marked(text):  # no client text spelled a special token
            return self._model.tokenize(text.encode("utf-8"), add_bos=not has_bos, special=True)
        # The split llama.cpp makes itself when it parses specials, with the clients' text
        # kept plain: each stretch between two special tokens is tokenized on its own.
        pieces = list(self._specials.pieces(text))
        add_bos = not has_bos and self._llama_cpp.llama_vocab_get_add_bos(self._vocab)
        tokens: list[int] = [self._model.token_bos()] if add_bos else []
        for i, piece in enumerate(pieces):
            if isinstance(piece, int):
                tokens.append(piece)
                continue
            if i > 0 and pieces[i - 1] in self._rstrip:
                piece = piece.lstrip(_C_SPACE)
            if i + 1 < len(pieces) and pieces[i + 1] in self._lstrip:
                piece = piece.rstrip(_C_SPACE)
            tokens += self._model.tokenize(piece.encode("utf-8"), add_bos=False, special=False)
        return tokens

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def token_text(self, token: int) -> bytes:
        # A buffer of its own: this runs in request threads, while the scheduler uses _piece_buf.
        to_piece = self._llama_cpp.llama_token_to_piece
        buf = ctypes.create_string_buffer(64)
        n = to_piece(self._vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def describe(self) -> dict[str, Any]:
        return {
            "n_ctx": self.n_ctx,
            "parallel": self.parallel,
            "chat_template": self.chat_template_source,
            "weights": self.weights,
            "offload": self.offload,
        }

    # -- generation (the scheduler calls the hooks below from its thread) ----------------------

    def generate(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[TextDelta | Finish]:
        """Queue the request now (a full queue is a 503 before any response starts); the
        returned iterator yields its results as the scheduler produces them."""
        self.check_prompt(prompt, "prompt")
        return self.scheduler.submit(prompt, params, cancel).results()

    def reusable(self, slot: Slot, prompt: Any) -> tuple[int, int]:
        """(positions to keep in the slot's KV stream, prompt tokens they cover)."""
        common = 0
        for a, b in zip(slot.cache, prompt):
            if a != b:
                break
            common += 1
        # Leave some prompt to decode again, so that a repeated greedy request takes the same
        # kernel paths as its first run and answers the same (see llama/scheduler.py).
        common = kept(len(prompt), common, self.flash_attn)
        return common, common

    def feed_special(self, scheduler: Scheduler, slot: Slot, prompt: Any, keep: int) -> None:
        raise TypeError(f"{type(self).__name__} takes token prompts only")

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return eog

    def new_sampler(self, p: SamplingParams) -> Any:
        if not p.grammar and p.temperature <= 0 and not _penalised(p):
            return Greedy(self._logits)
        chain = self._chain(p)
        if not p.grammar:
            return chain
        from nexa.engines.llama.sampler import ConstrainedSampler

        # The grammar is checked against the chain's pick first and applied to the whole
        # vocabulary only when it rejects that pick: far cheaper than a grammar in the chain.
        return ConstrainedSampler(self._vocab, chain, p.grammar)

    def _chain(self, p: SamplingParams) -> Any:
        from llama_cpp._internals import LlamaSampler

        s = LlamaSampler()
        if _penalised(p):
            s.add_penalties(self._n_vocab, 64, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
        if p.temperature <= 0:
            s.add_greedy()
            return s
        if p.top_k > 0:
            s.add_top_k(p.top_k)
        if p.top_p < 1.0:
            s.add_top_p(p.top_p, 1)
        if p.min_p > 0:
            s.add_min_p(p.min_p, 1)
        s.add_temp(p.temperature)
        s.add_dist(RANDOM_SEED if p.seed is None else p.seed & 0xFFFFFFFF)
        return s

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._token_piece(token)
        return piece

    def _token_piece(self, token: int) -> bytes:
        # Our own buffer handling: llama-cpp-python's token_to_piece returns its whole
        # 32-byte buffer, NULs included.
        buf = self._piece_buf
        n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # the piece is longer than the buffer: grow and retry
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def logprob_at(self, ctx: Any, idx: int, token: int, top_n: int) -> TokenLogprob:
        """The model's log-probabilities at batch row `idx` of `ctx` (not the sampler's)."""
        return token_logprob(self._logits(ctx, idx), token, top_n, self.piece)

    def _logits(self, ctx: Any, idx: int) -> np.ndarray:
        """The logits of batch row `idx` of the llama_context `ctx`, as a view (no copy), valid
        until the next decode. Once per generated token, so the view of an address is kept."""
        address = self._logits_ith(ctx, idx)
        if not address:
            raise RuntimeError(f"llama.cpp has no logits for batch row {idx}")
        row = self._rows.get(address)
        if row is None:
            if len(self._rows) >= 4 * self.parallel + 16:  # the buffer moved: old addresses are stale
                self._rows.clear()
            row = self._rows[address] = np.frombuffer(self._row_type.from_address(address), np.float32)
        return row

    def embed(self, inputs: list[Any], **options: Any) -> Any:
        """Mean-pooled embeddings from a second, embedding-mode context on these same weights."""
        from nexa.engines.llama.embedder import LlamaEmbedder

        with self._embedder_lock:  # the first requests must not build two contexts
            if self._embedder is None:
                self._embedder = LlamaEmbedder(
                    self.path, n_ctx=self.n_ctx, n_threads=self.n_threads, pooling="mean", model=self._model
                )
        return self._embedder.embed(inputs, **options)

    def stats(self) -> EngineStats:
        return self.scheduler.snapshot()

    def close(self) -> None:
        self.scheduler.close()
        self._ctx.close()
        self._model.close()


def _penalised(p: SamplingParams) -> bool:
    return p.repeat_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


class Greedy:
    """llama.cpp's greedy chain without its cost: llama_sampler_sample first copies every logit
    into a token array (65 us a token for a 49k vocabulary here, against 4 us for this). The
    first highest logit, as llama.cpp's greedy sampler picks it."""

    def __init__(self, logits: Callable[[Any, int], np.ndarray]):
        self._logits = logits  # LlamaEngine._logits

    def sample(self, ctx: Any, idx: int) -> int:
        return int(self._logits(ctx.ctx, idx).argmax())

    def close(self) -> None:
        pass


def use_flash_attn(setting: str, gpu_layers: int, n_ctx: int) -> bool:
    """--flash-attn: auto uses it where layers run on a GPU, or for a context over FLASH_ATTN_CTX.
    On the CPU, llama.cpp's flash-attention kernel decoded a token 1.1x (100 cells) to 1.7x (800
    cells) slower than plain attention on SmolLM2, and prompts at 0.83x to 1.05x its speed; without
    it the compute buffer grows with the context (SmolLM2, 4 slots: 26 MiB at 1k tokens, 326 MiB at
    16k, against 15 and 30 MiB with it). Either way a greedy answer is the same alone or in company
    (see llama/scheduler.py)."""
    if setting != "auto":
        return setting == "on"
    return gpu_layers > 0 or n_ctx > FLASH_ATTN_CTX


def default_parallel(model: Any, n_ctx: int) -> int:
    """Slots from the cores and the context: two rows per core keep a CPU busy (a decode step
    costs little more for 4 rows than for 1), capped so the KV streams take at most a quarter
    of the machine's memory."""
    import llama_cpp as lc

    want = max(2, min(8, 2 * usable_cores()))
    n_layer, n_embd = lc.llama_model_n_layer(model.model), lc.llama_model_n_embd(model.model)
    n_head, n_head_kv = lc.llama_model_n_head(model.model), lc.llama_model_n_head_kv(model.model)
    per_token = 2 * n_layer * (n_embd // max(1, n_head)) * n_head_kv * 2  # K and V, f16
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fit = (memory // 4) // max(1, per_token * n_ctx)
    return max(1, min(want, fit))
