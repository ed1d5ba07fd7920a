"""Requests hold the models they use until their response is completely sent.

`engine_for` asks the manager for a request's engine and keeps its lease on the request's ASGI
scope; `Leases`, a pure ASGI middleware, releases them once the app has returned: for a
streamed answer that is after its last chunk (or the client going away), so a model with a
stream in flight is never evicted or unloaded under it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from nexa.engines.base import Task
from nexa.models.pool import Lease

SCOPE_KEY = "nexa.leases"


async def engine_for(request: Request, task: Task, endpoint: str, model: str | None, keep_alive: float | None) -> Any:
    """The engine that serves `task` for a request naming `model` (see models/manager.py)."""
    leases: list[Lease] = request.scope.setdefault(SCOPE_KEY, [])
    return await request.app.state.manager.get(task, endpoint, model, keep_alive=keep_alive, leases=leases)


class Leases:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        leases: list[Lease] = scope.setdefault(SCOPE_KEY, [])
        try:
            await self.app(scope, receive, send)
        finally:
            for lease in leases:
                lease.release()
