"""Embed a request's inputs off the loop, stopping at the next batch if the client leaves."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from fastapi import Request

from nexa.engines.base import CHARS_PER_TOKEN
from nexa.engines.embedding_common import EmbeddingResult
from nexa.errors import ContextLengthExceeded
from nexa.schemas.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from nexa.server.threads import collect, iterate_in_thread


async def embed(request: Request, engine: Any, body: EmbeddingRequest) -> EmbeddingResult:
    """`engine`: an embedding engine (llama.cpp or onnxruntime; both take these options)."""
    inputs = bounded(body.inputs(request.app.state.settings.max_embedding_inputs), engine, body.truncate)

    def run(cancel: threading.Event) -> Iterator[EmbeddingResult]:  # one result, stoppable by `collect`
        yield engine.embed(
            inputs, truncate=body.truncate, normalize=body.normalize, dimensions=body.dimensions, cancel=cancel
        )

    (result,) = await collect(request, iterate_in_thread(run))
    return result


def bounded(
    inputs: list[str | list[int]], engine: Any, truncate: bool, field: str = "input"
) -> list[str | list[int]]:
    """Each input cut or refused by its length before it is tokenized, so that the work of a
    request is bounded by its number of inputs times the tokens the model embeds per input.

    A text longer than that many tokens times CHARS_PER_TOKEN cannot fit: with `truncate` it is
    cut there (its tokens past the model's limit would be dropped anyway), otherwise refused;
    token ids past the limit likewise."""
    # The figure /v1/models shows: an embedding model's tokens per input, a chat model's context.
    info = engine.describe()
    max_tokens = int(info.get("max_input_tokens") or info.get("n_ctx") or 0)
    if not max_tokens:  # an engine that states no limit checks its inputs itself
        return inputs
    most_chars = max_tokens * CHARS_PER_TOKEN
    out: list[str | list[int]] = []
    for i, item in enumerate(inputs):
        limit = most_chars if isinstance(item, str) else max_tokens
        if len(item) > limit and not truncate:
            unit = "characters" if isinstance(item, str) else "token ids"
            raise ContextLengthExceeded(
                f"{field}[{i}] is {len(item)} {unit}, more than the {max_tokens} tokens this model embeds per "
                f"input can hold. Shorten it, split it, or send \"truncate\": true to embed its first {max_tokens} "
                "tokens.",
                param=field,
            )
        out.append(item[:limit])
    return out


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
