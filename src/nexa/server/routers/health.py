"""GET /health (public) and GET /v1/server (behind the key, as it tells how the server is set
up). The page at GET / is the playground (routers/playground.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nexa import __version__
from nexa.schemas.models import Health, LoadedModel, ServerInfo

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    manager = request.app.state.manager
    return Health(model=manager.model_id, models=[LoadedModel.model_validate(m) for m in manager.loaded()])


# Never shown, whoever asks: a key in a page's JSON is a key leaked.
SECRET = {"api_key", "api_key_file"}


@router.get("/v1/server", response_model=ServerInfo)
async def server(request: Request) -> ServerInfo:
    settings = request.app.state.settings.model_dump(mode="json", exclude=SECRET)
    return ServerInfo(version=__version__, settings=settings)
