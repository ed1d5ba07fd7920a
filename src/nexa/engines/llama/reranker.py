"""Reranker GGUFs (bge-reranker, jina-reranker...: cross-encoders whose pooling type is rank):
each (query, document) pair is read as one sequence, and llama.cpp's rank pooling runs the
model's classification head on it, giving the pair's relevance score.

The pair is laid out as llama-server lays it out ([BOS] query [EOS] [SEP] document [EOS], each
special token only where the vocabulary adds it), and the score is the head's first output,
raw (a logit, not squashed into [0, 1]), as llama-server returns it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nexa.config import default
from nexa.engines.base import Engine, Task
from nexa.engines.embedding_common import RerankResult, check_length
from nexa.engines.llama.embedder import LlamaEmbedder
from nexa.errors import ContextLengthExceeded, InvalidRequest, StartupError


class RerankerEngine(Engine):
    """TEXT_EMBEDDING GGUFs whose metadata pools by rank (engines/loader.py picks this engine)."""

    tasks = frozenset({Task.RERANK})

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
        import llama_cpp

        self.name = name
        self.path = Path(path)
        self._embedder = embedder = LlamaEmbedder(
            path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, main_gpu=main_gpu,
            tensor_split=tensor_split, repack=repack, rank=True,
        )
        self.offload = embedder.offload
        if embedder.pooling != "rank":
            embedder.close()
            raise StartupError(f"{self.path.name} pools by {embedder.pooling!r}, not rank: it is not a reranker.")
        vocab = embedder.vocab
        eos = llama_cpp.llama_vocab_eos(vocab)
        if eos == llama_cpp.LLAMA_TOKEN_NULL:
            eos = llama_cpp.llama_vocab_sep(vocab)
        # The tokens around the query and around the document.
        self._head = [llama_cpp.llama_vocab_bos(vocab)] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
        add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
        self._middle = [eos] if add_eos else []
        if llama_cpp.llama_vocab_get_add_sep(vocab):
            self._middle.append(llama_cpp.llama_vocab_sep(vocab))
        self._tail = [eos] if add_eos else []

    def rerank(
        self, query: str, documents: Sequence[str], *, truncate: bool = True, cancel: threading.Event | None = None
    ) -> RerankResult:
        """Each document's score for the query, in document order. A pair longer than the model
        reads has its document cut with `truncate`, else is refused."""
        embedder = self._embedder
        most = embedder.max_tokens
        q = embedder.plain_tokens(query)
        if not q:
            raise InvalidRequest("query gives no tokens: send some text.", param="query")
        fixed = len(self._head) + len(q) + len(self._middle) + len(self._tail)
        if fixed >= most:
            raise ContextLengthExceeded(
                f"query is {len(q)} tokens, which leaves no room for a document in the {most} tokens this model "
                "reads per pair. Shorten the query.",
                param="query",
            )
        seqs = []
        for i, document in enumerate(documents):
            d = embedder.plain_tokens(document)
            if not d:
                raise InvalidRequest(f"documents[{i}] gives no tokens: send some text.", param="documents")
            if truncate:
                d = d[: most - fixed]
            pair = self._head + q + self._middle + d + self._tail
            check_length(f"documents[{i}] with the query", pair, most, "documents")
            seqs.append(pair)
        started = time.perf_counter()
        scores = embedder.pooled(seqs, cancel)[:, 0]
        took = time.perf_counter() - started
        return RerankResult([float(x) for x in scores], "rank", sum(len(s) for s in seqs), took)

    def describe(self) -> dict[str, Any]:
        info = {"n_ctx": self._embedder.max_tokens, **self._embedder.describe()}
        info.pop("embedding_dim")  # the head's outputs, not a vector a client could ask for
        return info

    def close(self) -> None:
        self._embedder.close()
