"""Pathological JSON schemas over HTTP (issue 16): a 400 in the envelope naming the field and
the limit, quickly, while the server keeps answering others."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

MSG = [{"role": "user", "content": "hi"}]


def nested(levels: int) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        s = {"type": "array", "items": s}
    return s


CASES = [
    nested(400),
    {"type": "string", "minLength": 100_000},
    {"type": "array", "minItems": 100_000},
    {"type": "array", "minItems": 3000, "maxItems": 1e9},
    {"type": "string", "pattern": "((a{0,100}){0,100}){0,100}"},
    {"type": "number", "exclusiveMinimum": 1e22},
    {"enum": [f"v{i}" for i in range(20_000)]},
]


@pytest.mark.parametrize("schema", CASES, ids=range(len(CASES)))
def test_pathological_schema_is_400_naming_the_field(client, schema):
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = client.post("/v1/chat/completions", json={"messages": MSG, "response_format": rf, "max_tokens": 4})
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["param"] == "response_format.json_schema.schema" and "limit" in err["message"], err
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": schema}}},
    }
    r = client.post("/v1/chat/completions", json={"messages": MSG, "tools": [tool], "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].function.parameters", r.text[:300]
    r = client.post("/v1/completions", json={"prompt": "x", "response_format": rf, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema", r.text[:300]


def test_health_answers_while_a_pathological_schema_is_refused(live):
    # The number bound hung the whole server (compiled on the event loop) before the limits.
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "number", "exclusiveMinimum": 1e22}}}
    statuses: list[int] = []

    def send() -> None:
        r = httpx.post(live.url + "/v1/chat/completions", json={"messages": MSG, "response_format": rf}, timeout=60)
        statuses.append(r.status_code)

    worker = threading.Thread(target=send)
    worker.start()
    time.sleep(0.05)
    assert httpx.get(live.url + "/health", timeout=10).status_code == 200
    worker.join(60)
    assert statuses == [400]
