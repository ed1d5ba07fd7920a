"""llama.cpp engine (llama-cpp-python) for GGUF text and chat models.

We use `Llama` to load, tokenize and decode, but run our own sampling loop over
llama.cpp's C sampler chain: that keeps sampling out of Python, lets every request
carry its own seed, stop strings and logprobs, and lets a cancelled request stop at
the next token.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nexa.config import Settings
from nexa.engines.base import (
    Finish,
    SamplingParams,
    Task,
    TextDelta,
    TextEngine,
    TokenLogprob,
    TopLogprob,
)
from nexa.engines.stops import StopMatcher
from nexa.errors import InvalidRequest
from nexa.models.types import ResolvedModel

log = logging.getLogger("nexa.engine.llama")

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
        n_ctx: int = 2048,
        n_threads: int = 2,
        n_gpu_layers: int = -1,
        chat_format: str | None = None,
    ):
        import llama_cpp
        from llama_cpp import llama_chat_format

        self._llama_cpp = llama_cpp
        self.name = name
        self.path = path
        started = time.perf_counter()
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
            logits_all=False,  # logprobs read the last row only; all rows would cost n_ctx*vocab floats
            verbose=False,
        )
        self.n_ctx = self._llm.n_ctx()
        self._vocab = self._llm._model.vocab
        self.n_vocab = self._n_vocab = self._llm.n_vocab()
        self._piece_buf = ctypes.create_string_buffer(64)
        # One context, one sequence: requests take turns (continuous batching is issue 8).
        self._lock = threading.Lock()
        self._formatter = self._chat_formatter(chat_format, llama_chat_format)
        log.info(
            "loaded %s in %.1fs (n_ctx=%d, threads=%d, chat template: %s)",
            path.name,
            time.perf_counter() - started,
            self.n_ctx,
            n_threads,
            self.chat_template_source,
        )

    @classmethod
    def from_resolved(cls, model: ResolvedModel, settings: Settings) -> LlamaEngine:
        return cls(
            model.path,
            name=model.name,
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads,
            n_gpu_layers=settings.n_gpu_layers,
            chat_format=model.chat_format,
        )

    # -- prompts ---------------------------------------------------------------------------

    def _chat_formatter(self, chat_format: str | None, lcf: Any) -> Any:
        if chat_format:
            if chat_format not in _FORMATTERS:
                raise ValueError(f"unknown chat format {chat_format!r}")
            self.chat_template_source = f"format {chat_format}"
            return getattr(lcf, _FORMATTERS[chat_format])
        meta = self._llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            # A base model without a template: ChatML is the most common convention today.
            self.chat_template_source = "format chatml (the GGUF has no template)"
            return lcf.format_chatml
        model = self._llm._model
        eos_id, bos_id = model.token_eos(), model.token_bos()
        self.chat_template_source = "the GGUF's own template"
        # Jinja2ChatFormatter renders inside jinja2's ImmutableSandboxedEnvironment, so a
        # hostile template in a downloaded file cannot reach Python internals.
        return lcf.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
        )

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[str, list[str], bool]:
        """`tools` (OpenAI tool dicts) reach a Jinja template as `tools`; other formats ignore them."""
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
        return self._llm.tokenize(text.encode("utf-8"), add_bos=not special, special=special)

    def tokenize_chat(self, text: str, has_bos: bool) -> list[int]:
        # Built-in formats (format_chatml...) spell out special tokens but no BOS: parse the
        # former, add the latter, as llama-cpp-python's own chat handlers do.
        return self._llm.tokenize(text.encode("utf-8"), add_bos=not has_bos, special=True)

    def describe(self) -> dict[str, Any]:
        return {"n_ctx": self.n_ctx, "chat_template": self.chat_template_source}

    # -- generation ------------------------------------------------------------------------

    def generate(
        self, prompt: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[TextDelta | Finish]:
        self.check_prompt(prompt, "prompt")
        with self._lock:
            yield from self._generate_locked(prompt, params, cancel)

    def _feed_prompt(self, prompt: Any) -> tuple[int, int]:
        """Put the prompt into the context; returns (prompt tokens, tokens reused from cache).

        A subclass with other kinds of prompt (images between text) overrides this alone.
        """
        cached = self._reuse_prefix(prompt)
        self._llm.eval(prompt[cached:])
        return len(prompt), cached

    def _generate_locked(
        self, prompt: Any, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[TextDelta | Finish]:
        llm, lc = self._llm, self._llama_cpp
        started = time.perf_counter()
        n_prompt, cached = self._feed_prompt(prompt)
        prompt_done = time.perf_counter()

        sampler = self._sampler(params)
        matcher = StopMatcher(params.stop)
        budget = self.n_ctx - n_prompt
        if params.max_tokens is not None:
            budget = min(budget, params.max_tokens)
        produced, reason = 0, "length"
        pending: list[TokenLogprob] = []
        try:
            while produced < budget:
                if cancel.is_set():
                    return
                token = sampler.sample(llm._ctx, -1)
                if lc.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                if params.logprobs is not None:
                    pending.append(self._logprob(token, params.logprobs))
                produced += 1
                text = matcher.feed(self._piece(token))
                if text or matcher.stopped:
                    yield TextDelta(text, pending)
                    pending = []
                if matcher.stopped:
                    reason = "stop"
                    break
                if produced < budget:
                    llm.eval([token])
        finally:
            sampler.close()
        if not matcher.stopped:
            tail = matcher.flush()
            if tail or pending:
                yield TextDelta(tail, pending)
        yield Finish(
            reason=reason,
            prompt_tokens=n_prompt,
            completion_tokens=produced,
            cached_tokens=cached,
            prompt_seconds=prompt_done - started,
            generation_seconds=time.perf_counter() - prompt_done,
        )

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Keep the KV cache for the longest common prefix with the last request."""
        llm = self._llm
        common = 0
        for a, b in zip(llm._input_ids[: llm.n_tokens], prompt):
            if a != b:
                break
            common += 1
        # Re-decode at least two prompt tokens: llama.cpp's CPU kernels for a one-row batch
        # round differently from a multi-row one, so re-decoding only the last token would
        # make a repeated greedy request answer differently from its first run.
        common = max(0, min(common, len(prompt) - 2))
        if not llm._ctx.kv_cache_seq_rm(-1, common, -1):
            common = 0
            llm.reset()
            llm._ctx.kv_cache_clear()
        llm.n_tokens = common
        return common

    def _sampler(self, p: SamplingParams) -> Any:
        chain = self._chain(p)
        if not p.grammar:
            return chain
        from nexa.engines.constrained import ConstrainedSampler

        # The grammar is checked against the chain's pick first and applied to the whole
        # vocabulary only when it rejects that pick: far cheaper than a grammar in the chain.
        return ConstrainedSampler(self._llm, chain, p.grammar)

    def _chain(self, p: SamplingParams) -> Any:
        from llama_cpp._internals import LlamaSampler

        s = LlamaSampler()
        if p.repeat_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
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

    def _piece(self, token: int) -> bytes:
        # Our own buffer handling: llama-cpp-python's token_to_piece returns its whole
        # 32-byte buffer, NULs included.
        buf = self._piece_buf
        n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # the piece is longer than the buffer: grow and retry
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _logprob(self, token: int, top_n: int) -> TokenLogprob:
        return self._logprob_at(self._llm._ctx.ctx, -1, token, top_n)

    def _logprob_at(self, ctx: Any, idx: int, token: int, top_n: int) -> TokenLogprob:
        """The model's log-probabilities at batch row `idx` of `ctx` (not the sampler's)."""
        ptr = self._llama_cpp.llama_get_logits_ith(ctx, idx)
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float64)
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        top: list[TopLogprob] = []
        if top_n > 0:
            ids = np.argpartition(-logprobs, top_n)[:top_n]
            for i in ids[np.argsort(-logprobs[ids])]:
                piece = self._piece(int(i))
                top.append(TopLogprob(piece.decode("utf-8", "replace"), float(logprobs[i]), list(piece)))
        piece = self._piece(token)
        return TokenLogprob(piece.decode("utf-8", "replace"), float(logprobs[token]), list(piece), top)

    def embed(self, inputs: list[Any], **options: Any) -> Any:
        """Mean-pooled embeddings from a second, embedding-mode context on these same weights."""
        from nexa.engines.embeddings import LlamaEmbedder

        with self._lock:  # the first requests must not build two contexts
            if self._embedder is None:
                self._embedder = LlamaEmbedder(
                    self.path, n_ctx=self.n_ctx, n_threads=self._llm.n_threads, pooling="mean", model=self._llm._model
                )
        return self._embedder.embed(inputs, **options)

    def close(self) -> None:
        self._llm.close()
