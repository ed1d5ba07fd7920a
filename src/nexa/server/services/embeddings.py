"""Embed a request's inputs off the loop, stopping at the next batch if the client leaves."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from nexa.engines.embedding_common import EmbeddingResult
from nexa.schemas.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from nexa.server.threads import Client, collect, iterate_in_thread


async def embed(client: Client, engine: Any, body: EmbeddingRequest) -> EmbeddingResult:
    """`engine`: an embedding engine (llama.cpp or onnxruntime; both take these options)."""
    inputs = body.inputs()

    def run(cancel: threading.Event) -> Iterator[EmbeddingResult]:  # one result, stoppable by `collect`
        yield engine.embed(
            inputs, truncate=body.truncate, normalize=body.normalize, dimensions=body.dimensions, cancel=cancel
        )

    (result,) = await collect(client, iterate_in_thread(run))
    return result


def render(vectors: np.ndarray, prompt_tokens: int, model: str, encoding_format: str) -> EmbeddingList:
    """base64 is little-endian float32, as OpenAI sends it."""
    if encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        rows = vectors.astype(np.float64).tolist()
    return EmbeddingList(
        data=[Embedding(index=i, embedding=row) for i, row in enumerate(rows)],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )
