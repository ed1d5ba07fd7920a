"""The one helper that streams chunks as standard server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from nexa.errors import NexaError

log = logging.getLogger("nexa.server")


def _frame(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def sse_response(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """`data: {json}` per chunk, then `data: [DONE]`; an error mid-stream becomes an error event."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield _frame(chunk)
        except NexaError as exc:
            yield _frame({"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})
        except Exception:
            log.exception("stream failed")
            yield _frame(
                {
                    "error": {
                        "message": "The server failed while streaming.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
