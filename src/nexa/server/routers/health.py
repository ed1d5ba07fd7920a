"""GET /health and the welcome page at GET /."""

from __future__ import annotations

import html
import socket

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from nexa.schemas.models import Health, LoadedModel

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    manager = request.app.state.manager
    return Health(model=manager.model_id, models=[LoadedModel.model_validate(m) for m in manager.loaded()])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def welcome(request: Request) -> str:
    model = html.escape(request.app.state.manager.model_id)
    host = html.escape(socket.gethostname())
    return (
        f"<h1>Welcome to Nexa AI</h1><p>Hostname: {host}</p>"
        f"<p>Serving <code>{model}</code>. API docs: <a href='/docs'>/docs</a>.</p>"
    )
