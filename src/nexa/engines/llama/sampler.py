"""A llama.cpp sampler chain held to a GBNF grammar, cheaply (see ConstrainedSampler)."""

from __future__ import annotations

import math
from typing import Any


class ConstrainedSampler:
    """A llama.cpp sampler chain held to a grammar, the cheap way round (as llama.cpp's own
    common_sampler does it): let the chain pick a token, check that one token against the
    grammar, and only when the grammar rejects it apply the grammar to the whole vocabulary
    and let the chain pick again. Checking all 49k tokens of a vocabulary against a grammar
    costs more than a small model's forward pass, and the model mostly agrees with the grammar.

    It is itself a llama.cpp sampler (`.sampler`, built from Python callbacks), so both the
    engine's loop (`.sample(ctx, idx)`) and the batching scheduler (`llama_sampler_sample`
    on `.sampler`) use it like a plain chain. `close()` frees it.
    """

    def __init__(self, vocab: Any, chain: Any, grammar: str):
        import ctypes

        import llama_cpp
        import numpy as np
        from llama_cpp import LlamaGrammar

        self._lc, self._ctypes, self._np = llama_cpp, ctypes, np
        self._chain = chain
        parsed = LlamaGrammar.from_string(grammar, verbose=False)
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            vocab, parsed._grammar.encode("utf-8"), parsed._root.encode("utf-8")
        )
        if not self._grammar:
            chain.close()
            raise ValueError("llama.cpp could not parse the grammar")
        self._dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        assert self._dtype.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)
        self._saved = np.zeros(0, dtype=self._dtype)
        self._one = llama_cpp.llama_token_data(0, 0.0, 0.0)
        self._single = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
        )
        # The C interface; the callbacks are kept on self so they outlive the sampler.
        self._callbacks = (
            llama_cpp.llama_sampler_i_name(lambda _s: b"nexa-grammar"),
            llama_cpp.llama_sampler_i_accept(self._accept),
            llama_cpp.llama_sampler_i_apply(self._apply),
        )
        iface = llama_cpp.llama_sampler_i()
        iface.name, iface.accept, iface.apply = self._callbacks
        self._iface = iface
        self.sampler = llama_cpp.llama_sampler_init(ctypes.pointer(iface), None)

    def sample(self, ctx: Any, idx: int) -> int:
        return int(self._lc.llama_sampler_sample(self.sampler, ctx.ctx, idx))

    def _view(self, cur: Any) -> Any:
        c = cur.contents
        size = int(c.size)
        raw = (self._ctypes.c_char * (size * self._dtype.itemsize)).from_address(
            self._ctypes.addressof(c.data.contents)
        )
        return self._np.frombuffer(memoryview(raw), dtype=self._dtype)

    def _apply(self, _smpl: Any, cur: Any) -> None:
        lc, c = self._lc, cur.contents
        data, size = c.data, int(c.size)
        self._saved = self._view(cur).copy()  # the chain may sort and shrink the candidates
        lc.llama_sampler_apply(self._chain.sampler, cur)
        token = int(c.data[c.selected].id)
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0  # type: ignore[assignment]
        self._single.size, self._single.selected, self._single.sorted = 1, -1, False
        lc.llama_sampler_apply(self._grammar, self._ctypes.byref(self._single))
        if self._one.logit != -math.inf:
            return
        # Rejected: restore every candidate, apply the grammar to all of them, pick again.
        c.data, c.size, c.selected, c.sorted = data, size, -1, False
        self._view(cur)[:] = self._saved
        lc.llama_sampler_apply(self._grammar, cur)
        lc.llama_sampler_apply(self._chain.sampler, cur)

    def _accept(self, _smpl: Any, token: int) -> None:
        self._lc.llama_sampler_accept(self._grammar, token)
        self._lc.llama_sampler_accept(self._chain.sampler, token)

    def close(self) -> None:
        if self.sampler:
            self._lc.llama_sampler_free(self.sampler)  # only the wrapper: it has no free callback
            self.sampler = None
        if self._grammar:
            self._lc.llama_sampler_free(self._grammar)
            self._grammar = None
        self._chain.close()
