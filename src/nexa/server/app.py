"""create_app(settings, manager) -> FastAPI. No globals: the manager lives on app.state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from nexa import __version__
from nexa.config import Settings
from nexa.models.manager import ModelManager
from nexa.server.errors import install_error_handlers
from nexa.server.leases import Leases
from nexa.server.limits import BodyLimit
from nexa.server.logs import AccessLog
from nexa.server.openapi import install as install_openapi
from nexa.server.routers import (
    audio,
    chat,
    completions,
    downloads,
    embeddings,
    functions,
    health,
    images,
    loading,
    messages,
    metrics,
    models,
    playground,
    rerank,
    responses,
    speech,
    tokenize,
)
from nexa.server.security import install as install_security
from nexa.server.threads import Pool
from nexa.workers import remote

log = logging.getLogger("nexa.server")


def create_app(settings: Settings, manager: ModelManager) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = ", ".join(m["id"] for m in manager.loaded())
        log.info("serving %s (default %s) on http://%s:%d", loaded, manager.model_id, settings.host, settings.port)
        loop = asyncio.get_running_loop()
        remote.read_on(loop)  # model workers' replies are read on this loop (see workers/remote.py)
        yield
        remote.stop_reading_on(loop)
        manager.close()
        preprocess.close()

    app = FastAPI(title="nexa", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.manager = manager
    app.state.preprocess = preprocess = Pool(settings.preprocess_threads, settings.max_queue)  # image decoding
    # Innermost: a request's models stay leased until its response is completely sent.
    app.add_middleware(Leases)
    # Added early, so it runs inside: after the Host and key checks, inside CORS (a browser can read its 413).
    app.add_middleware(BodyLimit, settings=settings)
    install_security(app, settings)
    app.add_middleware(AccessLog)
    install_error_handlers(app)
    for router in (
        health.router,
        metrics.router,
        loading.router,  # before models.router: /v1/models/{id}/load is not a model id
        models.router,
        downloads.router,
        completions.router,
        chat.router,
        functions.router,
        embeddings.router,
        rerank.router,
        audio.router,
        images.router,
        responses.router,
        messages.router,
        tokenize.router,
        playground.router,
        speech.router,
    ):
        app.include_router(router)
    install_openapi(app)
    return app


def app_from_env() -> FastAPI:
    """The factory `--reload` hands to uvicorn: settings come through the environment."""
    settings = Settings.from_env()
    return create_app(settings, ModelManager.start(settings))
