"""POST /v1/embeddings: one vector per input, all inputs of a request embedded in batches."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nexa.engines.base import Task
from nexa.schemas.embeddings import EmbeddingRequest, render
from nexa.server.threads import call_in_thread

router = APIRouter(tags=["embeddings"])

# The body is parsed by hand (so a wrong type is a 400, as OpenAI answers); the docs still show it.
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
    }
}


@router.post("/v1/embeddings", openapi_extra=_BODY)
async def embeddings(request: Request) -> JSONResponse:
    engine = request.app.state.manager.get(Task.EMBEDDING, "/v1/embeddings")
    body = EmbeddingRequest.parse(await request.body())
    inputs = body.inputs()
    # A client that leaves stops the work at the next batch of inputs.
    result = await call_in_thread(
        request,
        lambda cancel: engine.embed(
            inputs, truncate=body.truncate, normalize=body.normalize, dimensions=body.dimensions, cancel=cancel
        ),
    )
    request.state.generation = (result.prompt_tokens, result.seconds)  # the access log's tokens/s
    # JSONResponse directly: FastAPI's encoder would walk every float of every vector in Python.
    return JSONResponse(render(result.vectors, result.prompt_tokens, engine.name, body.encoding_format))
