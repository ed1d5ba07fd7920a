"""The model store through the API, on the real SmolLM2 served by a local stand-in for the
Hugging Face hub (tests/fakehub.py): a client downloads a model with /v1/download_model, follows
/v1/download_progress, chats with it, cannot delete it while it is loaded, unloads and deletes it;
without --allow-pull all of this is refused; unknown names and failed downloads are clear errors
and the server keeps serving."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import fakehub
from fakehub import FakeHub
from nexa.config import Settings
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ResolvedModel
from nexa.server.app import create_app

fake_hub = fakehub.fake_hub  # a running fake hub; HF_ENDPOINT and the model cache point at it
SMALL = dict(n_ctx=256, n_threads=1, parallel=1)
REPO = "org/SmolLM2-GGUF"


def serve(smollm2: ResolvedModel, **settings: Any) -> tuple[TestClient, ModelManager]:
    config = Settings(**SMALL, **settings)
    manager = ModelManager.load(smollm2, config, store=ModelStore())  # the store in the test's cache
    return TestClient(create_app(config, manager)), manager


@pytest.fixture
def pulling(smollm2: ResolvedModel, fake_hub: FakeHub) -> Iterator[TestClient]:
    fake_hub.add_hf_repo(REPO, {"smollm2-Q4_1.gguf": smollm2.path.read_bytes(), "README.md": b"a model"})
    client, manager = serve(smollm2, allow_pull=True)
    with client:
        yield client
    manager.close()


def chat(client: TestClient, model: str) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
    return client.post("/v1/chat/completions", json=body)


def progress_events(client: TestClient, name: str, timeout_s: float = 120) -> list[dict[str, Any]]:
    """The progress stream of `name`, once the download is known to the server (it may not be yet)."""
    started = time.monotonic()
    while True:
        with client.stream("GET", "/v1/download_progress", params={"model_path": name}) as r:
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/event-stream")
                return [json.loads(line.removeprefix("data: ")) for line in r.iter_lines() if line]
            assert r.status_code == 404 and time.monotonic() - started < timeout_s
        time.sleep(0.05)


def test_download_follow_chat_refuse_delete_while_loaded_then_delete(pulling: TestClient) -> None:
    answer: dict[str, Any] = {}
    download = threading.Thread(
        target=lambda: answer.update(
            r=pulling.post("/v1/download_model", json={"model_path": REPO, "is_huggingface": True})
        )
    )
    download.start()
    events = progress_events(pulling, REPO)
    download.join(timeout=300)
    percents = [e["progress"] for e in events]
    assert percents[-1] == 100 and percents == sorted(percents) and all(0 <= p <= 100 for p in percents)
    assert {e["model_name"] for e in events} == {REPO}

    r = answer["r"]
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["status"] == "success" and got["model_type"] == "NLP" and got["projector_local_path"] is None
    name, path = got["model_path"], Path(got["model_local_path"])
    assert path.name == "smollm2-Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert progress_events(pulling, REPO)[-1]["progress"] == 100  # asked again after the end

    r = chat(pulling, name)  # the downloaded model answers by its name
    assert r.status_code == 200 and r.json()["model"] == name and r.json()["choices"][0]["message"]["content"]

    r = pulling.request("DELETE", "/v1/delete_model", json={"model_path": name})
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_loaded"
    assert f"/v1/models/{name}/unload" in r.json()["error"]["message"] and path.exists()

    assert pulling.post(f"/v1/models/{name}/unload").json()["state"] == "not_loaded"
    r = pulling.request("DELETE", "/v1/delete_model", json={"model_path": name})
    assert r.status_code == 200 and r.json()["status"] == "success" and r.json()["deleted"] == [str(path)]
    assert not path.exists() and name not in [m["id"] for m in pulling.get("/v1/models").json()["data"]]

    r = pulling.request("DELETE", "/v1/delete_model", json={"model_path": name})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert chat(pulling, "anything").status_code == 200  # the default model still serves


def test_openai_delete_answers_in_openais_shape(pulling: TestClient) -> None:
    r = pulling.post("/v1/download_model", json={"model_path": f"{REPO}:Q4_1", "is_huggingface": True})
    assert r.status_code == 200, r.text
    name = r.json()["model_path"]
    r = pulling.delete(f"/v1/models/{name}")
    assert r.status_code == 200 and r.json() == {"id": name, "object": "model", "deleted": True}
    assert pulling.delete(f"/v1/models/{name}").status_code == 404


def test_unknown_names_and_failed_downloads_are_clear_and_the_server_keeps_serving(pulling: TestClient) -> None:
    r = pulling.post("/v1/download_model", json={"model_path": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "is_huggingface" in r.json()["error"]["message"]

    r = pulling.post("/v1/download_model", json={"model_path": "org/missing-GGUF", "is_huggingface": True})
    assert r.status_code == 502 and r.json()["error"]["code"] == "download_failed"
    assert "org/missing-GGUF" in r.json()["error"]["message"]
    events = progress_events(pulling, "org/missing-GGUF")
    assert len(events) == 1 and "org/missing-GGUF" in events[0]["error"]

    r = pulling.post("/v1/download_model", json={"model_path": REPO, "is_huggingface": True, "model_type": "CHAT"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model_type"
    r = pulling.get("/v1/download_progress", params={"model_path": "never-asked"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert chat(pulling, "anything").status_code == 200


def test_without_allow_pull_clients_cannot_write_to_the_store(smollm2: ResolvedModel, fake_hub: FakeHub) -> None:
    fake_hub.add_hf_repo(REPO, {"smollm2-Q4_1.gguf": b"never fetched"})
    client, manager = serve(smollm2)
    try:
        r = client.post("/v1/download_model", json={"model_path": REPO, "is_huggingface": True})
        assert r.status_code == 403 and r.json()["error"]["code"] == "downloads_disabled"
        assert "--allow-pull" in r.json()["error"]["message"]
        r = client.request("DELETE", "/v1/delete_model", json={"model_path": smollm2.name})
        assert r.status_code == 403 and smollm2.path.exists()
        assert not fake_hub.requests  # nothing went over the wire
    finally:
        manager.close()
