"""OpenAI's Responses API (POST /v1/responses) through the official `openai` client against a
live server on SmolLM2: plain text, streaming, a forced function call and its result, JSON
schema output, and the 400s of what a stateless local server does not do.

The SDK builds its models without validating them, so every answer and event is also
validated strictly against the SDK's own types (`openai.types.responses`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from nexa.config import Settings
from nexa.models.manager import ModelManager
from nexa.models.types import ModelType, ResolvedModel
from nexa.schemas.responses import ResponseObject, StreamEvent
from nexa.server.app import create_app
from projector import ensure_projector
from support.images import encode, picture
from support.leaving import count_generation, decoding_stops
from support.tools import WEATHER

GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 24}
TIMEOUT = 120
EVENTS = TypeAdapter(ResponseStreamEvent)
OWN_EVENTS: TypeAdapter[Any] = TypeAdapter(StreamEvent)
TOOL = {"type": "function", **WEATHER["function"], "strict": True}  # Responses' flat function tool
WEATHER_SCHEMA = WEATHER["function"]["parameters"]
FORCED = {"type": "function", "name": "get_weather"}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(live) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0) as c:
        yield c


def same_json(model: type[ResponseObject] | TypeAdapter[Any], data: dict[str, Any]) -> None:
    """`data` fits the server's own model exactly: a round trip gives back the same keys, in order."""
    adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    again = adapter.dump_python(adapter.validate_python(data), mode="json")
    assert again == data and list(again) == list(data)


def raw(live, **body: Any) -> dict[str, Any]:
    """The response as JSON, validated strictly against the SDK's Response model."""
    r = httpx.post(f"{live.url}/v1/responses", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    Response.model_validate(r.json())
    same_json(ResponseObject, r.json())
    return r.json()


def raw_events(live, **body: Any) -> list[dict[str, Any]]:
    """A streamed response's events, each frame checked: `event: <type>` then `data: <json>`,
    validated against the SDK's event union, numbered 0, 1, 2..."""
    r = httpx.post(f"{live.url}/v1/responses", json={**body, "stream": True}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    assert r.text.endswith("\n\n")
    events = []
    for frame in r.text.split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {data['type']}", frame
        EVENTS.validate_python(data)
        same_json(OWN_EVENTS, data)
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def check_usage(response: Any) -> None:
    u = response.usage
    assert u.input_tokens > 0 and u.output_tokens > 0
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens >= 0 and u.output_tokens_details.reasoning_tokens == 0


def chat_text(live, messages: list[dict[str, Any]], max_tokens: int) -> str:
    body = {"messages": messages, "temperature": 0, "max_tokens": max_tokens}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


# -- text ---------------------------------------------------------------------------------------------------------


def test_string_input_answers_as_chat_does(client, live):
    response = client.responses.create(model="smollm2", input="Name three colours.", **GREEDY)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete") and response.error is None
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [part.type for part in message.content] == ["output_text"]
    assert response.output_text == message.content[0].text and response.output_text.strip()
    check_usage(response)
    # The same conversation through /v1/chat/completions: the translation adds nothing to the prompt.
    assert response.output_text == chat_text(live, [{"role": "user", "content": "Name three colours."}], 24)
    assert response.temperature == 0 and response.max_output_tokens == 24 and response.tools == []


def test_item_list_with_instructions(client, live):
    items: list[Any] = [
        {"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada!"}]},
        {"role": "user", "content": "What is my name?"},
    ]
    response = client.responses.create(input=items, instructions="You are a terse assistant.", **GREEDY)
    assert response.instructions == "You are a terse assistant."
    expected = chat_text(
        live,
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada!"},
            {"role": "user", "content": "What is my name?"},
        ],
        24,
    )
    assert response.output_text == expected and expected.strip()
    raw(live, input=items, instructions="You are a terse assistant.", **GREEDY)  # the shape, strictly


def test_max_output_tokens_cut_is_incomplete(client, live):
    response = client.responses.create(input="Write a long story about a dragon.", temperature=0, max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.usage.output_tokens == 5
    events = raw_events(live, input="Write a long story about a dragon.", temperature=0, max_output_tokens=5)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


# -- streaming ----------------------------------------------------------------------------------------------------


def test_stream_matches_the_whole_answer(client, live):
    whole = client.responses.create(input="Name three animals.", **GREEDY)
    events = list(client.responses.create(input="Name three animals.", stream=True, **GREEDY))
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text
    end = "response.incomplete" if whole.status == "incomplete" else "response.completed"
    head = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done", end]
    assert types == head + ["response.output_text.delta"] * len(deltas) + tail
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, done = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.id == done.id
    assert events[-4].text == whole.output_text and events[-3].part.text == whole.output_text
    item = events[-2].item
    assert item.id == events[2].item.id == events[4].item_id and item.content[0].text == whole.output_text
    assert done.output_text == whole.output_text and done.status == whole.status
    check_usage(done)
    assert done.usage.output_tokens == whole.usage.output_tokens
    raw_events(live, input="Name three animals.", **GREEDY)  # the framing and every event's shape, strictly


def test_a_client_leaving_stops_the_generation(live, served, monkeypatch):
    produced, closed = count_generation(monkeypatch, served.engine)
    body = {"input": "Count from 1 to 1000.", "max_output_tokens": 1500, "stream": True, "temperature": 0}
    with httpx.Client(timeout=60) as c, c.stream("POST", f"{live.url}/v1/responses", json=body) as r:
        lines = r.iter_lines()
        for _ in range(12):
            next(lines)
    assert closed.wait(timeout=60), "generation kept running after the client left"
    assert len(produced) < 1500
    assert decoding_stops(served.engine), "the worker kept decoding for a client that left"


# -- function tools -----------------------------------------------------------------------------------------------


def test_a_function_call_cut_by_max_output_tokens_is_incomplete(client):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    response = client.responses.create(input=question, tools=[TOOL], tool_choice=FORCED, temperature=0,
                                       max_output_tokens=4)
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "incomplete"
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"


def test_forced_function_call_then_its_result(client, live):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    body: dict[str, Any] = {"tools": [TOOL], "tool_choice": FORCED, "temperature": 0, "max_output_tokens": 48}
    response = client.responses.create(input=question, **body)
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    assert response.status == "completed" and response.output_text == ""
    check_usage(response)
    raw(live, input=question, **body)

    # The next turn: the call (as the SDK returned it) and its result go back in `input`.
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 18, "sky": "clear"}'}
    history = [*question, call.model_dump(exclude_none=True), result]
    answer = client.responses.create(input=history, tools=[TOOL], temperature=0, max_output_tokens=32)
    [message] = answer.output
    assert message.type == "message" and answer.output_text.strip()


def test_streamed_function_call(client, live):
    body: dict[str, Any] = {
        "input": "What is the weather in Paris?", "tools": [TOOL], "tool_choice": FORCED,
        "temperature": 0, "max_output_tokens": 48,
    }
    whole = client.responses.create(**body)
    events = raw_events(live, **body)
    types = [e["type"] for e in events]
    pieces = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert types == (
        ["response.created", "response.in_progress", "response.output_item.added"]
        + ["response.function_call_arguments.delta"] * len(pieces)
        + ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    )
    [call] = whole.output
    assert "".join(pieces) == events[-3]["arguments"] == call.arguments
    assert events[2]["item"]["name"] == "get_weather" and events[2]["item"]["arguments"] == ""
    done = events[-1]["response"]["output"]
    assert [(i["type"], i["name"], i["arguments"], i["status"]) for i in done] == [
        ("function_call", "get_weather", call.arguments, "completed")
    ]


def test_tool_choice_none_answers_in_text(client):
    response = client.responses.create(input="Hello!", tools=[TOOL], tool_choice="none", **GREEDY)
    assert [item.type for item in response.output] == ["message"] and response.output_text
    assert response.tool_choice == "none"


# -- structured output --------------------------------------------------------------------------------------------


def test_json_schema_format_validates(client, live):
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    body: dict[str, Any] = {"input": "Invent a person.", "text": {"format": fmt}, "temperature": 0,
                            "max_output_tokens": 64}
    response = client.responses.create(**body)
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), PERSON)
    assert response.text.format.type == "json_schema"
    streamed = [e["delta"] for e in raw_events(live, **body) if e["type"] == "response.output_text.delta"]
    assert "".join(streamed) == response.output_text


def test_json_object_format(client):
    response = client.responses.create(
        input="Give a JSON object about a cat.", text={"format": {"type": "json_object"}}, temperature=0,
        max_output_tokens=48,
    )
    if response.status == "completed":  # a cut object cannot parse; the grammar still held every token
        assert isinstance(json.loads(response.output_text), dict)
    assert response.output_text.lstrip().startswith("{")


# -- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tools": [{**TOOL, "parameters": {"type": "array"}}]}, "tools[0].parameters"),
        ({"tools": [{**TOOL, "name": "bad name"}]}, "tools[0].name"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}}, "text.format.schema"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_unsupported_and_invalid_fields_are_400s_naming_them(client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(input="Hi", **extra)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_chat_names_in_errors_become_this_apis(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(input="Hi", tools=[TOOL], tool_choice="sometimes")
    message = caught.value.body["message"]
    assert '{"type": "function", "name": ...}' in message and '"function": {' not in message
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(input="Hi", max_output_tokens=0)
    assert caught.value.body["message"] == "max_output_tokens must be at least 1."


def test_null_max_output_tokens_runs_to_the_end(client):
    done = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
            "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "done", "schema": done}
    response = client.responses.create(input="Are you ok?", max_output_tokens=None, text={"format": fmt},
                                       temperature=0)
    assert response.max_output_tokens is None and response.status == "completed"
    assert json.loads(response.output_text) in ({"ok": True}, {"ok": False})


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"type": "reasoning", "summary": []}], "input[0].type"),
        ([{"type": "item_reference", "id": "msg_1"}], "input[0].type"),
        ([{"role": "robot", "content": "Hi"}], "input[0].role"),
        ([{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}], "input[0].content[0].type"),
        ([{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}],
         "input[0].content[0].image_url"),
        ([{"role": "user", "content": "Hi"}, {"type": "function_call_output", "call_id": "call_x", "output": "1"}],
         "input[1].call_id"),
        ([{"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "not json"}],
         "input[0].arguments"),
        (  # parallel calls are one chat message: the second one's error still names its own item
            [{"role": "user", "content": "Hi"},
             {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
             {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "[1]"}],
            "input[2].arguments",
        ),
        ([{"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "{}"},
          {"type": "function_call_output", "call_id": "c",
           "output": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}], "input[1].output"),
        ([], "input"),
    ],
)
def test_input_items_are_checked(client, items, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(input=items, tools=[TOOL])
    assert caught.value.body["param"] == param, caught.value.body


def test_an_image_on_a_text_model_is_a_400(client):
    pixel = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
        "rkJggg=="
    )
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": pixel}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(input=[{"role": "user", "content": content}])
    assert caught.value.body["code"] == "unsupported_task"


def test_input_image_reaches_a_vision_model(smollm2):
    """SmolLM2 with a random-weight projector (as in test_vision.py): the image part takes the
    chat path's vision route, so the answer is the chat endpoint's, word for word."""
    model = ResolvedModel("smollm2-vision", smollm2.path, ModelType.MULTIMODAL, projector=ensure_projector())
    manager = ModelManager.load(model, Settings(n_ctx=1024, n_threads=2))
    try:
        vision = TestClient(create_app(Settings(n_threads=2), manager))
        url = "data:image/png;base64," + base64.b64encode(encode(picture("red"))).decode()
        content = [{"type": "input_text", "text": "What is in this image?"}, {"type": "input_image", "image_url": url}]
        r = vision.post("/v1/responses", json={"input": [{"role": "user", "content": content}], **GREEDY})
        assert r.status_code == 200, r.text
        parts = [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": url}}]
        chat = vision.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}],
                                                          "temperature": 0, "max_tokens": 24})
        assert chat.status_code == 200, chat.text
        text = r.json()["output"][0]["content"][0]["text"]
        assert text == chat.json()["choices"][0]["message"]["content"] and text.strip()
    finally:
        manager.close()
