"""The Responses stream written from chat chunks, without a model: the order of items and
events where text, several calls, an empty answer, a cut call or a failure come from the
chat service (test_responses_api.py runs the real thing on SmolLM2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from nexa.errors import Overloaded
from nexa.schemas.common import PromptTokensDetails, Usage
from nexa.schemas.responses import ResponsesRequest
from nexa.schemas.text import ChatCompletionChunk, ChunkChoice, Delta, FunctionDelta, ToolCallDelta
from nexa.server.services.responses import Reply, to_chat
from nexa.server.services.responses_stream import stream

USAGE = Usage(prompt_tokens=7, completion_tokens=5, total_tokens=12,
              prompt_tokens_details=PromptTokensDetails(cached_tokens=2))


def chunk(delta: Delta | None = None, finish: str | None = None, usage: Usage | None = None) -> ChatCompletionChunk:
    choices = [] if delta is None else [ChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish)]
    return ChatCompletionChunk(id="chatcmpl-1", created=1, model="tiny", choices=choices, usage=usage)


def named(index: int, call_id: str, name: str) -> Delta:
    return Delta(tool_calls=[ToolCallDelta(index=index, id=call_id, type="function",
                                           function=FunctionDelta(name=name, arguments=""))])


def args(index: int, text: str) -> Delta:
    return Delta(tool_calls=[ToolCallDelta(index=index, function=FunctionDelta(arguments=text))])


def run(chunks: list[ChatCompletionChunk | Exception]) -> list[dict[str, Any]]:
    body = ResponsesRequest(input="Hi")
    reply = Reply("resp_1", 1, body, to_chat(body)[0])

    async def source() -> AsyncIterator[ChatCompletionChunk]:
        for c in chunks:
            if isinstance(c, Exception):
                raise c
            yield c

    async def collect() -> list[dict[str, Any]]:
        return [e.model_dump(mode="json") async for e in stream(source(), reply)]

    events = asyncio.run(collect())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_text_then_two_calls():
    events = run([
        chunk(Delta(role="assistant", content="")),
        chunk(Delta(content="Let me")), chunk(Delta(content=" check.")),
        chunk(named(0, "call_a", "f")), chunk(args(0, '{"x": ')), chunk(args(0, "1}")),
        chunk(named(1, "call_b", "g")), chunk(args(1, "{}")),
        chunk(Delta(), "tool_calls"), chunk(usage=USAGE),
    ])
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None), ("response.in_progress", None),
        ("response.output_item.added", 0), ("response.content_part.added", 0),
        ("response.output_text.delta", 0), ("response.output_text.delta", 0),
        ("response.output_text.done", 0), ("response.content_part.done", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1), ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1), ("response.output_item.done", 1),
        ("response.output_item.added", 2), ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2), ("response.output_item.done", 2),
        ("response.completed", None),
    ]
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["model"] == "tiny"
    assert [(i["type"], i["status"]) for i in done["output"]] == [
        ("message", "completed"), ("function_call", "completed"), ("function_call", "completed")
    ]
    assert done["output"][0]["content"][0]["text"] == "Let me check."
    assert [(i["call_id"], i["name"], i["arguments"]) for i in done["output"][1:]] == [
        ("call_a", "f", '{"x": 1}'), ("call_b", "g", "{}")
    ]
    assert done["usage"] == {
        "input_tokens": 7, "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
        "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12,
    }


def test_an_empty_answer_is_an_empty_message():
    events = run([chunk(Delta(role="assistant", content="")), chunk(Delta(), "stop"), chunk(usage=USAGE)])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""


def test_a_call_cut_by_the_limit_is_incomplete():
    events = run([chunk(named(0, "call_a", "f")), chunk(args(0, '{"x": ')), chunk(Delta(), "length"),
                  chunk(usage=USAGE)])
    done = events[-1]
    assert done["type"] == "response.incomplete"
    assert done["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert done["response"]["output"][0]["status"] == "incomplete"


def test_a_failure_mid_stream_is_an_error_event():
    events = run([chunk(Delta(content="Hel")), Overloaded("busy", code="queue_full")])
    assert events[-1] == {"type": "error", "sequence_number": len(events) - 1, "code": "queue_full",
                          "message": "busy", "param": None}
    assert "response.completed" not in [e["type"] for e in events]
