"""The chat.completion (and its chunks) of an answer that may hold tool calls.

The call parser (nexa.structured.parser) turns the model's constrained output into calls;
this shapes them as OpenAI's `tool_calls` (and the legacy `function_call` where the plan
asks for it), whole or streamed, for the chat and function-calling routers.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from nexa.engines.base import Finish, TextDelta
from nexa.server.generation import Collected, chat_chunk, chat_logprobs, finish_usage
from nexa.structured.parser import CallEvents, CallParser, new_parser
from nexa.structured.plan import Plan


async def _prefilled(
    first: CallEvents, items: AsyncIterator[TextDelta | Finish]
) -> AsyncIterator[CallEvents | TextDelta | Finish]:
    """The prefill's events (the call's start, sent before the model writes a token), then the items."""
    if first.calls:
        yield first
    async for item in items:
        yield item


def finish_reason(plan: Plan, parser: CallParser, finish: Finish) -> str:
    if parser.complete_calls and finish.reason == "stop":
        return "function_call" if plan.functions_api else "tool_calls"
    return finish.reason


def chat_response(plan: Plan, out: Collected, cid: str, created: int, model: str, logprobs: bool) -> dict[str, Any]:
    """A chat.completion whose message holds the calls (or text, where the model chose text)."""
    assert out.finish is not None
    parser, _ = new_parser(plan)
    parser.feed(out.text)
    if out.finish.reason == "stop":
        parser.feed(plan.suffix)
    calls = parser.complete_calls
    message: dict[str, Any] = {"role": "assistant", "content": out.text}
    if calls:
        message = {"role": "assistant", "content": None, "tool_calls": [c.as_openai() for c in calls]}
        if plan.function_call_field:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(out.logprobs) if logprobs else None,
                "finish_reason": finish_reason(plan, parser, out.finish),
            }
        ],
        "usage": finish_usage(out.finish),
    }


async def chat_stream(
    plan: Plan,
    items: AsyncIterator[TextDelta | Finish],
    cid: str,
    created: int,
    model: str,
    include_usage: bool,
    logprobs: bool,
) -> AsyncIterator[dict[str, Any]]:
    """chat.completion.chunk events: text as `content`, calls as OpenAI `delta.tool_calls`."""

    chunk = functools.partial(chat_chunk, cid, created, model)
    parser, ev = new_parser(plan)
    started = False
    async for item in _prefilled(ev, items):
        if isinstance(item, Finish):
            if item.reason == "stop":
                parser.feed(plan.suffix)
            if not started:
                yield chunk({"role": "assistant", "content": ""})
            yield chunk({}, None, finish_reason(plan, parser, item))
            if include_usage:
                yield {**chunk({}), "choices": [], "usage": finish_usage(item)}
            return
        ev = item if isinstance(item, CallEvents) else parser.feed(item.text)
        if ev.text:
            delta: dict[str, Any] = {"content": ev.text}
            if not started:
                delta = {"role": "assistant", **delta}
                started = True
            yield chunk(delta, chat_logprobs(item.logprobs) if logprobs and isinstance(item, TextDelta) else None)
        for index, call, piece in ev.calls:
            if call is not None:
                tool_delta: dict[str, Any] = {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                legacy = {"name": call.name, "arguments": ""}
            else:
                tool_delta = {"index": index, "function": {"arguments": piece}}
                legacy = {"arguments": piece}
            delta = {"tool_calls": [tool_delta]}
            if plan.function_call_field and index == 0:
                delta["function_call"] = legacy
            if not started:
                delta = {"role": "assistant", "content": None, **delta}
                started = True
            yield chunk(delta)
