"""The one helper that streams chunks as standard server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from json.encoder import encode_basestring
from typing import Any, cast

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Send

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
        # What json.dumps(text, ensure_ascii=False) returns, without the encoder it builds per call.
        return self.head + encode_basestring(text).encode() + self.tail


class EventStream(StreamingResponse):
    """`data: {json}` per chunk (bytes: a frame made already), then `data: [DONE]`; an error
    mid-stream becomes an error event (OpenAI's envelope, without the `detail` that only the
    original's plain responses carry). Sent by the response itself, not through a generator
    around the chunks: that was one more layer to pass per streamed token."""

    def __init__(self, chunks: AsyncIterator[BaseModel | dict[str, Any] | bytes]):
        super().__init__(cast(AsyncIterator[bytes], chunks), media_type="text/event-stream",  # framed below
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.chunks = chunks

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            while True:
                try:  # only the chunks' own failures become error events; a failed send ends the response
                    chunk = await anext(self.chunks)
                except StopAsyncIteration:
                    end = DONE
                    break
                except NexaError as exc:
                    end = error_events(exc.message, exc.type, exc.code, param=exc.param)
                    break
                except Exception:
                    log.exception("stream failed")
                    end = error_events("The server failed while streaming.", "server_error")
                    break
                await send({"type": "http.response.body", "body": _frame(chunk), "more_body": True})
        finally:
            close = getattr(self.chunks, "aclose", None)
            if close is not None:  # now, not when collected: the engine stops at once
                await close()
        await send({"type": "http.response.body", "body": end, "more_body": False})


def sse_response(chunks: AsyncIterator[BaseModel | dict[str, Any] | bytes]) -> StreamingResponse:
    """The chunks as server-sent events (see EventStream)."""
    return EventStream(chunks)


def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": ErrorBody(message=message, type=type_, param=param, code=code)}


def error_events(message: str, type_: str, code: str | None = None, *, param: str | None = None) -> bytes:
    """An error event and the end of the stream: a stream that failed here, or one cut short
    outside the app (nexa on Ray Serve: the replica that produced it died)."""
    return _frame(_error(message, type_, param, code)) + DONE
