"""Loading and unloading models by hand: POST /v1/models/{id}/load and /unload, and the original
Nexa server's /v1/load_model, /v1/unload_model and /v1/list_models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from nexa.schemas.models import LoadRequest, ModelCard, NexaModelRequest, NexaModelStatus
from nexa.server.openapi import ERRORS
from nexa.server.threads import in_thread

router = APIRouter(tags=["models"], responses=ERRORS)


@router.post("/v1/models/{model_id:path}/load", response_model=ModelCard)
async def load(model_id: str, request: Request, body: LoadRequest | None = None) -> ModelCard:
    """Load a model now (waiting for it) and keep it `keep_alive` seconds once idle."""
    keep_alive = body.keep_alive if body is not None else None
    return ModelCard.model_validate(await request.app.state.manager.load_model(model_id, keep_alive))


@router.post("/v1/models/{model_id:path}/unload", response_model=ModelCard)
async def unload(model_id: str, request: Request) -> ModelCard:
    """Unload a model now; one with requests in flight unloads when the last ends (state `unloading`)."""
    return ModelCard.model_validate(await request.app.state.manager.unload_model(model_id))


@router.post("/v1/load_model", response_model=NexaModelStatus)
async def load_model(body: NexaModelRequest, request: Request) -> NexaModelStatus:
    card = await request.app.state.manager.load_request(body)
    return NexaModelStatus(message=f"Model {card['id']} loaded.", model_type=card.get("model_type"), model=card["id"])


@router.post("/v1/unload_model", response_model=NexaModelStatus)
async def unload_model(request: Request, body: NexaModelRequest | None = None) -> NexaModelStatus:
    """The named model (`model_path`), or without a name the default one, as the original had one."""
    manager = request.app.state.manager
    card = await manager.unload_model(body.model_path if body and body.model_path else manager.model_id)
    done = "unloaded" if card["state"] == "not_loaded" else "unloads when its requests finish"
    return NexaModelStatus(message=f"Model {card['id']} {done}.", model_type=card.get("model_type"), model=card["id"])


@router.get("/v1/list_models")
async def list_downloaded(request: Request) -> dict[str, Any]:
    """The original's answer: the store's downloads, as `nexa list` shows them."""
    return await in_thread(request.app.state.manager.downloads)
