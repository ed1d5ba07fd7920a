"""POST /v1/embeddings: the request with the original's fields (`input`, `normalize`, `truncate`) beside OpenAI's
(`model`, `encoding_format`, `dimensions`, `user`, token-id arrays as input).

The response is OpenAI's list shape, which is also the original Nexa server's. Every mistake in the body is a
400 that names the field, as OpenAI answers, not a 422.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError

from nexa.errors import InvalidRequest
from nexa.schemas.common import KeepAlive, RequestModel, ResponseModel

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request (the default of --max-embedding-inputs)


class EmbeddingRequest(RequestModel):
    input: Any = Field(  # checked by `inputs()`, so that every mistake is a 400 naming the item
        None,
        description="A string, a list of strings, a list of token ids, or a list of token-id lists.",
        json_schema_extra={"anyOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "string"}},
            {"type": "array", "items": {"type": "integer"}},
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        ]},
    )
    model: str | None = None
    keep_alive: KeepAlive = None
    normalize: bool = False
    truncate: bool = True
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> EmbeddingRequest:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest("The request body is not valid JSON.", code="invalid_body") from None
        if not isinstance(data, dict):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidRequest(f"Invalid value for '{where}': {first['msg']}", param=where) from None

    def inputs(self, max_inputs: int = MAX_INPUTS) -> list[str | list[int]]:
        """The inputs as a list: strings, or lists of token ids (sent as one list or a list of lists)."""
        x = self.input
        if x is None:
            raise InvalidRequest("'input' is required: a string, a list of strings, or token ids.", param="input")
        if isinstance(x, str):
            items: list[Any] = [x]
        elif isinstance(x, list) and x and all(_is_int(t) for t in x):
            items = [x]  # one token-id array
        elif isinstance(x, list):
            items = x
        else:
            raise InvalidRequest(
                f"'input' must be a string, a list of strings, or token ids, not {type(x).__name__}.", param="input"
            )
        if not items:
            raise InvalidRequest("'input' is empty: send at least one string.", param="input")
        if len(items) > max_inputs:
            raise InvalidRequest(
                f"'input' has {len(items)} items; at most {max_inputs} are allowed per request "
                "(--max-embedding-inputs).",
                param="input", code="too_many_inputs",
            )
        for i, item in enumerate(items):
            if isinstance(item, str):
                if not item:
                    raise InvalidRequest(f"input[{i}] is an empty string: send some text.", param="input")
            elif isinstance(item, list):
                if not item:
                    raise InvalidRequest(f"input[{i}] is an empty list of token ids.", param="input")
                if not all(_is_int(t) and t >= 0 for t in item):
                    raise InvalidRequest(f"input[{i}] must hold only non-negative integer token ids.", param="input")
            else:
                raise InvalidRequest(
                    f"input[{i}] is a {type(item).__name__}; each input must be a string or a list of token ids.",
                    param="input",
                )
        kinds = {isinstance(item, str) for item in items}
        if len(kinds) > 1:
            raise InvalidRequest("'input' mixes strings and token ids: send one kind per request.", param="input")
        return items


def _is_int(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


class Embedding(ResponseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or with encoding_format=base64 little-endian float32")


class EmbeddingUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
