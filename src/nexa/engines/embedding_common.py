"""What every embedding engine (llama.cpp's in llama/embedder.py, ONNX's in onnx/embeddings.py)
shares: the result types, `TokenEmbedder.embed`, which checks, tokenizes and finishes inputs
and vectors alike, so /v1/embeddings answers the same whichever engine serves the model, and
`TokenEmbedder.rerank`, which scores documents against a query by the cosine of their vectors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from nexa.errors import ContextLengthExceeded, InvalidRequest


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (n_inputs, dim) float32, in input order
    prompt_tokens: int  # tokens actually embedded (after truncation)
    seconds: float = 0.0


@dataclass
class RerankResult:
    scores: list[float]  # one per document, in document order
    method: Literal["cosine", "rank"]  # how they were scored: embedding models' cosine, reranker models' rank pooling
    prompt_tokens: int  # tokens actually read (after truncation)
    seconds: float = 0.0


Input = str | Sequence[int]


def check_dimensions(dimensions: int | None, width: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= width:
        raise InvalidRequest(
            f"dimensions must be between 1 and {width}, this model's embedding width.", param="dimensions"
        )


def finish_vectors(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Apply `dimensions` and `normalize` to pooled vectors; float32 out."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        # Matryoshka-style: keep the leading dimensions and make the vector unit length again.
        vectors = np.ascontiguousarray(vectors[:, :dimensions])
        normalize = True
    if normalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors.astype(np.float32, copy=False)


def token_id_input(where: str, item: Sequence[int], n_vocab: int, max_tokens: int, truncate: bool) -> list[int]:
    """An input sent as token ids: used as given, checked against the vocabulary."""
    tokens = [int(t) for t in item]
    if not tokens:
        raise InvalidRequest(f"{where} is an empty list of tokens.", param="input")
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise InvalidRequest(
            f"{where} holds token id {bad[0]}, outside this model's vocabulary (0..{n_vocab - 1}).", param="input"
        )
    return tokens[:max_tokens] if truncate else tokens


def check_length(where: str, tokens: list[int], max_tokens: int, param: str = "input") -> None:
    if len(tokens) > max_tokens:
        raise ContextLengthExceeded(
            f"{where} is {len(tokens)} tokens, but this model embeds at most {max_tokens} tokens per "
            f"input. Shorten it, split it, or send \"truncate\": true to embed its first {max_tokens} tokens.",
            param=param,
        )


class TokenEmbedder:
    """`embed` over an engine's own tokenizer and batching: subclasses set `dim`, `max_tokens`,
    `n_vocab` and `_lock`, and give `tokenize`, `_truncate_text` and `_embed_tokens`."""

    dim: int
    max_tokens: int  # per input
    n_vocab: int
    _lock: threading.Lock  # calls take turns on the model

    def tokenize(self, text: str) -> list[int]:
        """The model's own tokens with its special tokens ([CLS] ... [SEP], BOS...)."""
        raise NotImplementedError

    def _truncate_text(self, text: str, full: list[int]) -> list[int]:
        """`text` cut to max_tokens (`full`: its tokens uncut), the special tokens kept around the
        cut as Hugging Face tokenizers truncate."""
        raise NotImplementedError

    def _embed_tokens(self, seqs: list[list[int]], cancel: threading.Event | None) -> np.ndarray:
        """Pooled vectors (len(seqs), dim), in order; stops with Cancelled between batches."""
        raise NotImplementedError

    def embed(
        self,
        inputs: Sequence[Input],
        *,
        truncate: bool = True,
        normalize: bool = False,
        dimensions: int | None = None,
        cancel: threading.Event | None = None,
    ) -> EmbeddingResult:
        """Embed texts or token-id lists (used as given, no special tokens added). A set `cancel`
        stops the work between batches with Cancelled (the client has gone)."""
        check_dimensions(dimensions, self.dim)
        seqs = [self._tokens(f"input[{i}]", x, truncate) for i, x in enumerate(inputs)]
        started = time.perf_counter()
        with self._lock:
            vectors = self._embed_tokens(seqs, cancel)
        took = time.perf_counter() - started
        vectors = finish_vectors(vectors, dimensions, normalize)
        return EmbeddingResult(vectors, sum(len(s) for s in seqs), took)

    def rerank(
        self, query: str, documents: Sequence[str], *, truncate: bool = True, cancel: threading.Event | None = None
    ) -> RerankResult:
        """Each document's cosine similarity to the query (in [-1, 1]), in document order; a set
        `cancel` stops the work between batches with Cancelled. `truncate` cuts long documents;
        a query is never cut (a cut query would rank documents against another question)."""
        q = self.tokenize(query)
        if not q:
            raise InvalidRequest("query gives no tokens: send some text.", param="query")
        if len(q) > self.max_tokens:
            raise ContextLengthExceeded(
                f"query is {len(q)} tokens, but this model reads at most {self.max_tokens} tokens per input. "
                "Shorten it.",
                param="query",
            )
        seqs = [q] + [self._tokens(f"documents[{i}]", d, truncate, "documents") for i, d in enumerate(documents)]
        started = time.perf_counter()
        with self._lock:
            vectors = self._embed_tokens(seqs, cancel)
        took = time.perf_counter() - started
        unit = finish_vectors(vectors, None, normalize=True).astype(np.float64)
        scores = (unit[1:] @ unit[0]).clip(-1.0, 1.0)
        return RerankResult([float(x) for x in scores], "cosine", sum(len(s) for s in seqs), took)

    def _tokens(self, where: str, item: Input, truncate: bool, param: str = "input") -> list[int]:
        if isinstance(item, str):
            tokens = self.tokenize(item)
            if not tokens:
                raise InvalidRequest(f"{where} gives no tokens: send some text.", param=param)
            if len(tokens) > self.max_tokens and truncate:
                tokens = self._truncate_text(item, tokens)
        else:
            tokens = token_id_input(where, item, self.n_vocab, self.max_tokens, truncate)
        check_length(where, tokens, self.max_tokens, param)
        return tokens
