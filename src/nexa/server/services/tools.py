"""The chat.completion (and its chunks) of an answer that may hold tool calls.

The call parser (nexa.structured.parser) turns the model's constrained output into calls;
this shapes them as OpenAI's `tool_calls` (and the legacy `function_call` where the plan
asks for it), whole or streamed, for chat with tools and /v1/function-calling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nexa.engines.base import Finish, TextDelta
from nexa.schemas.text import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Delta,
    FunctionDelta,
    ToolCall,
    ToolCallDelta,
)
from nexa.server.services.generation import ChatReply, Collected, chat_logprobs
from nexa.structured.parser import CallParser, new_parser
from nexa.structured.plan import Plan


def finish_reason(plan: Plan, parser: CallParser, finish: Finish) -> str:
    if parser.complete_calls and finish.reason == "stop":
        return "function_call" if plan.functions_api else "tool_calls"
    return finish.reason


def response(plan: Plan, out: Collected, reply: ChatReply, logprobs: bool) -> ChatCompletion:
    """A chat.completion whose message holds the calls (or text, where the model chose text).
    A call cut by max_tokens is there as far as it was written, with finish_reason "length",
    as the streamed chunks gave it (and as OpenAI and vLLM do): never our call markup as text."""
    assert out.finish is not None
    parser = new_parser(plan)
    parser.feed(out.text)
    calls = parser.complete_calls if out.finish.reason == "stop" else parser.calls
    message = AssistantMessage(content="" if parser.mode == "calls" else out.text)
    if calls:
        tool_calls = [ToolCall.model_validate(c.as_openai()) for c in calls]
        legacy: dict[str, Any] = {"function_call": tool_calls[0].function} if plan.function_call_field else {}
        message = AssistantMessage(content=None, tool_calls=tool_calls, **legacy)
    return reply.completion(message, out, finish_reason(plan, parser, out.finish), logprobs)


async def stream(
    plan: Plan, items: AsyncIterator[TextDelta | Finish], reply: ChatReply, include_usage: bool, logprobs: bool
) -> AsyncIterator[ChatCompletionChunk]:
    """chat.completion.chunk events: text as `content`, calls as OpenAI `delta.tool_calls`."""
    parser = new_parser(plan)
    started = False
    async for item in items:
        if isinstance(item, Finish):
            if not started:
                yield reply.chunk(Delta(role="assistant", content=""))
            yield reply.chunk(Delta(), None, finish_reason(plan, parser, item))
            if include_usage:
                yield reply.usage_chunk(item)
            return
        ev = parser.feed(item.text)
        if ev.text:
            # The first event names the role; a key left out stays off the wire (see ResponseModel).
            first: dict[str, Any] = {} if started else {"role": "assistant"}
            started = True
            lp = chat_logprobs(item.logprobs) if logprobs and isinstance(item, TextDelta) else None
            yield reply.chunk(Delta(**first, content=ev.text), lp)
        for index, call, piece in ev.calls:
            if call is not None:
                tool = ToolCallDelta(
                    index=index, id=call.id, type="function", function=FunctionDelta(name=call.name, arguments="")
                )
                legacy = FunctionDelta(name=call.name, arguments="")
            else:
                tool = ToolCallDelta(index=index, function=FunctionDelta(arguments=piece))
                legacy = FunctionDelta(arguments=piece)
            fields: dict[str, Any] = {} if started else {"role": "assistant", "content": None}
            started = True
            if plan.function_call_field and index == 0:
                fields["function_call"] = legacy
            yield reply.chunk(Delta(**fields, tool_calls=[tool]))
