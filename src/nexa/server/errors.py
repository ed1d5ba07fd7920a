"""Every error leaves as OpenAI's envelope, plus the original's `detail` for its clients."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexa.errors import NexaError, Overloaded

log = logging.getLogger("nexa.server")


def envelope(
    message: str, type_: str, param: str | None = None, code: str | None = None, detail: Any = None
) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": type_, "param": param, "code": code},
        "detail": message if detail is None else detail,
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NexaError)
    async def nexa_error(_: Request, exc: NexaError) -> JSONResponse:
        headers = {"Retry-After": "1"} if isinstance(exc, Overloaded) else None
        return JSONResponse(envelope(exc.message, exc.type, exc.param, exc.code), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        message = f"Invalid request body at '{where}': {first.get('msg', 'malformed')}"
        # `detail` keeps FastAPI's list, which the original's clients already parse.
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
        return JSONResponse(envelope(message, "invalid_request_error", where, "invalid_body", detail), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"No such endpoint: {request.method} {request.url.path}. See /docs for the API."
            return JSONResponse(envelope(message, "not_found_error", None, "unknown_url"), 404)
        return JSONResponse(envelope(str(exc.detail), "invalid_request_error"), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(envelope(f"Internal error: {type(exc).__name__}", "server_error"), 500)
