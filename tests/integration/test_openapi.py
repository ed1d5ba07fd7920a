"""/openapi.json documents what every endpoint answers, and real answers fit their models
exactly: validating one and dumping it again gives back the same JSON, key for key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from nexa.schemas.common import ResponseModel
from nexa.schemas.models import Health, ModelList
from nexa.schemas.text import ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk, Delta

GREEDY = {"temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def spec(app) -> dict[str, Any]:
    return app.openapi()


def test_every_endpoint_documents_a_response_schema(spec):
    undocumented = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ok = [r for code, r in op["responses"].items() if code.startswith("2")]
            schemas = [m.get("schema", {}) for r in ok for m in r.get("content", {}).values()]
            # FastAPI writes a bare {"title": ...} for an unannotated answer: that documents nothing.
            if not schemas or not all(set(s) & {"$ref", "type", "anyOf", "oneOf"} for s in schemas):
                undocumented.append(f"{method.upper()} {path}")
    assert not undocumented, f"no response schema: {undocumented}"
    assert len(spec["paths"]) >= 14


def test_errors_and_alternatives_are_documented(spec):
    paths = spec["paths"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        ok = paths[path]["post"]["responses"]["200"]["content"]
        assert ok["application/json"]["schema"]["$ref"].startswith("#/components/schemas/")
        assert "$ref" in ok["text/event-stream"]["schema"]
        error = paths[path]["post"]["responses"]["4XX"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    speech = paths["/v1/audio/transcriptions"]["post"]
    assert {"application/json", "text/plain", "text/vtt"} <= set(speech["responses"]["200"]["content"])
    form = speech["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"]["format"] == "binary" and "timestamp_granularities[]" in form["properties"]
    edits = paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert edits["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert "$ref" in edits["application/json"]["schema"]
    assert "$ref" in paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "image/png" in paths["/v1/files/{name}"]["get"]["responses"]["200"]["content"]


def test_every_reference_resolves(spec):
    names = set(spec["components"]["schemas"])
    refs = {r.removeprefix("#/components/schemas/") for r in _refs(spec)}
    assert refs <= names, refs - names
    assert {"ChatCompletionChunk", "CompletionChunk", "EmbeddingRequest", "Delta"} <= names


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


# -- the models' rule for absent and null keys -----------------------------------------------


def test_optional_keys_appear_only_when_given():
    assert Delta(content="hi").model_dump() == {"content": "hi"}
    assert Delta(role="assistant", content=None).model_dump() == {"role": "assistant", "content": None}
    assert Delta().model_dump() == {}
    # required-nullable keys are always there
    chunk = CompletionChunk(id="c", created=1, model="m", choices=[])
    assert chunk.model_dump() == {"id": "c", "object": "text_completion", "created": 1, "model": "m", "choices": []}
    assert "usage" not in json.loads(chunk.model_dump_json())


def same_json(model: type[BaseModel], data: dict[str, Any]) -> None:
    """`data` fits `model` exactly (no unknown key, nothing missing) and survives a round trip."""
    assert issubclass(model, ResponseModel)
    again = model.model_validate(data).model_dump(mode="json")
    assert json.dumps(again, sort_keys=True) == json.dumps(data, sort_keys=True)
    assert list(again) == list(data)  # and in the same order


# -- real responses --------------------------------------------------------------------------


def test_text_responses_fit_their_models(client):
    plain = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "logprobs": 2, **GREEDY}).json()
    same_json(Completion, plain)
    assert plain["choices"][0]["logprobs"]["tokens"]
    no_lp = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, **GREEDY}).json()
    assert no_lp["choices"][0]["logprobs"] is None  # present, as null
    same_json(Completion, no_lp)

    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, **GREEDY}
    chat = client.post("/v1/chat/completions", json=body).json()
    same_json(ChatCompletion, chat)
    message = chat["choices"][0]["message"]
    assert message.keys() == {"role", "content"} and chat["choices"][0]["logprobs"] is None
    assert "timings" in chat["usage"] and "prompt_tokens_details" in chat["usage"]
    same_json(ChatCompletion, client.post("/v1/chat/completions", json={**body, "logprobs": True,
                                                                       "top_logprobs": 2}).json())


def test_streamed_chunks_fit_their_models(client):
    def chunks(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        with client.stream("POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            raw = r.read().decode()
        payloads = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
        assert payloads[-1] == "[DONE]"
        return [json.loads(p) for p in payloads[:-1]]

    for c in chunks("/v1/completions", {"prompt": "Hi", "max_tokens": 3, "logprobs": 1, "echo": True, **GREEDY}):
        same_json(CompletionChunk, c)
    got = chunks("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, **GREEDY})
    for c in got:
        same_json(ChatCompletionChunk, c)
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert got[-2]["choices"][0]["delta"] == {} and got[-1]["choices"] == [] and "usage" in got[-1]
    assert "usage" not in got[0]


def test_service_responses_fit_their_models(client):
    same_json(ModelList, client.get("/v1/models").json())
    same_json(Health, client.get("/health").json())


def test_tool_call_answers_fit_the_chat_models(client):
    tool = {"type": "function", "function": {"name": "get_city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}
    body = {"messages": [{"role": "user", "content": "Which city is the Eiffel Tower in?"}], "tools": [tool],
            "max_tokens": 40, **GREEDY}
    seed = client.post("/v1/function-calling", json=body).json()
    same_json(ChatCompletion, seed)
    message = seed["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] and message["function_call"]["name"] == "get_city"
    stream = {**body, "tool_choice": "required", "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=stream) as r:
        payloads = [e.removeprefix("data: ") for e in r.read().decode().split("\n\n") if e]
    for p in payloads[:-1]:
        same_json(ChatCompletionChunk, json.loads(p))
