"""Request bounds checked before the work: body size, messages per chat, prompt characters.

SmolLM2 (n_ctx 2048) behind an app with small limits, so no test sends more than a few hundred KiB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from nexa.config import Settings
from nexa.engines.base import CHARS_PER_TOKEN
from nexa.models.manager import ModelManager
from nexa.server.app import create_app
from support.servers import LiveServer

LIMIT = 64 * 1024
SMALL = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def bounded(manager: ModelManager):
    return create_app(Settings(max_body_bytes=LIMIT, max_messages=8), manager)


@pytest.fixture
def client(bounded) -> TestClient:
    return TestClient(bounded)  # no `with`: the lifespan would close the shared session model


@pytest.fixture
def untokenized(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if a prompt reaches the tokenizer; returns the texts that did."""
    seen: list[str] = []
    real = engine.tokenize

    def spy(text: str, **kw: Any) -> list[int]:
        seen.append(text)
        return real(text, **kw)

    monkeypatch.setattr(engine, "tokenize", spy)
    return seen


def _error(r: Any, status: int, param: str, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error
    assert r.json()["detail"] == error["message"]
    return error


def test_body_over_the_limit_is_413_before_parsing(client: TestClient) -> None:
    big = json.dumps({"prompt": "x" * (LIMIT + 1), "max_tokens": 2})
    r = client.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert "--max-body-mb" in _error(r, 413, "body", "request_too_large")["message"]
    # Not JSON at all: refused from its size, never parsed.
    r = client.post("/v1/chat/completions", content=b"{" * (LIMIT + 1), headers={"content-type": "application/json"})
    _error(r, 413, "body", "request_too_large")
    assert client.post("/v1/completions", json=SMALL).status_code == 200


def test_chunked_body_is_counted(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"max_tokens": 2, "prompt": "'
        for _ in range(LIMIT // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    r = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    _error(r, 413, "body", "request_too_large")
    assert client.post("/v1/completions", json=SMALL).status_code == 200


def test_body_limit_on_a_real_server(bounded) -> None:
    with LiveServer(bounded) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        r = http.post("/v1/completions", json={"prompt": "x" * (4 * LIMIT), "max_tokens": 2})
        _error(r, 413, "body", "request_too_large")
        assert http.post("/v1/completions", json=SMALL).status_code == 200


def test_too_many_messages(client: TestClient, untokenized: list[str]) -> None:
    messages = [{"role": "user", "content": "Hi"}] * 9
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
    assert "--max-messages" in _error(r, 400, "messages", "too_many_messages")["message"]
    r = client.post("/v1/function-calling", json={"messages": messages, "tools": []})
    _error(r, 400, "messages", "too_many_messages")
    assert untokenized == []
    r = client.post("/v1/chat/completions", json={"messages": messages[:8], "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_prompt_far_over_the_context_is_refused_before_tokenizing(
    client: TestClient, engine: Any, untokenized: list[str]
) -> None:
    text = "word " * (engine.n_ctx * CHARS_PER_TOKEN // 5 + 1)  # about 40 KiB, inside the body limit
    r = client.post("/v1/completions", json={"prompt": text, "max_tokens": 2})
    assert "--nctx" in _error(r, 400, "prompt", "context_length_exceeded")["message"]
    mid = len(text) // 2
    half = [{"role": "user", "content": text[:mid]}, {"role": "assistant", "content": text[mid:]}]
    r = client.post("/v1/chat/completions", json={"messages": half, "max_tokens": 2})
    _error(r, 400, "messages", "context_length_exceeded")
    assert untokenized == []
    # Just over the context in tokens, but not in characters: tokenized and refused as before.
    r = client.post("/v1/completions", json={"prompt": "word " * engine.n_ctx, "max_tokens": 2})
    _error(r, 400, "prompt", "context_length_exceeded")
    assert len(untokenized) == 1
    assert client.post("/v1/completions", json=SMALL).status_code == 200
