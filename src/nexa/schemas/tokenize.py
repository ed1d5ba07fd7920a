"""Requests and responses of /tokenize and /detokenize, in llama-server's shapes."""

from __future__ import annotations

from pydantic import Field

from nexa.schemas.common import RequestModel, ResponseModel


class TokenizeRequest(RequestModel):
    content: str
    model: str | None = None  # which text model's tokenizer (routed as any request); None: the default
    add_special: bool = False  # the model's BOS (and the like) at the start
    parse_special: bool = True  # special tokens spelled out in `content` read as themselves
    with_pieces: bool = False


class TokenPiece(ResponseModel):
    """`piece` is the token's text, or its bytes where they are not valid UTF-8 on their own."""

    id: int
    piece: str | list[int]


class TokenizeResponse(ResponseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeRequest(RequestModel):
    tokens: list[int] = Field(default_factory=list)
    model: str | None = None


class DetokenizeResponse(ResponseModel):
    content: str
