"""Fuzzing of every operation in /openapi.json against the real SmolLM2 server, of the speech
endpoints against Whisper tiny.en and of speech synthesis against Kokoro (schemathesis, issue 16):
no answer is a 5xx, no stream carries a server_error event, and every refusal is OpenAI's
envelope `{"error": {"message", "type", "param", "code"}}`. Random JSON schemas, which the OpenAPI
cannot describe, go in as response_format and as tool parameters.

Bounded for CI: EXAMPLES cases per operation and mode (schema-valid "positive" bodies, and
"negative" ones that break the schema), derandomized so every run sends the same requests, no
shrinking (a failure reports its request as a curl command instead). The fuzz tests the request
shape, not generation: every body is capped at CAP new tokens, and half the positive bodies get
their sampling knobs moved into range so that they reach the model instead of stopping at the
range checks. `NEXA_FUZZ_EXAMPLES=500` digs deeper by hand.

Each 500 this found has a plain regression test at the end."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from support.servers import ServerProcess

EXAMPLES = int(os.environ.get("NEXA_FUZZ_EXAMPLES", "50"))
# The same cases on every run, none kept between runs, no shrinking (minutes of requests).
BOUNDED = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
CAP = 2  # new tokens per request
LENGTHS = ("max_tokens", "max_new_tokens", "max_completion_tokens", "max_output_tokens")
# The ranges the text endpoints accept (schemas.text.SamplingFields.sampling); the schema cannot
# say them without turning their 400s into 422s.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 2), "top_p": (0, 1), "min_p": (0, 1), "top_k": (0, 100), "repeat_penalty": (0, 10),
    "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2), "logprobs": (0, 20), "top_logprobs": (0, 20),
    "n": (1, 1),
}  # fmt: skip
GETS = [
    "GET /health", "GET /metrics", "GET /v1/models", "GET /v1/models/{model_id}", "GET /v1/files/{name}",
    "GET /v1/list_models", "GET /v1/server", "GET /v1/download_progress",
]  # fmt: skip
GENERATION = [
    "POST /v1/completions", "POST /v1/chat/completions", "POST /v1/function-calling", "POST /v1/responses",
    "POST /v1/messages",
]  # fmt: skip
POSTS = GENERATION + [
    "POST /v1/embeddings", "POST /v1/audio/transcriptions", "POST /v1/audio/translations", "POST /v1/txt2img",
    "POST /v1/img2img", "POST /v1/images/generations", "POST /v1/images/edits", "POST /tokenize", "POST /detokenize",
    "POST /v1/messages/count_tokens", "POST /v1/models/{model_id}/load", "POST /v1/models/{model_id}/unload",
    "POST /v1/load_model", "POST /v1/unload_model", "POST /v1/rerank",
    "POST /v1/audio/speech", "POST /v1/txt2speech", "POST /v1/download_model",
    "DELETE /v1/delete_model", "DELETE /v1/models/{model_id}",  # refused: the live server has no --allow-pull
]  # fmt: skip
# Anthropic's routes refuse in Anthropic's error shape.
ANTHROPIC = ["POST /v1/messages", "POST /v1/messages/count_tokens"]
SPEECH = ["POST /v1/audio/transcriptions", "POST /v1/audio/translations"]
TTS = ["POST /v1/audio/speech", "POST /v1/txt2speech"]  # and again on `nexa server kokoro`
BOTH = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# No body: as the GETs below, nothing negative to send.
PATH_ONLY = ["POST /v1/models/{model_id}/unload", "DELETE /v1/models/{model_id}"]
# A path parameter that is any string has no negative form: GETs are fuzzed with valid shapes only.
# The speech endpoints again on Whisper tiny.en, where uploads get past "this model cannot" (cheap:
# random bytes fail to decode at once). Images stay on the text server: a valid image request
# would run stable-diffusion.cpp, far beyond this test's budget.
RUNS = (
    [("text", op, GenerationMode.POSITIVE) for op in GETS]
    + [("text", op, mode) for op in POSTS for mode in (BOTH if op not in PATH_ONLY else BOTH[:1])]
    + [("speech", op, mode) for op in SPEECH for mode in BOTH]
    + [("tts", op, mode) for op in TTS for mode in BOTH]
)


@pytest.fixture(scope="module")
def speech(whisper_model) -> Iterator[ServerProcess]:
    with ServerProcess.nexa(str(whisper_model.path), "-lp", "-mt", "AUDIO", "--compute-type", "int8") as server:
        yield server


@pytest.fixture(scope="module")
def tts() -> Iterator[ServerProcess]:
    with ServerProcess.nexa("kokoro") as server:
        yield server


def load_schema(url: str) -> Any:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    schema.config.update(base_url=url)
    return schema


def test_every_operation_is_fuzzed(live):
    served = {result.ok().label for result in load_schema(live.url).get_all_operations()}
    assert served == set(GETS + POSTS)


def cap_length(body: Any, label: str) -> None:
    if not isinstance(body, dict):
        return
    for key in LENGTHS:
        if isinstance(body.get(key), int) and body[key] > CAP:
            body[key] = CAP
    if not any(isinstance(body.get(key), int) for key in LENGTHS):  # absent or null: 128 or the whole context
        body["max_output_tokens" if label == "POST /v1/responses" else "max_tokens"] = CAP


def into_range(body: Any) -> None:
    if not isinstance(body, dict):
        return
    for key, (low, high) in RANGES.items():
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            body[key] = type(value)(low if math.isnan(value) else min(max(value, low), high))


def error_envelope(ctx: Any, response: Any, case: Any) -> None:
    """A schemathesis check: refusals in OpenAI's envelope, no failure hidden in a 200 stream."""
    if response.status_code < 400:
        if "text/event-stream" in response.headers.get("content-type", [""])[0]:
            assert '"server_error"' not in response.text, response.text[-500:]
        return
    body = response.json()
    if case.operation.label in ANTHROPIC:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        return
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and isinstance(error["type"], str), error


@pytest.mark.parametrize(("server", "label", "mode"), RUNS, ids=[" ".join([s, op, m.value]) for s, op, m in RUNS])
def test_fuzz(request, server, label, mode):
    url = request.getfixturevalue({"text": "live"}.get(server, server)).url
    operation = load_schema(url).find_operation_by_label(label)
    generates = label in GENERATION

    @BOUNDED
    @given(case=operation.as_strategy(generation_mode=mode), in_range=st.booleans())
    def fuzz(case: Any, in_range: bool) -> None:
        if generates and in_range and mode == GenerationMode.POSITIVE:
            into_range(case.body)
        if generates:
            cap_length(case.body, label)
        response = case.call(timeout=60)
        case.validate_response(response, checks=[not_a_server_error, error_envelope])

    fuzz()


# -- JSON schemas: the OpenAPI says `object`, so the fuzz above seldom sends a real one ------------

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
NUMBERS = st.integers(-3, 40) | st.floats(allow_nan=False, allow_infinity=False) | st.integers()
TYPES = ["string", "number", "integer", "boolean", "null", "array", "object"]


def _schema_node(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    subs = st.lists(inner, min_size=1, max_size=3)
    keywords: dict[str, st.SearchStrategy[Any]] = {
        "type": st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES), max_size=3) | VALUES,
        "properties": st.dictionaries(st.text(max_size=6), inner, max_size=3),
        "required": st.lists(st.text(max_size=6), max_size=3) | VALUES,
        "additionalProperties": st.booleans() | inner,
        "items": st.booleans() | inner,
        "prefixItems": subs,
        "enum": st.lists(VALUES, max_size=4) | VALUES,
        "const": VALUES,
        "anyOf": subs, "oneOf": subs, "allOf": subs, "not": inner,
        "pattern": st.sampled_from(["^a+$", "[", "(a|b)*c", r"\d{2,4}", ".*", "(?=a)"]) | st.text(max_size=6),
        "format": st.sampled_from(["date", "time", "date-time", "email", "uuid", "ipv4", "bogus"]),
        "$ref": st.sampled_from(["#", "#/$defs/a", "#/definitions/a", "#/properties/x", "https://example.com/s"]),
        "$defs": st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
        **dict.fromkeys(["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"], NUMBERS),
        **dict.fromkeys(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"], NUMBERS),
    }  # fmt: skip
    return st.fixed_dictionaries({}, optional=keywords)


SCHEMAS = st.recursive(st.booleans() | _schema_node(st.nothing()), _schema_node, max_leaves=8)


def test_fuzz_json_schemas(live):
    """Random JSON schemas as response_format and as a tool's parameters: an answer or a 400.
    Grammar-constrained tokens are slow on a shared CPU: half the cases, one token each (the
    grammar is built whole all the same)."""

    @settings(BOUNDED, max_examples=max(1, EXAMPLES // 2))
    @given(schema=SCHEMAS, as_tool=st.booleans())
    def fuzz(schema: Any, as_tool: bool) -> None:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "Fill it in."}], "max_tokens": 1}
        if as_tool:
            body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
            body["tool_choice"] = "required"
        else:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        r = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code in (200, 400), f"{r.status_code} {r.text[:500]} for {body}"
        if r.status_code == 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text

    fuzz()


# -- what the fuzz found ----------------------------------------------------------------------


def test_tool_calls_on_a_message_other_than_the_assistant_are_not_a_500(client):
    # Calls in the history send the conversation through the tool-aware prompt, which read the
    # calls of every message, though only the assistant's are checked: KeyError 'id'.
    messages = [
        {"role": "function", "name": "f", "content": "1"},
        {"role": "system", "content": "hi", "tool_calls": [{}]},
    ]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": CAP})
    assert r.status_code == 200, r.text
