"""GET /health. The page at GET / is the playground (routers/playground.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nexa.schemas.models import Health, LoadedModel

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    manager = request.app.state.manager
    return Health(model=manager.model_id, models=[LoadedModel.model_validate(m) for m in manager.loaded()])
