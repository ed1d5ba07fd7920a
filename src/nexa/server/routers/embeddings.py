"""POST /v1/embeddings: one vector per input, all inputs of a request embedded in batches."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nexa.engines.base import Task
from nexa.schemas.embeddings import EmbeddingList, EmbeddingRequest
from nexa.server.leases import engine_for
from nexa.server.openapi import ERRORS, json_body
from nexa.server.services.embeddings import embed, render

router = APIRouter(tags=["embeddings"], responses=ERRORS)


# The body is parsed by hand, so that a wrong type is a 400 (as OpenAI answers), not a 422.
@router.post("/v1/embeddings", response_model=EmbeddingList, openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request) -> JSONResponse:
    body = EmbeddingRequest.parse(await request.body())
    engine = await engine_for(request, Task.EMBEDDING, "/v1/embeddings", body.model, body.keep_alive)
    result = await embed(request, engine, body)
    request.state.generation = (result.prompt_tokens, result.seconds)  # the access log's tokens/s
    out = render(result.vectors, result.prompt_tokens, engine.name, body.encoding_format)
    # The dumped model straight to a JSONResponse: FastAPI would validate every float of every
    # vector again, and pydantic's own JSON writes floats differently from Python's (1e-05).
    return JSONResponse(out.model_dump())
