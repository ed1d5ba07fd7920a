"""What /openapi.json says beyond the routes' own declarations: the error envelope, the
event-stream and text alternatives of a JSON answer, and the bodies the handlers parse
themselves (to answer 400 rather than 422, to check an upload's size before reading it, or
to take JSON and multipart at one path), which FastAPI cannot infer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from nexa.schemas.common import ErrorResponse
from nexa.schemas.embeddings import EmbeddingRequest
from nexa.schemas.text import ChatCompletionChunk, CompletionChunk

Responses = dict[int | str, dict[str, Any]]

REF = "#/components/schemas/{model}"
ERRORS: Responses = {
    "4XX": {"model": ErrorResponse, "description": "A refused request: OpenAI's envelope naming the field "
            "(`param`), plus the original's `detail` (FastAPI's list of errors on a 422)."},
    "5XX": {"model": ErrorResponse, "description": "Busy (503, with Retry-After) or a server failure."},
}
# Models referenced by $ref from documentation FastAPI does not build itself (see `install`).
_STREAMED: tuple[type[BaseModel], ...] = (CompletionChunk, ChatCompletionChunk)
_PARSED_BY_HAND: tuple[type[BaseModel], ...] = (EmbeddingRequest,)


def ref(model: type[BaseModel]) -> dict[str, str]:
    assert model in _STREAMED + _PARSED_BY_HAND, f"{model.__name__} is not registered for /openapi.json"
    return {"$ref": REF.format(model=model.__name__)}


def streamed(chunk: type[BaseModel]) -> Responses:
    """A JSON answer (the route's response_model) that `stream: true` turns into server-sent events."""
    return {
        200: {
            "description": f"The answer as JSON; with `stream: true`, `text/event-stream`: one "
            f"`data: {{{chunk.__name__}}}` event per piece, then `data: [DONE]`.",
            "content": {"text/event-stream": {"schema": ref(chunk)}},
        }
    }


def text_alternatives(*media_types: str) -> Responses:
    """A JSON answer that some `response_format` values replace with plain text."""
    return {200: {"content": {m: {"schema": {"type": "string"}} for m in media_types}}}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref(model)}}}}


def form_schema(
    model: type[BaseModel], files: dict[str, bool], renamed: dict[str, str] | None = None
) -> dict[str, Any]:
    """`model`'s fields as multipart form fields, beside binary file parts (name -> required),
    which replace fields of the same name (a JSON body's base64 `image` is a file here)."""
    schema = model.model_json_schema()
    assert "$defs" not in schema, "a form field cannot hold a nested model"
    names = renamed or {}
    props = {names.get(k, k): v for k, v in schema["properties"].items() if k not in files}
    required = [names.get(k, k) for k in schema.get("required", []) if k not in files]
    return {
        "type": "object",
        "properties": {**{f: {"type": "string", "format": "binary"} for f in files}, **props},
        "required": [f for f, needed in files.items() if needed] + required,
    }


def install(app: FastAPI) -> None:
    """Add the models that `ref` points at to the generated document's components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            models = [(m, "serialization") for m in _STREAMED] + [(m, "validation") for m in _PARSED_BY_HAND]
            _, defs = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
