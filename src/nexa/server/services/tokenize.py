"""/tokenize and /detokenize on the loaded text model's own tokenizer (llama-server's shapes)."""

from __future__ import annotations

from fastapi import Request

from nexa.engines.base import Task, TextEngine
from nexa.errors import InvalidRequest
from nexa.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenPiece,
)
from nexa.server.leases import engine_for
from nexa.server.threads import in_thread


async def tokenize(request: Request, body: TokenizeRequest) -> TokenizeResponse:
    engine: TextEngine = await engine_for(request, Task.COMPLETION, "/tokenize", body.model, None)

    def run() -> TokenizeResponse:
        ids = engine.token_ids(body.content, add_special=body.add_special, parse_special=body.parse_special)
        if not body.with_pieces:
            return TokenizeResponse(tokens=ids)
        return TokenizeResponse(tokens=[TokenPiece(id=t, piece=_piece(engine.token_text(t))) for t in ids])

    return await in_thread(run)


async def detokenize(request: Request, body: DetokenizeRequest) -> DetokenizeResponse:
    engine: TextEngine = await engine_for(request, Task.COMPLETION, "/detokenize", body.model, None)
    if engine.n_vocab and any(not 0 <= t < engine.n_vocab for t in body.tokens):
        raise InvalidRequest(f"tokens holds ids outside 0..{engine.n_vocab - 1}.", param="tokens")

    def run() -> DetokenizeResponse:
        # Joined as bytes first: a character can span several tokens.
        text = b"".join(engine.token_text(t) for t in body.tokens).decode("utf-8", "replace")
        return DetokenizeResponse(content=text)

    return await in_thread(run)


def _piece(raw: bytes) -> str | list[int]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # part of a character: llama-server sends the bytes
        return list(raw)
