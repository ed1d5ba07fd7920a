"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, translated onto
the chat service (nexa.server.services.messages). Errors on these routes leave in Anthropic's
shape ({"type": "error", "error": {"type", "message"}}); a malformed body is a 400, as there."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from nexa.errors import NexaError, Overloaded
from nexa.schemas.messages import AnthropicError, CountTokensRequest, Message, MessagesRequest, TokenCount
from nexa.server.services import messages

log = logging.getLogger("nexa.server")


class AnthropicRoute(APIRoute):
    """A route whose errors take Anthropic's shape instead of the app's OpenAI envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
                return JSONResponse(messages.error_body(400, f"{where}: {first.get('msg', 'malformed body')}"), 400)
            except NexaError as exc:
                text = exc.message if not exc.param or exc.param in exc.message else f"{exc.param}: {exc.message}"
                headers = {"Retry-After": "1"} if isinstance(exc, Overloaded) else None
                return JSONResponse(messages.error_body(exc.status, text), exc.status, headers=headers)
            except HTTPException as exc:  # FastAPI's own refusals, such as a body that is not UTF-8 JSON
                return JSONResponse(messages.error_body(exc.status_code, str(exc.detail)), exc.status_code)
            except Exception as exc:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return JSONResponse(messages.error_body(500, f"Internal error: {type(exc).__name__}"), 500)

        return route


ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": AnthropicError, "description": "Anthropic's error shape; a malformed body is a 400."},
    "5XX": {"model": AnthropicError, "description": "Busy (503, with Retry-After) or a server failure."},
}
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The message; with `stream: true`, `text/event-stream` with Anthropic's events "
        "(`event: message_start` ... `event: message_stop`, each with its `data: {json}`).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
router = APIRouter(tags=["anthropic"], responses=ERRORS, route_class=AnthropicRoute)


@router.post("/v1/messages", response_model=Message, responses=STREAMED)
async def create_message(body: MessagesRequest, request: Request) -> Message | StreamingResponse:
    answer = await messages.create(request, body)
    if isinstance(answer, Message):
        return answer
    return StreamingResponse(
        answer, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.post("/v1/messages/count_tokens", response_model=TokenCount)
async def count_tokens(body: CountTokensRequest, request: Request) -> TokenCount:
    return await messages.count_tokens(request, body)
