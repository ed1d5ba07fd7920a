"""nexa on Ray Serve (server/ray_app.py): a local Ray cluster of 2 CPUs started here, 2 replicas of
SmolLM2 with one thread each, reached through Ray Serve's HTTP proxy with the official openai
client; then a replica killed mid-stream, and two models on replicas that hold one each.

One cluster for the module (Ray takes a while to start); the tests run in order, the last two
change the deployment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import ray
from ray import serve

from minilm_gguf import minilm_gguf
from nexa.config import Settings
from nexa.models.types import ResolvedModel
from nexa.server.ray_app import APP_NAME, REPLICA_HEADER, RayOptions, deploy
from support.servers import HOST, free_port

pytestmark = pytest.mark.slow
SMOLLM2 = "SmolLM2-135M-Instruct"  # not an id the replicas serve: every replica answers it with its default

SYSTEM = "You are a careful assistant for a shipping company. " * 12  # ~600 characters: a routing key


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """Ray's HTTP port: Ray Serve keeps the one it started with when the application is redeployed."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="WARNING")
    yield free_port()
    serve.shutdown()
    ray.shutdown()


def start(port: int, smollm2: ResolvedModel, options: RayOptions, *more: Path, max_models: int | None = None) -> str:
    settings = Settings(
        model=str(smollm2.path), models=[str(m) for m in more], source="local", n_threads=1, n_ctx=2048,
        host=HOST, port=port, max_models=max_models,
    )
    return deploy(settings, options)


@pytest.fixture(scope="module")
def url(cluster: int, smollm2: ResolvedModel) -> str:
    return start(cluster, smollm2, RayOptions(replicas=2))


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def chat(
    client: openai.OpenAI, question: str, system: str = SYSTEM, max_tokens: int = 8, model: str = SMOLLM2
) -> tuple[str, str]:
    """(answer, the replica that gave it)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
    )
    return raw.parse().choices[0].message.content or "", raw.headers[REPLICA_HEADER]


def test_chat_through_ray_serve(client: openai.OpenAI) -> None:
    answer, replica = chat(client, "Say hello.")
    assert answer.strip() and replica.startswith("SERVE_REPLICA::")

    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", max_tokens=12, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Count to five."}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()  # many events, not one buffered body
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_embeddings_through_ray_serve(client: openai.OpenAI) -> None:
    out = client.embeddings.create(model="SmolLM2-135M-Instruct", input=["a cat", "a dog"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == len(out.data[1].embedding) > 10


def test_errors_keep_their_envelope(client: openai.OpenAI, url: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[{"role": "nobody", "content": "x"}])
    assert bad.value.body["code"] == "invalid_body"  # type: ignore[index]
    answer = httpx.post(url + "/v1/nowhere", json={})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"


def test_same_prefix_same_replica(client: openai.OpenAI) -> None:
    replicas = {chat(client, question)[1] for question in ("Hi.", "What do you ship?", "Where is my parcel?")}
    assert len(replicas) == 1


def _prompts_on_two_replicas(client: openai.OpenAI) -> dict[str, str]:
    """System prompts that prefix routing sends to different replicas: {replica: system prompt}."""
    found: dict[str, str] = {}
    for n in range(20):
        system = f"Conversation {n}. " + SYSTEM
        found.setdefault(chat(client, "Hi.", system)[1], system)
        if len(found) == 2:
            return found
    raise AssertionError(f"20 prefixes all went to {list(found)}")


def test_killed_replica_is_replaced_and_others_go_on(client: openai.OpenAI) -> None:
    (doomed, system_a), (spared, system_b) = _prompts_on_two_replicas(client).items()
    counting = {"role": "user", "content": "Count from 1 to 1000, separated by commas."}
    stream_a = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", max_tokens=1000, temperature=0, stream=True,
        messages=[{"role": "system", "content": system_a}, counting],
    )
    other: dict[str, object] = {}

    def complete_b() -> None:
        try:
            other["answer"] = chat(client, "Count from 1 to 30.", system_b, max_tokens=60)
        except Exception as exc:  # reported by the assertion below
            other["error"] = exc

    next(iter(stream_a))  # generating on the doomed replica
    b = threading.Thread(target=complete_b)
    b.start()
    ray.kill(ray.get_actor(doomed, namespace="serve"), no_restart=True)
    with pytest.raises(openai.APIError) as cut:
        for _ in stream_a:
            pass
    assert "replica" in str(cut.value)
    b.join(timeout=300)
    assert "error" not in other and other["answer"][1] == spared  # type: ignore[index]

    # Ray Serve starts a replacement; until then the survivor answers everything.
    deadline = time.monotonic() + 240
    seen: set[str] = set()
    while time.monotonic() < deadline:
        try:
            seen.add(chat(client, "Hi.", f"Probe {len(seen)} {time.monotonic()}. " + SYSTEM)[1])
        except openai.InternalServerError as exc:  # sent to the dead replica before Ray noticed: 503, retry
            assert exc.status_code == 503 and exc.body["code"] == "replica_died"  # type: ignore[index]
        if seen - {doomed, spared}:
            break
        time.sleep(1)
    assert seen - {doomed, spared}, "no replacement replica answered"
    assert doomed not in seen


def test_two_models_on_the_replicas_that_hold_them(cluster: int, smollm2: ResolvedModel) -> None:
    # One model per replica (--max-models 1), two models: each stays on the replica that loaded it.
    url = start(cluster, smollm2, RayOptions(replicas=2, prefix_routing=False), minilm_gguf(), max_models=1)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    embedder = minilm_gguf().stem

    def embed() -> str:
        raw = client.embeddings.with_raw_response.create(model=embedder, input="a cat")  # a short name
        assert len(raw.parse().data[0].embedding) == 384
        return raw.headers[REPLICA_HEADER]

    # A replica reports what it loads to Ray Serve's controller, which tells the router: give it
    # a moment after each first load (routing before that picks the replica with fewest models).
    # Requests name the models as GET /v1/models lists them (file names here): a name the replicas
    # do not serve goes without a model id, to any replica, which answers with its default model.
    chatter = smollm2.path.name
    chat(client, "Hi.", model=chatter)
    time.sleep(2)
    embed()
    time.sleep(2)
    chats = {chat(client, "Hi.", f"{n} " + SYSTEM, model=chatter)[1] for n in range(3)}
    embeds = {embed() for _ in range(3)}
    assert len(chats) == 1 and len(embeds) == 1 and chats != embeds
    assert serve.status().applications[APP_NAME].status == "RUNNING"


def test_the_single_machine_server_never_imports_ray() -> None:
    code = (
        "import sys, nexa.cli; from nexa.config import Settings; from nexa.models.manager import ModelManager; "
        "from nexa.server.app import create_app; create_app(Settings(), ModelManager()); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "NEXA_ALLOWED_HOSTS": "[]"})
