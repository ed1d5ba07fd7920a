"""GET /v1/models and /v1/models/{id}: what this server serves (Open WebUI needs it)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nexa.schemas.models import ModelCard, ModelList
from nexa.server.openapi import ERRORS

router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard.model_validate(m) for m in request.app.state.manager.list_models()])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return ModelCard.model_validate(request.app.state.manager.find(model_id))
