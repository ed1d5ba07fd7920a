"""Tool calls that are right, not only valid (issue 21), on the real SmolLM2.

test_tools.py checks that every call fits its schema; these check what a client gets with
OpenAI's default request fields: parallel calls that end without repeating a call, an "auto"
that calls where a tool clearly applies, arguments that stop growing. bench/bench_tool_accuracy.py
measures the same on BFCL's cases.
"""

from __future__ import annotations

import json
from typing import Any

from nexa.structured.builder import LIMITS
from support.sse import sse_chunks
from support.tools import TOOLS, WEATHER

GREEDY = {"temperature": 0, "seed": 1}


def chat(client, path: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def calls_of(data: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in data["choices"][0]["message"].get("tool_calls") or []
    ]


def no_repeats(calls: list[tuple[str, Any]]) -> None:
    keys = [(name, json.dumps(args, sort_keys=True)) for name, args in calls]
    assert len(set(keys)) == len(keys), calls


def test_default_fields_never_repeat_a_call(client):
    # OpenAI's defaults: parallel_tool_calls not sent (true). SmolLM2 used to write the same call 2 to 4 times.
    for messages in (
        [{"role": "user", "content": "What's the weather in Paris?"}],
        [{"role": "user", "content": "Extract Jason is 25 years old"}],
    ):
        data = chat(client, messages=messages, tools=TOOLS, tool_choice="required", max_tokens=300, **GREEDY)
        calls = calls_of(data)
        assert calls and data["choices"][0]["finish_reason"] == "tool_calls"
        no_repeats(calls)
        assert data["usage"]["completion_tokens"] < 300  # it ended, not max_tokens


def test_streamed_default_fields_match_the_whole_answer(client):
    body = {
        "messages": [{"role": "user", "content": "Weather in Paris and Rome, please."}],
        "tools": TOOLS, "tool_choice": "required", "max_tokens": 300, **GREEDY,
    }
    whole = calls_of(chat(client, **body))
    no_repeats(whole)
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    streamed: dict[int, dict[str, str]] = {}
    for c in sse_chunks(r.text):
        for d in c["choices"][0]["delta"].get("tool_calls", []) if c["choices"] else []:
            call = streamed.setdefault(d["index"], {"name": "", "arguments": ""})
            call["name"] += d["function"].get("name") or ""
            call["arguments"] += d["function"].get("arguments") or ""
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(streamed.items())] == whole


def test_function_calling_endpoint_never_repeats_a_call(client):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    data = chat(client, "/v1/function-calling", messages=messages, tools=TOOLS, max_tokens=300, **GREEDY)
    calls = calls_of(data)
    assert calls
    no_repeats(calls)


def test_auto_calls_where_a_tool_clearly_applies(client):
    # tool_choice not sent: OpenAI's "auto". nexa used to answer such prompts in prose.
    for content in ("What's the weather in Paris?", "Is it raining in Berlin right now?"):
        data = chat(client, messages=[{"role": "user", "content": content}], tools=[WEATHER], max_tokens=200, **GREEDY)
        assert [name for name, _ in calls_of(data)] == ["get_weather"], data
        assert data["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_answers_in_text_where_no_tool_applies(client):
    # SmolLM2 opens a call on every prompt; a call whose values it had to invent ("New York" for
    # a joke) is dropped for a text answer.
    for content in ("Tell me a joke.", "Who wrote Hamlet?", "Write a haiku about the sea."):
        data = chat(client, messages=[{"role": "user", "content": content}], tools=[WEATHER], max_tokens=40, **GREEDY)
        message = data["choices"][0]["message"]
        assert not message.get("tool_calls") and message["content"].strip(), data
        assert "<tool_call>" not in message["content"] and not message["content"].startswith("message:")


def test_auto_answers_in_text_once_its_call_has_a_result(client):
    # SmolLM2 makes the same call again after reading its result; "auto" then answers in text.
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    messages = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18, "sky": "clear"}'},
    ]
    data = chat(client, messages=messages, tools=[WEATHER], max_tokens=40, **GREEDY)
    message = data["choices"][0]["message"]
    assert not message.get("tool_calls") and message["content"].strip(), data


def test_arrays_without_max_items_stay_bounded(client):
    # BFCL's case that ran to max_tokens in 94 s: an array of stops holding "Santa Barbara" 16 times.
    trip = {
        "type": "function",
        "function": {
            "name": "plan_trip",
            "description": "Plan a road trip through the given stops",
            "parameters": {
                "type": "object",
                "properties": {"stops": {"type": "array", "items": {"type": "string"}}},
                "required": ["stops"],
            },
        },
    }
    messages = [{"role": "user", "content": "Plan a road trip from Los Angeles to Santa Barbara."}]
    data = chat(client, messages=messages, tools=[trip], tool_choice="required", max_tokens=400, **GREEDY)
    calls = calls_of(data)
    assert calls and data["choices"][0]["finish_reason"] == "tool_calls"
    no_repeats(calls)
    for _, args in calls:
        stops = args["stops"]
        assert len(stops) <= LIMITS.max_items
        assert all(a != b for a, b in zip(stops, stops[1:], strict=False)), stops  # cut where it repeats
