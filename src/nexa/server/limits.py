"""The request-body limit: a 413 in the error envelope before any body is parsed.

A body declared larger than the limit (Content-Length) is refused without reading it; a body
without one (chunked) is counted as it arrives and refused once it passes the limit, whatever the
endpoint was doing with it. Multipart bodies carry uploads, which have their own limits
(--max-upload-mb, --max-image-mb, checked by their services with messages naming those flags):
they may be as large as the largest of those, so that each upload's own check still speaks.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from nexa.config import Settings
from nexa.server.errors import envelope

# Multipart framing and the small option fields around the files.
FORM_OVERHEAD = 64 * 1024


class BodyTooLarge(Exception):
    pass


def body_limits(settings: Settings) -> tuple[int, int]:
    """(limit for JSON and other bodies, limit for multipart and form bodies) in bytes."""
    uploads = max(int(settings.max_upload_mb * 2**20), 2 * settings.max_image_bytes) + FORM_OVERHEAD
    return settings.max_body_bytes, max(settings.max_body_bytes, uploads)


class BodyLimit:
    """Pure ASGI middleware, so the body is limited before Starlette or FastAPI read it."""

    def __init__(self, app: Any, settings: Settings):
        self.app = app
        self.plain, self.form = body_limits(settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").lower()
        limit = self.form if ctype.startswith((b"multipart/", b"application/x-www-form-urlencoded")) else self.plain
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(limit, scope, receive, send)
            return

        seen = 0
        tripped = started = False

        async def counted() -> Any:
            nonlocal seen, tripped
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    tripped = True
                    raise BodyTooLarge
            return message

        async def guarded(message: dict[str, Any]) -> None:
            nonlocal started
            if tripped:  # whatever the endpoint made of the cut body (a 400, a 500), the answer is ours
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not tripped or started:
                raise
        if tripped and not started:
            await self._refuse(limit, scope, receive, send)

    @staticmethod
    async def _refuse(limit: int, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = (
            f"The request body is over the server's {limit / 2**20:g} MiB limit: send less, or start the "
            f"server with a higher --max-body-mb (uploads: --max-upload-mb, --max-image-mb)."
        )
        body = envelope(message, "invalid_request_error", "body", "request_too_large")
        # Connection: close, as the rest of the body is never read.
        await JSONResponse(body, 413, headers={"connection": "close"})(scope, receive, send)
