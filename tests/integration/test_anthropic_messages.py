"""Anthropic's Messages API on the real llama.cpp engine with SmolLM2, through the official
`anthropic` client over a live server: plain and streamed messages, stop sequences, tool use
with a follow-up turn, count_tokens, and errors in Anthropic's shape.

This `anthropic` release no longer takes `temperature` as an argument; the server still reads
it, so it travels in `extra_body`.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from nexa.schemas.messages import Message, MessagesRequest
from nexa.schemas.text import ImagePart
from nexa.server.services.messages import to_chat

GREEDY = {"extra_body": {"temperature": 0}}
ASK = [{"role": "user", "content": "Say hello to Ada."}]
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
}
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def claude(live) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key="unused", max_retries=0)


def events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of each event of a whole Anthropic stream, checking its framing."""
    assert raw.endswith("\n\n"), raw[-200:]
    out = []
    for block in raw.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        out.append((name, data))
    return out


def test_plain_message(claude: anthropic.Anthropic, live) -> None:
    reply = claude.messages.create(model="smollm2", max_tokens=16, messages=ASK, system="Be brief.", **GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    [block] = reply.content
    assert block.type == "text" and block.text.strip()
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.stop_sequence is None
    assert reply.usage.input_tokens > 0 and 0 < reply.usage.output_tokens <= 16
    # The JSON itself fits the documented model key for key.
    body = {"model": "smollm2", "max_tokens": 16, "messages": ASK, "temperature": 0}
    raw = httpx.post(f"{live.url}/v1/messages", json=body, timeout=120).json()
    assert Message.model_validate(raw).model_dump(mode="json") == raw


def test_stream_gives_the_same_answer(claude: anthropic.Anthropic, live) -> None:
    kwargs: dict[str, Any] = {"model": "smollm2", "max_tokens": 20, "messages": ASK, **GREEDY}
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].text == whole.content[0].text
    assert streamed.stop_reason == whole.stop_reason
    assert streamed.usage.input_tokens == whole.usage.input_tokens
    assert streamed.usage.output_tokens == whole.usage.output_tokens

    body = {"model": "smollm2", "max_tokens": 20, "messages": ASK, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/messages", json=body, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r.read().decode())
    names = [n for n, _ in got]
    assert names[:3] == ["message_start", "content_block_start", "ping"]  # Anthropic's order
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert "".join(d["delta"]["text"] for n, d in got if n == "content_block_delta") == whole.content[0].text
    delta = got[-2][1]
    assert delta["delta"] == {"stop_reason": whole.stop_reason, "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == whole.usage.output_tokens


def test_stop_sequence(claude: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": "smollm2", "max_tokens": 60, "stop_sequences": ["."],
        "messages": [{"role": "user", "content": "Tell me about Paris."}], **GREEDY,
    }  # fmt: skip
    reply = claude.messages.create(**kwargs)
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "."
    assert "." not in reply.content[0].text
    with claude.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == "."
    assert streamed.content[0].text == reply.content[0].text


def test_a_tool_use_cut_by_max_tokens_is_max_tokens(claude: anthropic.Anthropic) -> None:
    # Its input is not JSON yet: the message says max_tokens and holds no half-made tool_use.
    forced: dict[str, Any] = {"type": "tool", "name": "get_weather"}
    reply = claude.messages.create(
        model="smollm2", max_tokens=4, messages=PARIS, tools=[WEATHER], tool_choice=forced, **GREEDY
    )
    assert reply.stop_reason == "max_tokens"
    assert [block.type for block in reply.content] == ["text"] and "<" not in reply.content[0].text


def test_tool_use_then_tool_result(claude: anthropic.Anthropic) -> None:
    forced: dict[str, Any] = {"type": "tool", "name": "get_weather"}
    kwargs: dict[str, Any] = {
        "model": "smollm2", "max_tokens": 60, "messages": PARIS, "tools": [WEATHER], "tool_choice": forced, **GREEDY,
    }  # fmt: skip
    reply = claude.messages.create(**kwargs)
    assert reply.stop_reason == "tool_use"
    [call] = reply.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER["input_schema"])

    with claude.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    [streamed_call] = streamed.content
    assert streamed_call.type == "tool_use" and streamed_call.input == call.input

    history = [
        *PARIS,
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 22 C"}]},
    ]
    answer = claude.messages.create(
        model="smollm2", max_tokens=30, messages=history, tools=[WEATHER], tool_choice={"type": "none"}, **GREEDY
    )
    [text] = answer.content
    assert text.type == "text" and text.text.strip()
    assert answer.stop_reason in ("end_turn", "max_tokens")
    # The call and its result are in the prompt.
    alone = claude.messages.count_tokens(model="smollm2", messages=PARIS, tools=[WEATHER], tool_choice={"type": "none"})
    assert answer.usage.input_tokens > alone.input_tokens + 10


def test_count_tokens_matches_the_prompt(claude: anthropic.Anthropic) -> None:
    for extra in ({}, {"system": "Answer in French."}, {"tools": [WEATHER]}):
        counted = claude.messages.count_tokens(model="smollm2", messages=ASK, **extra)  # type: ignore[arg-type]
        reply = claude.messages.create(model="smollm2", max_tokens=1, messages=ASK, **extra, **GREEDY)  # type: ignore[arg-type]
        assert counted.input_tokens == reply.usage.input_tokens > 0, extra


def test_errors_take_anthropic_shape(claude: anthropic.Anthropic, live) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="smollm2", max_tokens=8, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024}
        )
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "thinking" in caught.value.body["error"]["message"]

    url = f"{live.url}/v1/messages"
    cases = {
        "max_tokens": {"messages": ASK},  # required by Anthropic
        "messages[0].content[0].type": {
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}],
        },
        "tools[0].type": {"max_tokens": 8, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "w"}]},
        "tools[0].input_schema": {"max_tokens": 8, "messages": ASK, "tools": [{"name": "w"}]},
        "temperature": {"max_tokens": 8, "messages": ASK, "temperature": 1.5},
        "stop_sequences": {"max_tokens": 8, "messages": ASK, "tools": [WEATHER], "stop_sequences": ["."]},
        # Refused before a stream starts: a JSON answer, not an event stream.
        "'nope'": {"max_tokens": 8, "messages": ASK, "stream": True, "tools": [WEATHER],
                   "tool_choice": {"type": "tool", "name": "nope"}},
    }  # fmt: skip
    for needle, body in cases.items():
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == 400, (needle, r.text)
        err = r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
        assert needle in err["error"]["message"], (needle, err)
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = httpx.post(url, content=b"\xbb{}", headers={"content-type": "application/json"}, timeout=60)  # not UTF-8
    assert r.status_code == 400 and r.json()["type"] == "error", r.text  # found by the fuzz: was a 500
    # Images reach the chat service, which refuses them on a text-only model, still in this shape.
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    r = httpx.post(url, json={"max_tokens": 8, "messages": [{"role": "user", "content": [image]}]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    # The rest of the server keeps OpenAI's envelope.
    r = httpx.post(f"{live.url}/v1/chat/completions", json={"messages": ASK, "temperature": 5}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_image_blocks_become_image_parts() -> None:
    body = MessagesRequest.model_validate({
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare these."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ]}],
    })  # fmt: skip
    [message] = to_chat(body).messages
    assert message.has_images() and isinstance(message.content, list)
    urls = [p.image_url for p in message.content if isinstance(p, ImagePart)]
    assert urls == ["data:image/png;base64,AAAA", "https://example.com/cat.jpg"]


def test_conversation_becomes_a_chat_request() -> None:
    body = MessagesRequest.model_validate({
        "max_tokens": 8, "top_k": 5,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}],
        "tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            *PARIS,
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                 "content": [{"type": "text", "text": "service down"}]},
                {"type": "text", "text": "Try again."},
            ]},
        ],
    })  # fmt: skip
    chat = to_chat(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "user"]
    assert chat.messages[0].content == "Be brief.\nUse metric units."
    [call] = chat.messages[2].tool_calls or []
    assert call == {"id": "toolu_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    assert chat.messages[3].tool_call_id == "toolu_1" and chat.messages[3].content == "Error: service down"
    function = {"name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["input_schema"]}
    assert chat.tools == [{"type": "function", "function": function}]
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False
    assert (chat.max_tokens, chat.stop, chat.top_k, chat.top_p, chat.temperature) == (8, None, 5, 1.0, 1.0)
