"""Request log lines: method, path, status, duration, and tokens and tokens/s where generated."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("nexa.access")


class AccessLog:
    """Pure ASGI middleware, so streamed responses are logged when their last byte is sent."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            took = time.perf_counter() - started
            extra = ""
            gen = scope.get("state", {}).get("generation")
            if gen:
                tokens, seconds = gen
                rate = tokens / seconds if seconds > 0 else 0.0
                extra = f" {tokens} tokens {rate:.1f} tok/s"
            log.info("%s %s %d %.0fms%s", scope["method"], scope["path"], status, took * 1000, extra)
