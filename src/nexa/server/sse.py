"""The one helper that streams chunks as standard server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse

from nexa.errors import NexaError
from nexa.schemas.common import ErrorBody

log = logging.getLogger("nexa.server")
DONE = b"data: [DONE]\n\n"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _frame(data: Any) -> bytes:
    if type(data) is bytes:  # framed already (FrameTemplate)
        return data
    return f"data: {json.dumps(data, ensure_ascii=False, default=_plain)}\n\n".encode()


class FrameTemplate:
    """The frame of a chunk in which only one string changes from token to token (the text of
    a plain streamed token): serialised once per stream with a mark in that place, then filled
    per token. The bytes are those `_frame` would give; serialising the whole chunk per token
    cost several times the rest of a token's work in the server."""

    MARK = "\x00"  # never in a token's text as sent: JSON escapes it, and the template looks for the escape
    _QUOTED = json.dumps(MARK).encode()

    def __init__(self, marked: BaseModel):
        head, _, tail = _frame(marked).rpartition(self._QUOTED)  # the last: nothing follows the text but nulls
        assert head, "the chunk does not hold the mark"
        self.head, self.tail = head, tail

    def fill(self, text: str) -> bytes:
        return self.head + json.dumps(text, ensure_ascii=False).encode() + self.tail


def sse_response(chunks: AsyncIterator[BaseModel | dict[str, Any] | bytes]) -> StreamingResponse:
    """`data: {json}` per chunk (bytes: a frame made already), then `data: [DONE]`; an error
    mid-stream becomes an error event (OpenAI's envelope, without the `detail` that only the
    original's plain responses carry)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield _frame(chunk)
        except NexaError as exc:
            yield error_events(exc.message, exc.type, exc.code, param=exc.param)
        except Exception:
            log.exception("stream failed")
            yield error_events("The server failed while streaming.", "server_error")
        else:
            yield DONE

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": ErrorBody(message=message, type=type_, param=param, code=code)}


def error_events(message: str, type_: str, code: str | None = None, *, param: str | None = None) -> bytes:
    """An error event and the end of the stream: a stream that failed here, or one cut short
    outside the app (nexa on Ray Serve: the replica that produced it died)."""
    return _frame(_error(message, type_, param, code)) + DONE
