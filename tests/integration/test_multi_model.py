"""Several models behind one server, on the real small models: chat (SmolLM2), speech (Whisper
tiny.en) and embeddings (MiniLM) answering interleaved requests, each from the right model;
--models-dir models loaded on demand, unloaded after --keep-alive, by hand, or to make room under
--max-models (each model in its own worker process, which is gone once its model is unloaded);
a corrupt model file is a clear error and the next request tries again.

The lease that keeps a streaming model loaded is checked on a fake engine whose stream waits
for the test (a real stream's length is up to the model)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from minilm_gguf import minilm_gguf
from nexa.config import Settings
from nexa.engines.base import Finish, Task, TextDelta, TextEngine
from nexa.models.manager import ModelManager
from nexa.models.startup import model_factory
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from sdxs_checkpoint import ensure_checkpoint
from support.audio import wer
from support.servers import LiveServer, ServerProcess

AUDIO = Path(__file__).resolve().parent.parent / "audio"
SPEECH = "Open the window and let the cool air come in."  # tests/audio/s1.wav
TIMEOUT = 300.0
SMALL = dict(n_ctx=256, n_threads=1, parallel=1)
IMAGE = {"width": 128, "height": 128, "sample_steps": 1, "cfg_scale": 1.0}  # one UNet pass
TEST_MODELS = Path(os.environ.get("NEXA_TEST_MODELS", Path.home() / ".cache" / "nexa" / "test-models"))


def chat_body(model: str | None, **extra: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0, **extra}
    return body if model is None else {"model": model, **body}


def states(client: Any) -> dict[str, str]:
    return {m["id"]: m["state"] for m in client.get("/v1/models").json()["data"]}


def worker_pid(manager: ModelManager, model_id: str) -> int:
    slot = manager.pool.slot(model_id)
    assert slot is not None and slot.engine is not None
    return int(slot.engine.pid)  # type: ignore[attr-defined]  # a RemoteEngine


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(check: Callable[[], bool], timeout_s: float = 30) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "timed out"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
def models_dir(tmp_path: Path, smollm2: ResolvedModel) -> Path:
    (tmp_path / "tiny-chat.gguf").symlink_to(smollm2.path)
    return tmp_path


# -- chat, speech and embeddings at once ------------------------------------------------------


@pytest.fixture(scope="module")
def trio(
    smollm2: ResolvedModel, whisper_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelManager]:
    """Chat, speech and embeddings named on the command line, and the random SD checkpoint
    (tests/sdxs_checkpoint.py) in --models-dir, loaded by the first request that names it."""
    embedder = ModelStore().resolve(str(minilm_gguf()), source="local", model_type=ModelType.TEXT_EMBEDDING)
    models = tmp_path_factory.mktemp("trio-models")
    (models / "sdxs.safetensors").symlink_to(ensure_checkpoint(TEST_MODELS))
    settings = Settings(**SMALL, whisper_compute_type="float32", models_dir=str(models))
    manager = ModelManager.load(smollm2, settings, more=[whisper_model, embedder])
    manager.preload()
    yield manager
    manager.close()


def test_chat_speech_embeddings_and_images_from_one_server_at_once(
    trio: ModelManager, whisper_model: ResolvedModel, tmp_path: Path
) -> None:
    from openai import OpenAI

    ids = [m["id"] for m in trio.loaded()]
    assert len(ids) == 3 and ids[0] == trio.model_id
    embedder_id = ids[2]
    health = TestClient(create_app(Settings(), trio)).get("/health").json()
    assert health["model"] == trio.model_id and [(m["id"], m["state"]) for m in health["models"]] == [
        (i, "loaded") for i in ids
    ]
    with LiveServer(create_app(Settings(image_output_dir=str(tmp_path)), trio)) as live:
        client = OpenAI(base_url=live.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)

        def chat(_: int) -> str:
            r = client.chat.completions.create(model="gpt-4o", **chat_body(None))  # type: ignore[call-overload]
            assert r.choices[0].message.content
            return r.model

        def speech(_: int) -> str:
            with open(AUDIO / "s1.wav", "rb") as f:
                text = client.audio.transcriptions.create(model="whisper-1", file=f).text
            assert wer(SPEECH, text) < 0.3, text
            return whisper_model.name

        def embed(_: int) -> str:
            r = client.embeddings.create(model="text-embedding-3-small", input="a cat", encoding_format="float")
            assert len(r.data[0].embedding) == 384
            return r.model

        def image(_: int) -> str:  # its model loads meanwhile, while the others answer
            body = {"model": "sdxs", "prompt": "a red square", "response_format": "b64_json", **IMAGE}
            r = httpx.post(live.url + "/v1/images/generations", json=body, timeout=TIMEOUT)
            assert r.status_code == 200 and len(r.json()["data"]) == 1, r.text
            return "sdxs"

        jobs = [image, chat, speech, embed] * 2
        with ThreadPoolExecutor(len(jobs)) as pool:
            answered = list(pool.map(lambda job: job(0), jobs))
    assert answered == ["sdxs", trio.model_id, whisper_model.name, embedder_id] * 2
    assert trio.find("sdxs")["state"] == "loaded" and trio.find("sdxs")["model_type"] == "COMPUTER_VISION"


def test_a_name_reaches_its_model_and_a_wrong_type_is_400_naming_it(trio: ModelManager) -> None:
    client = TestClient(create_app(Settings(), trio))
    speech_id = trio.loaded()[1]["id"]
    r = client.post("/v1/chat/completions", json=chat_body(speech_id.upper()))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task"
    assert speech_id in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"model": trio.model_id, "input": "a cat"})
    assert r.status_code == 200 and r.json()["model"] == trio.model_id  # the text model embeds too, when named


# -- --models-dir, keep-alive, load and unload -------------------------------------------------


def test_models_dir_loads_on_demand_and_unloads_after_keep_alive(smollm2: ResolvedModel, models_dir: Path) -> None:
    settings = Settings(**SMALL, models_dir=str(models_dir), keep_alive=1)
    manager = ModelManager.load(smollm2, settings, factory=model_factory(settings))
    client = TestClient(create_app(settings, manager))
    try:
        assert states(client) == {smollm2.name: "loaded", "tiny-chat": "not_loaded"}
        card = client.get("/v1/models/tiny-chat").json()
        assert (card["model_type"], card["size"], card["origin"]) == ("NLP", smollm2.path.stat().st_size, "models dir")
        r = client.post("/v1/chat/completions", json=chat_body("tiny-chat"))
        assert r.status_code == 200 and r.json()["model"] == "tiny-chat"
        assert states(client)["tiny-chat"] == "loaded"
        pid = worker_pid(manager, "tiny-chat")
        assert wait_for(lambda: states(client)["tiny-chat"] == "not_loaded") > 0.5  # --keep-alive 1
        wait_for(lambda: process_gone(pid))  # the slot goes first, then its worker is closed
        assert states(client)[smollm2.name] == "loaded"  # the command line's model stays

        r = client.post("/v1/models/tiny-chat/load", json={"keep_alive": "-1"})
        assert r.status_code == 200 and r.json()["state"] == "loaded"
        time.sleep(1.5)
        assert states(client)["tiny-chat"] == "loaded"  # this load's own keep_alive: forever
        assert client.post("/v1/models/tiny-chat/unload").json()["state"] == "not_loaded"

        r = client.post("/v1/load_model", json={"model_path": "tiny-chat", "keep_alive": -1})
        assert r.json() == {"status": "succeed", "message": "Model tiny-chat loaded.", "model_type": "NLP",
                            "model": "tiny-chat"}
        assert [m["id"] for m in client.get("/health").json()["models"]] == [smollm2.name, "tiny-chat"]
        metrics = client.get("/metrics").text
        assert "nexa_models_loaded 2\n" in metrics and 'nexa_slots{model="tiny-chat"} 1\n' in metrics
        assert "nexa_slots 1\n" in metrics  # the default model's, unlabelled as ever
        assert client.post("/v1/unload_model", json={"model_path": "tiny-chat"}).json()["status"] == "succeed"
        assert states(client)["tiny-chat"] == "not_loaded"
        r = client.get("/v1/models/no-such-model")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    finally:
        manager.close()


def test_max_models_evicts_the_least_recently_used_idle_model(smollm2: ResolvedModel, models_dir: Path) -> None:
    settings = Settings(**SMALL, models_dir=str(models_dir), max_models=1)
    manager = ModelManager.load(smollm2, settings, factory=model_factory(settings))
    client = TestClient(create_app(settings, manager))
    try:
        first = worker_pid(manager, smollm2.name)
        assert client.post("/v1/chat/completions", json=chat_body("tiny-chat")).json()["model"] == "tiny-chat"
        assert states(client) == {smollm2.name: "not_loaded", "tiny-chat": "loaded"}
        wait_for(lambda: process_gone(first))  # evicted: its worker ends
        second = worker_pid(manager, "tiny-chat")
        r = client.post("/v1/completions", json={"model": smollm2.name, "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == smollm2.name
        assert states(client) == {smollm2.name: "loaded", "tiny-chat": "not_loaded"}
        wait_for(lambda: process_gone(second))
        assert worker_pid(manager, smollm2.name) not in (first, second)
    finally:
        manager.close()


def test_a_corrupt_model_is_a_clear_error_and_the_next_request_retries(
    smollm2: ResolvedModel, models_dir: Path
) -> None:
    broken = models_dir / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    settings = Settings(**SMALL, models_dir=str(models_dir))
    manager = ModelManager.load(smollm2, settings)
    client = TestClient(create_app(settings, manager))
    try:
        for _ in range(2):  # not cached: each request tries again
            r = client.post("/v1/chat/completions", json=chat_body("broken"))
            assert r.status_code == 500, r.text
            error = r.json()["error"]
            assert error["code"] == "model_load_failed" and "broken" in error["message"], error
            assert states(client)["broken"] == "not_loaded"
        broken.unlink()
        broken.symlink_to(smollm2.path)  # fixed on disk: the next request loads it
        r = client.post("/v1/chat/completions", json=chat_body("broken"))
        assert r.status_code == 200 and r.json()["model"] == "broken"
    finally:
        manager.close()


# -- leases: a model with a stream in flight is never evicted (fake engines) -------------------


class Gated(TextEngine):
    """Streams one piece, then waits for `go` before finishing."""

    tasks = frozenset({Task.COMPLETION})
    n_ctx = 64

    def __init__(self, model: ResolvedModel, go: threading.Event):
        self.name, self.go, self.closed = model.name, go, False

    def generate(self, prompt: list[int], params: Any, cancel: threading.Event) -> Iterator[TextDelta | Finish]:
        yield TextDelta("a")
        self.go.wait(TIMEOUT)
        yield Finish("stop", len(prompt), 1)

    def close(self) -> None:
        self.closed = True


def test_a_model_streaming_an_answer_is_not_evicted_until_the_stream_ends() -> None:
    go = threading.Event()
    engines: list[Gated] = []

    def factory(model: ResolvedModel, settings: Settings) -> Gated:
        engines.append(Gated(model, go))
        return engines[-1]

    settings = Settings(max_models=1, strict_model=True)
    models = [ResolvedModel(n, Path("/nonexistent") / n, ModelType.NLP) for n in ("one", "two")]
    manager = ModelManager.load(models[0], settings, factory=factory, more=models[1:])
    body = {"prompt": [1, 2], "max_tokens": 2, "stream": True}
    with LiveServer(create_app(settings, manager)) as live, httpx.Client(base_url=live.url, timeout=TIMEOUT) as http:
        with http.stream("POST", "/v1/completions", json={"model": "one", **body}) as stream:
            lines = stream.iter_lines()  # one iterator: a dropped one closes the stream
            assert next(lines).startswith("data: ")
            r = http.post("/v1/completions", json={"model": "two", **body, "stream": False})
            assert r.status_code == 503 and "--max-models 1" in r.json()["error"]["message"]
            assert not engines[0].closed
            go.set()
            rest = list(lines)
        assert "data: [DONE]" in rest
        wait_for(lambda: http.post("/v1/completions", json={"model": "two", **body, "stream": False}).status_code
                 == 200)
        assert engines[0].closed and states(http) == {"one": "not_loaded", "two": "loaded"}
        r = http.post("/v1/completions", json={"model": "three", **body})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"  # --strict-model
    manager.close()


# -- the command line's manager: every model named, the store, the catalogue --------------------


def test_the_command_lines_manager_serves_its_models_and_the_store(
    smollm2: ResolvedModel, whisper_model: ResolvedModel
) -> None:
    """`nexa server smollm2-135m faster-whisper-tiny.en --strict-model`, from the store (offline)."""
    settings = Settings(**SMALL, model=smollm2.name, models=["whisper-tiny.en"], strict_model=True)
    manager = ModelManager.start(settings)
    client = TestClient(create_app(settings, manager))
    try:
        assert [m["id"] for m in manager.loaded()] == [smollm2.name, whisper_model.name]  # both preloaded
        cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
        assert cards[smollm2.name]["default"] and cards[whisper_model.name]["origin"] == "command line"
        assert {c["state"] for i, c in cards.items() if c["origin"] == "store"} <= {"not_loaded"}
        assert client.get("/v1/models/SmolLM2").json()["id"] == smollm2.name  # a catalogue alias
        r = client.post("/v1/chat/completions", json=chat_body("smollm2:latest"))
        assert r.status_code == 200 and r.json()["model"] == smollm2.name
        with open(AUDIO / "s1.wav", "rb") as f:
            form = {"model": "whisper-tiny.en"}
            r = client.post("/v1/audio/transcriptions", files={"file": ("s1.wav", f)}, data=form)
        assert r.status_code == 200 and wer(SPEECH, r.json()["text"]) < 0.3
        for name, needle in (("gpt-4o", "--strict-model"), ("gemma", "--allow-pull")):
            r = client.post("/v1/chat/completions", json=chat_body(name))
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert needle in r.json()["error"]["message"]
    finally:
        manager.close()


def test_nexa_server_with_several_local_models(smollm2: ResolvedModel, whisper_model: ResolvedModel) -> None:
    """`nexa server CHAT.gguf WHISPER_FOLDER -lp`: the second model's type comes from its files."""
    args = (str(smollm2.path), str(whisper_model.path), "-lp", "-c", "256", "-t", "1", "-np", "1", "--strict-model")
    with ServerProcess.nexa(*args, start_timeout_s=120) as server:
        health = httpx.get(server.url + "/health", timeout=TIMEOUT).json()
        assert [m["id"] for m in health["models"]] == [smollm2.path.name, whisper_model.path.name]
        with open(AUDIO / "s1.wav", "rb") as f:
            r = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("s1.wav", f)}, timeout=TIMEOUT)
        assert r.status_code == 200 and wer(SPEECH, r.json()["text"]) < 0.3
        r = httpx.post(server.url + "/v1/chat/completions", json=chat_body("gpt-4o"), timeout=TIMEOUT)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
