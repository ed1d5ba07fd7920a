"""Text embeddings through llama.cpp: embedding models (BERT, nomic, mxbai... any GGUF with a
pooling type) and chat models in embedding mode.

`LlamaEmbedder` owns one embedding-mode llama.cpp context and packs many inputs into each
`llama_decode`, every input its own sequence id; llama.cpp pools each sequence and we read
one vector per sequence. `EmbeddingEngine` serves it for TEXT_EMBEDDING models, and the chat
engine (llama/engine.py) builds one lazily on its own weights with mean pooling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nexa.config import default
from nexa.engines.base import Cancelled, Engine, Task
from nexa.engines.embedding_common import EmbeddingResult, Input, RerankResult, TokenEmbedder
from nexa.engines.llama.batch import TokenBatch
from nexa.engines.llama.weights import load_model
from nexa.errors import StartupError

log = logging.getLogger("nexa.engine.embeddings")

POOLINGS = {"mean": 1, "cls": 2, "last": 3}  # llama.cpp's enum llama_pooling_type
RANK = 4  # a reranker's pooling: a classification head's scores per sequence, not a vector
_POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}

# One llama_decode packs at most this many tokens. Attention spans the whole batch (masked
# between sequences), so its cost per token grows with the batch, while the matrix products gain
# little past a hundred rows: on all-MiniLM-L6-v2, 128 to 256 tokens per decode cost about half
# as much per token as 16, and 512 more than 256 (bench/bench_embeddings.py). A chat model in
# embedding mode also writes a row of logits per token, so smaller batches keep memory down.
BATCH_TOKENS = 256


class LlamaEmbedder(TokenEmbedder):
    """One embedding-mode context over a GGUF; thread-safe (calls take turns on the context).

    `model` shares weights already loaded (a llama_cpp LlamaModel, e.g. the chat engine's);
    otherwise the file at `path` is loaded here. `pooling` is "mean", "cls", "last" or None for
    the model's own pooling type, falling back to mean for models that have none (chat models).
    With `rank`, a model that pools by rank is accepted, and each sequence gives its head's
    scores (`dim` of them) instead of a vector (llama/reranker.py).
    """

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int = default("n_ctx"),
        n_threads: int = default("n_threads"),
        n_gpu_layers: int | str = default("n_gpu_layers"),
        main_gpu: int | None = default("main_gpu"),
        tensor_split: tuple[float, ...] | None = default("tensor_split"),
        pooling: str | None = None,
        model: Any = None,
        batch_tokens: int = BATCH_TOKENS,
        repack: bool = default("repack"),
        rank: bool = False,
    ):
        import llama_cpp
        from llama_cpp import _internals

        self._lc = llama_cpp
        self.path = Path(path)
        started = time.perf_counter()
        self._owns_model = model is None
        self.weights: dict[str, float] = {}
        self.offload: dict[str, Any] | None = None  # the owner of shared weights reports theirs
        if model is None:
            model, report, self.offload = load_model(
                self.path, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu, tensor_split=tensor_split, repack=repack
            )
            self.weights = report.buffers
        self._model = model
        self.vocab = model.vocab  # llama.cpp's vocabulary pointer: its BOS/EOS/SEP and whether it adds them
        self.n_vocab = model.n_vocab()

        chosen = self._pooling(pooling)
        if chosen not in (1, 2, 3) and not (rank and chosen == RANK):
            raise StartupError(
                f"{self.path.name} pools its embeddings as {_POOLING_NAMES.get(chosen, chosen)!r}, which does not "
                f"give one vector per input (a reranker?). Serve an embedding or chat model instead."
            )
        self.pooling = _POOLING_NAMES[chosen]
        # Positions past the training context do not exist in models with learned position
        # embeddings (BERT): llama.cpp would read past the table, so never go beyond it.
        self.max_tokens = max(1, min(n_ctx, model.n_ctx_train()))
        # A sequence must fit in one micro-batch: non-causal models attend across all of it, and
        # pooling a sequence split over two micro-batches would keep only the second half.
        n_batch = self.max_tokens
        self.batch_tokens = max(1, min(batch_tokens, n_batch))

        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_batch
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = min(n_batch, llama_cpp.llama_max_parallel_sequences())
        cp.kv_unified = True  # causal models: one KV cache shared by all sequences of a batch
        cp.embeddings = True
        cp.pooling_type = chosen
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.no_perf = True
        # Registers itself with the model, which frees it first whenever the model is closed.
        self._ctx = _internals.LlamaContext(model=model, params=cp, verbose=True)
        self.n_seq_max = cp.n_seq_max
        if chosen == RANK:
            self.dim = int(llama_cpp.llama_model_n_cls_out(model.model))
        else:
            try:
                self.dim = int(llama_cpp.llama_model_n_embd_out(model.model))
            except AttributeError:  # pragma: no cover - older bindings
                self.dim = model.n_embd()
        self._lock = threading.Lock()
        self._batch = TokenBatch(n_batch)
        log.info(
            "embedding context for %s ready in %.1fs (dim=%d, pooling=%s, max %d tokens per input, threads=%d)",
            self.path.name, time.perf_counter() - started, self.dim, self.pooling, self.max_tokens, n_threads,
        )

    def _pooling(self, pooling: str | None) -> int:
        if pooling is not None:
            if pooling not in POOLINGS:
                raise StartupError(f"Unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
            return POOLINGS[pooling]
        meta = self._model.metadata()
        own = meta.get(f"{meta.get('general.architecture', '')}.pooling_type")
        return int(own) if own not in (None, "0") else POOLINGS["mean"]

    # -- public ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def plain_tokens(self, text: str) -> list[int]:
        """`text`'s tokens without the special tokens that `tokenize` puts around them."""
        return self._model.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def pooled(self, seqs: list[list[int]], cancel: threading.Event | None = None) -> np.ndarray:
        """What llama.cpp pools for each token sequence, taken as given: (len(seqs), dim)."""
        with self._lock:
            return self._embed_tokens(seqs, cancel)

    def describe(self) -> dict[str, Any]:
        info = {"embedding_dim": self.dim, "pooling": self.pooling, "max_input_tokens": self.max_tokens}
        return {**info, "weights": self.weights, "offload": self.offload} if self._owns_model else info

    def close(self) -> None:
        self._ctx.close()
        if self._owns_model:
            self._model.close()

    # -- internals ---------------------------------------------------------------------------

    def _truncate_text(self, text: str, full: list[int]) -> list[int]:
        # Find where the plain tokens sit inside the full ones.
        plain = self.plain_tokens(text)
        head = next((h for h in range(len(full) - len(plain) + 1) if full[h : h + len(plain)] == plain), 0)
        tail = full[head + len(plain) :]
        keep = max(0, self.max_tokens - head - len(tail))
        return full[:head] + plain[:keep] + tail

    def _embed_tokens(self, seqs: list[list[int]], cancel: threading.Event | None) -> np.ndarray:
        out = np.empty((len(seqs), self.dim), np.float32)
        start = 0
        while start < len(seqs):
            end, used = start, 0
            while (
                end < len(seqs)
                and end - start < self.n_seq_max
                and (end == start or used + len(seqs[end]) <= self.batch_tokens)
            ):
                used += len(seqs[end])
                end += 1
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            self._decode(seqs[start:end], out[start:end])
            start = end
        return out

    def _decode(self, seqs: list[list[int]], out: np.ndarray) -> None:
        lc, ctx = self._lc, self._ctx.ctx
        self._batch.clear()
        for s, tokens in enumerate(seqs):
            self._batch.add(tokens, 0, s, outputs="all")
        n = self._batch.n
        self._ctx.kv_cache_clear()  # a fresh start for every batch (no-op for BERT: no cache)
        rc = lc.llama_decode(ctx, self._batch.struct)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {n} tokens")
        for s in range(len(seqs)):
            ptr = lc.llama_get_embeddings_seq(ctx, s)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no pooled embedding for sequence {s}")
            out[s] = np.ctypeslib.as_array(ptr, shape=(self.dim,))


class EmbeddingEngine(Engine):
    """TEXT_EMBEDDING models: a GGUF embedding model served by LlamaEmbedder, which also reranks
    by cosine similarity."""

    tasks = frozenset({Task.EMBEDDING, Task.RERANK})

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
        repack: bool = default("repack"),
    ):
        self.name = name
        self.path = Path(path)
        self._embedder = LlamaEmbedder(
            path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu,
            tensor_split=tensor_split, repack=repack,
        )
        self.offload = self._embedder.offload

    def embed(self, inputs: Sequence[Input], **options: Any) -> EmbeddingResult:
        return self._embedder.embed(inputs, **options)

    def rerank(self, query: str, documents: Sequence[str], **options: Any) -> RerankResult:
        return self._embedder.rerank(query, documents, **options)

    def describe(self) -> dict[str, Any]:
        return {"n_ctx": self._embedder.max_tokens, **self._embedder.describe()}

    def close(self) -> None:
        self._embedder.close()
