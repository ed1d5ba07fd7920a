"""What every embedding engine (llama.cpp's in llama/embedder.py, ONNX's in onnx/embeddings.py)
shares: the result type and the checks and finishing applied to inputs and vectors alike, so
/v1/embeddings answers the same whichever engine serves the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nexa.errors import ContextLengthExceeded, InvalidRequest


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (n_inputs, dim) float32, in input order
    prompt_tokens: int  # tokens actually embedded (after truncation)
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


def check_length(where: str, tokens: list[int], max_tokens: int) -> None:
    if len(tokens) > max_tokens:
        raise ContextLengthExceeded(
            f"{where} is {len(tokens)} tokens, but this model embeds at most {max_tokens} tokens per "
            f"input. Shorten it, split it, or send \"truncate\": true to embed its first {max_tokens} tokens.",
            param="input",
        )
