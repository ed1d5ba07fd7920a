"""A llama_batch over numpy arrays, shared by the embedder and the generation scheduler.

Filling a batch is a few slice assignments, not a Python loop per token. Every token has
exactly one sequence id.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np


class TokenBatch:
    def __init__(self, capacity: int):
        import llama_cpp as lc

        self.capacity = capacity
        self.n = 0
        self._tok = np.zeros(capacity, np.int32)
        self._pos = np.zeros(capacity, np.int32)
        self._seq = np.zeros(capacity, np.int32)
        self._n_seq_id = np.ones(capacity, np.int32)
        self._out = np.zeros(capacity, np.int8)
        base = self._seq.ctypes.data
        # seq_id is an array of pointers, one per token, each into our one-id-per-token array.
        self._seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * capacity)(
            *[ctypes.cast(base + 4 * i, ctypes.POINTER(ctypes.c_int32)) for i in range(capacity)]
        )
        self.struct = lc.llama_batch(
            n_tokens=0,
            token=self._tok.ctypes.data_as(ctypes.POINTER(lc.llama_token)),
            embd=None,
            pos=self._pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos)),
            n_seq_id=self._n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._seq_ptrs,
            logits=self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: Sequence[int], start_pos: int, seq: int, outputs: str = "last") -> int:
        """Append tokens of one sequence at positions start_pos...; returns the row of the last.

        `outputs`: "last" (logits for the last token only), "all" (pooled embeddings need every
        token) or "none".
        """
        n, k = self.n, len(tokens)
        if k == 0 or n + k > self.capacity:
            raise ValueError(f"{k} tokens do not fit a batch with {self.capacity - n} free rows")
        if k == 1:  # a generating row, once per token: item assignment is several times cheaper than slices
            self._tok[n], self._pos[n], self._seq[n], self._out[n] = tokens[0], start_pos, seq, outputs != "none"
            self.n = n + 1
            self.struct.n_tokens = self.n
            return n
        self._tok[n : n + k] = tokens
        self._pos[n : n + k] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self._seq[n : n + k] = seq
        self._out[n : n + k] = 1 if outputs == "all" else 0
        if outputs == "last":
            self._out[n + k - 1] = 1
        self.n = n + k
        self.struct.n_tokens = self.n
        return self.n - 1
