"""Rerank a request's documents off the loop with whichever engine serves the model: an
embedding model scores by cosine similarity, a reranker model by its rank pooling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, cast

from fastapi import Request

from nexa.engines.base import CHARS_PER_TOKEN, Task
from nexa.engines.embedding_common import RerankResult
from nexa.errors import ContextLengthExceeded
from nexa.schemas.rerank import DocumentOut, RankedDocument, RerankRequest, RerankResponse, RerankUsage
from nexa.server.leases import engine_for
from nexa.server.services.embeddings import bounded
from nexa.server.threads import collect, iterate_in_thread

ENDPOINT = "/v1/rerank"


async def rerank(request: Request, body: RerankRequest) -> RerankResponse:
    query, documents = body.checked(request.app.state.settings.max_embedding_inputs)
    engine = await engine_for(request, Task.RERANK, ENDPOINT, body.model, body.keep_alive)
    query, documents = _bounded(query, documents, engine, body.truncate)

    def run(cancel: threading.Event) -> Iterator[RerankResult]:  # one result, stoppable by `collect`
        yield engine.rerank(query, documents, truncate=body.truncate, cancel=cancel)

    (result,) = await collect(request, iterate_in_thread(run))
    request.state.generation = (result.prompt_tokens, result.seconds)  # the access log's tokens/s
    order = sorted(range(len(documents)), key=lambda i: -result.scores[i])  # stable: ties keep request order
    results = [
        RankedDocument(index=i, relevance_score=result.scores[i])
        if not body.return_documents
        else RankedDocument(index=i, relevance_score=result.scores[i], document=DocumentOut(text=documents[i]))
        for i in order[: body.top_n]
    ]
    return RerankResponse(
        model=engine.name,
        method=result.method,
        results=results,
        usage=RerankUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )


def _bounded(query: str, documents: list[str], engine: Any, truncate: bool) -> tuple[str, list[str]]:
    """Texts far longer than the model reads cut (documents, with `truncate`) or refused before
    they are tokenized, as /v1/embeddings does (services/embeddings.py)."""
    info = engine.describe()
    max_tokens = int(info.get("max_input_tokens") or 0)
    if max_tokens and len(query) > max_tokens * CHARS_PER_TOKEN:
        raise ContextLengthExceeded(
            f"query is {len(query)} characters, more than the {max_tokens} tokens this model reads can hold. "
            "Shorten it.",
            param="query",
        )
    # Strings in, strings out: bounded() only cuts them.
    cut = bounded(cast(list[str | list[int]], documents), engine, truncate, field="documents")
    return query, cast(list[str], cut)
