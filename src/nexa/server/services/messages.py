"""Anthropic's Messages API as a translation over the chat service.

A /v1/messages body becomes a ChatRequest (system, text, image, tool_use and tool_result
blocks, tools and tool_choice), nexa.server.services.chat answers it (template, grammar-held
tool calls and all), and its chat.completion or chunks become Anthropic's message or its
event stream. Features this server lacks are 400s naming the field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Request

from nexa.errors import InvalidRequest, NexaError
from nexa.schemas.messages import (
    AnthropicError,
    AnthropicErrorBody,
    Base64Source,
    CountTokensRequest,
    ImageBlock,
    InputMessage,
    Message,
    MessagesRequest,
    MessageUsage,
    TextBlock,
    TextContent,
    TokenCount,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseContent,
    UrlSource,
)
from nexa.schemas.text import ChatCompletion, ChatCompletionChunk, ChatMessage, ChatRequest, ImagePart, TextPart
from nexa.server.services import chat
from nexa.structured.plan import TOOL_NAME

log = logging.getLogger("nexa.server")

Event = tuple[str, dict[str, Any]]  # (event name, its data)
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


async def create(request: Request, body: MessagesRequest) -> Message | AsyncIterator[bytes]:
    """The message, or with `stream: true` its server-sent events (already framed)."""
    answer = await chat.chat(request, to_chat(body))
    stops = body.stop_sequences or []
    if isinstance(answer, ChatCompletion):
        return to_message(answer, stops)
    return event_stream(_events(answer, stops))


async def count_tokens(request: Request, body: CountTokensRequest) -> TokenCount:
    return TokenCount(input_tokens=await chat.prompt_tokens(request, to_chat(body), "/v1/messages/count_tokens"))


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return AnthropicError(error=AnthropicErrorBody(type=kind, message=message)).model_dump()


# ----------------------------------------------------------------------------- request


def to_chat(body: CountTokensRequest) -> ChatRequest:
    _refuse_unsupported(body)
    messages: list[ChatMessage] = []
    system = body.system if isinstance(body.system, str) else "\n".join(b.text for b in body.system or [])
    if system:
        messages.append(ChatMessage(role="system", content=system))
    for i, m in enumerate(body.messages):
        messages.extend(_user(m, i) if m.role == "user" else [_assistant(m, i)])
    if body.messages[-1].role == "assistant":
        raise InvalidRequest(
            f"messages[{len(body.messages) - 1}]: a final assistant message (prefill) is not supported; "
            "end the conversation with a user message."
        )
    fields: dict[str, Any] = {}
    if body.tools is not None:
        fields["tools"] = [_tool(t, i) for i, t in enumerate(body.tools)]
    if body.tool_choice is not None:
        choice = body.tool_choice
        if choice.type == "tool" and not choice.name:
            raise InvalidRequest("tool_choice.name is required when tool_choice.type is 'tool'.", param="tool_choice")
        if choice.type in ("any", "tool") and not body.tools:
            raise InvalidRequest(f"tool_choice {choice.type!r} needs tools to choose from.", param="tool_choice")
        fields["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.type == "tool" else _CHOICES[choice.type]
        )
        fields["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    if isinstance(body, MessagesRequest):
        if body.stop_sequences and body.tools and (body.tool_choice is None or body.tool_choice.type != "none"):
            raise InvalidRequest(
                "stop_sequences cannot be combined with tools here: a stop string could cut a tool call short.",
                param="stop_sequences",
            )
        fields.update(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            stop=body.stop_sequences,
            stream=body.stream,
            stream_options={"include_usage": True},  # the usage chunk ends the stream: message_delta's usage
        )
    return ChatRequest(messages=messages, **fields)


def _refuse_unsupported(body: CountTokensRequest) -> None:
    if body.thinking is not None and body.thinking.get("type") != "disabled":
        raise InvalidRequest("thinking is not supported by this server; leave it out.", param="thinking")
    if body.mcp_servers:
        raise InvalidRequest("mcp_servers are not supported by this server.", param="mcp_servers")
    if body.container is not None:
        raise InvalidRequest("container is not supported by this server.", param="container")


def _unsupported_block(kind: str, where: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: content blocks of type {kind!r} are not supported here.", param=where)


def _user(m: InputMessage, i: int) -> list[ChatMessage]:
    """Tool results become tool messages (Anthropic puts them first); text and images one user message."""
    if isinstance(m.content, str):
        return [ChatMessage(role="user", content=m.content)]
    results: list[ChatMessage] = []
    parts: list[TextPart | ImagePart] = []
    for j, block in enumerate(m.content):
        where = f"messages[{i}].content[{j}]"
        if isinstance(block, ToolResultBlock):
            results.append(ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=_result_text(block, where)))
        elif isinstance(block, TextBlock):
            parts.append(TextPart(type="text", text=block.text))
        elif isinstance(block, ImageBlock):
            parts.append(ImagePart(type="image_url", image_url=_image_url(block, where)))
        else:
            raise _unsupported_block(block.type, f"{where}.type" if block.type != "tool_use" else where)
    if parts or not results:
        results.append(ChatMessage(role="user", content=parts))
    return results


def _result_text(block: ToolResultBlock, where: str) -> str:
    if isinstance(block.content, str):
        text = block.content
    else:
        for k, part in enumerate(block.content):
            if not isinstance(part, TextBlock):
                raise _unsupported_block(part.type, f"{where}.content[{k}]")
        text = "\n".join(p.text for p in block.content if isinstance(p, TextBlock))
    # The model sees that the call failed, as Anthropic's models are told.
    return f"Error: {text}" if block.is_error else text


def _image_url(block: ImageBlock, where: str) -> str:
    source = block.source
    if isinstance(source, Base64Source):
        return f"data:{source.media_type};base64,{source.data}"
    if isinstance(source, UrlSource):
        return source.url
    raise InvalidRequest(
        f"{where}.source.type {source.type!r} is not supported; send 'base64' or 'url'.", param=f"{where}.source.type"
    )


def _assistant(m: InputMessage, i: int) -> ChatMessage:
    if isinstance(m.content, str):
        return ChatMessage(role="assistant", content=m.content)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(m.content):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        else:
            raise _unsupported_block(block.type, f"messages[{i}].content[{j}]")
    return ChatMessage(role="assistant", content="\n".join(texts), tool_calls=calls or None)


def _tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if tool.type not in (None, "custom"):
        raise InvalidRequest(
            f"{where}.type {tool.type!r}: server tools are not supported; define a client tool with an input_schema.",
            param=f"{where}.type",
        )
    if not TOOL_NAME.match(tool.name):
        raise InvalidRequest(f"{where}.name must be 1-64 letters, digits, '_' or '-'.", param=f"{where}.name")
    schema = tool.input_schema
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise InvalidRequest(
            f"{where}.input_schema is required: a JSON schema of type 'object'.", param=f"{where}.input_schema"
        )
    return {"type": "function", "function": {"name": tool.name, "description": tool.description, "parameters": schema}}


# ----------------------------------------------------------------------------- response


def _stop_reason(finish: str | None, matched: str | None, stops: list[str]) -> tuple[StopReason, str | None]:
    if finish in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    if matched is not None and matched in stops:  # not a chat template's own end marker
        return "stop_sequence", matched
    return "end_turn", None


def _message_id(chat_id: str) -> str:
    return "msg_" + chat_id.rsplit("-", 1)[-1]


def to_message(c: ChatCompletion, stops: list[str]) -> Message:
    choice = c.choices[0]
    content: list[TextContent | ToolUseContent] = []
    if choice.message.content or not choice.message.tool_calls:
        content.append(TextContent(text=choice.message.content or ""))
    for call in choice.message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError:  # a call cut by max_tokens (stop_reason says so): no input to give
            continue
        content.append(ToolUseContent(id=call.id, name=call.function.name, input=arguments))
    if not content:
        content.append(TextContent(text=""))
    reason, sequence = _stop_reason(choice.finish_reason, c._stop_sequence, stops)
    usage = MessageUsage(input_tokens=c.usage.prompt_tokens, output_tokens=c.usage.completion_tokens)
    return Message(
        id=_message_id(c.id), content=content, model=c.model, stop_reason=reason, stop_sequence=sequence, usage=usage
    )


class _Blocks:
    """The content blocks of a streamed message, opened and closed in order, one open at a time."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None  # the open block's type

    def open(self, block: TextContent | ToolUseContent) -> list[Event]:
        events = self.close()
        self.index, self.kind = self.index + 1, block.type
        events.append(("content_block_start", {"type": "content_block_start", "index": self.index,
                                               "content_block": block.model_dump()}))  # fmt: skip
        if self.index == 0:
            events.append(("ping", {"type": "ping"}))  # where Anthropic sends it
        return events

    def close(self) -> list[Event]:
        if self.kind is None:
            return []
        self.kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.index})]


async def _events(chunks: AsyncIterator[ChatCompletionChunk], stops: list[str]) -> AsyncIterator[Event]:
    """Anthropic's event sequence from chat chunks: one content block per run of text or per call."""
    blocks = _Blocks()
    finish: str | None = None
    started = False
    async for chunk in chunks:
        if not started:
            started = True
            # Input tokens are known only once the prompt is read: message_delta carries them.
            opening = Message(
                id=_message_id(chunk.id), content=[], model=chunk.model, stop_reason=None, stop_sequence=None,
                usage=MessageUsage(input_tokens=0, output_tokens=0),
            )  # fmt: skip
            yield "message_start", {"type": "message_start", "message": opening.model_dump()}
        events: list[Event] = []
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                if blocks.kind != "text":
                    events += blocks.open(TextContent(text=""))
                events.append(_block_delta(blocks.index, {"type": "text_delta", "text": delta.content}))
            for call in delta.tool_calls or []:
                if call.id is not None:  # a new call opens its own block
                    events += blocks.open(ToolUseContent(id=call.id, name=call.function.name or "", input={}))
                if call.function.arguments:
                    piece = {"type": "input_json_delta", "partial_json": call.function.arguments}
                    events.append(_block_delta(blocks.index, piece))
            finish = choice.finish_reason or finish
        if chunk.usage is not None:  # the last chunk
            if blocks.index < 0:  # an empty answer keeps its empty text block, as in the whole message
                events += blocks.open(TextContent(text=""))
            events += blocks.close()
            reason, sequence = _stop_reason(finish, chunk._stop_sequence, stops)
            usage = {"input_tokens": chunk.usage.prompt_tokens, "output_tokens": chunk.usage.completion_tokens}
            events.append(("message_delta", {"type": "message_delta", "usage": usage,
                                             "delta": {"stop_reason": reason, "stop_sequence": sequence}}))  # fmt: skip
            events.append(("message_stop", {"type": "message_stop"}))
        for event in events:
            yield event


def _block_delta(index: int, delta: dict[str, Any]) -> Event:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def event_stream(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """`event: NAME` + `data: {json}` per event; an error mid-stream becomes Anthropic's `error` event."""
    try:
        async for name, data in events:
            yield _frame(name, data)
    except NexaError as exc:
        yield _frame("error", error_body(exc.status, exc.message))
    except Exception:
        log.exception("stream failed")
        yield _frame("error", error_body(500, "The server failed while streaming."))
