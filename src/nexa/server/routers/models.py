"""GET /v1/models and /v1/models/{id}: every model this server may serve and its state (Open WebUI
needs the list); ids may hold `/` and `:`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nexa.schemas.models import ModelCard, ModelList
from nexa.server.openapi import ERRORS
from nexa.server.threads import in_thread

router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    cards = await in_thread(request.app.state.manager.list_models)  # reads the store and --models-dir
    return ModelList(data=[ModelCard.model_validate(m) for m in cards])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return ModelCard.model_validate(await in_thread(request.app.state.manager.find, model_id))
