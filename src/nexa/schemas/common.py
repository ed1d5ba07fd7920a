"""Pieces shared by every endpoint's schemas: the request and response bases, usage, errors."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from nexa.config import parse_duration


class RequestModel(BaseModel):
    """Requests ignore fields they do not know (clients of both APIs send extras)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def _seconds(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


# Ollama's per-request keep_alive: how long the model stays loaded once this request is done.
KeepAlive = Annotated[
    float | None,
    BeforeValidator(_seconds),
    Field(description="seconds (or 5m, 1h) the model stays loaded after this request; -1: forever, 0: unload now"),
]


class ResponseModel(BaseModel):
    """What the server sends. A field declared `X | None` without a default is always on the
    wire (null included: `logprobs: null`); one with the default None appears only when it was
    given, even as null (a delta's `content: null` beside `tool_calls`), so a key absent from a
    response never turns into a new null. Unknown fields are refused: a response whose shape
    drifts from its model fails in the tests instead of reaching clients undocumented."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # No return annotation on purpose: the JSON schema stays the model's own.
        data = handler(self)
        for name, field in type(self).model_fields.items():
            if field.default is None and not field.is_required() and name not in self.model_fields_set:
                data.pop(name, None)
        return data


class ErrorBody(ResponseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(ResponseModel):
    """OpenAI's error envelope, plus the original's `detail` (the message, or FastAPI's list on a 422)."""

    error: ErrorBody
    detail: Any


class PromptTokensDetails(ResponseModel):
    cached_tokens: int


class Timings(ResponseModel):
    """llama-server's names, so its dashboards and clients read them; OpenAI clients ignore them."""

    prompt_n: int
    prompt_ms: float
    prompt_per_second: float | None
    predicted_n: int
    predicted_ms: float
    predicted_per_second: float | None
    cache_n: int


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    timings: Timings | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    # OpenAI's `created` is whole seconds; the original sent a float, which strict clients reject.
    return int(time.time())
