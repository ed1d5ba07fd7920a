"""POST /v1/responses: OpenAI's Responses API, translated to and from the chat service.

The request becomes a ChatRequest (instructions and input items -> messages, function tools
-> chat tools, `text.format` -> `response_format`); nexa.server.services.chat answers it with
the same templates, tool parsing and grammars as /v1/chat/completions, so a forced call or a
JSON schema holds here too; its chat.completion becomes a `response` (and its chunks the typed
events of nexa.server.services.responses_stream). Errors the chat path raises are renamed to
this API's fields (`max_tokens` -> `max_output_tokens`, `messages[2]` -> `input[1]`, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from nexa.errors import InvalidRequest, NexaError
from nexa.schemas.common import Usage, now
from nexa.schemas.responses import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    Status,
    StreamEvent,
)
from nexa.schemas.text import ChatCompletion, ChatMessage, ChatRequest, ImagePart, ImageUrl, ResponseFormat, TextPart
from nexa.server.services import chat
from nexa.server.services.responses_stream import item_id, item_status, stream

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
# Where each chat message came from: an index into `input`, or "instructions" / "input" (a string input).
Origins = list[int | str]


async def create(request: Request, body: ResponsesRequest) -> ResponseObject | AsyncIterator[StreamEvent]:
    body.refuse_unsupported()
    chat_body, origins = to_chat(body)
    try:
        answer = await chat.chat(request, chat_body)
    except NexaError as exc:
        exc.message, exc.param = _rename(exc.message, origins), _rename_param(exc.param, origins)
        raise
    reply = Reply(item_id("resp"), now(), body, chat_body)
    return reply.whole(answer) if isinstance(answer, ChatCompletion) else stream(answer, reply)


# ----------------------------------------------------------------------------- request -> chat


def to_chat(body: ResponsesRequest) -> tuple[ChatRequest, Origins]:
    messages: list[ChatMessage] = []
    origins: Origins = []
    if body.instructions is not None:
        messages.append(ChatMessage(role="system", content=body.instructions))
        origins.append("instructions")
    if isinstance(body.input, str):
        messages.append(ChatMessage(role="user", content=body.input))
        origins.append("input")
    else:
        for i, item in enumerate(body.input):
            after_call = i > 0 and body.input[i - 1].get("type") == "function_call"
            message = _message(item, f"input[{i}]", messages[-1] if after_call else None)
            if message is not None:
                messages.append(message)
                origins.append(i)
    if not messages:
        raise InvalidRequest("input must hold at least one item.", param="input")
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "stream": body.stream,
        "stream_options": {"include_usage": True},  # the usage of response.completed
        "tools": _tools(body.tools),
        "tool_choice": _tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _format(body.text.format if body.text else None),
    }
    for ours, theirs in (("temperature", body.temperature), ("top_p", body.top_p)):
        if theirs is not None:  # unset: the chat endpoint's defaults
            fields[ours] = theirs
    if "max_output_tokens" in body.model_fields_set:  # null, as chat's max_tokens null: until the context is full
        fields["max_tokens"] = body.max_output_tokens
    return ChatRequest.model_validate(fields), origins


def _message(item: dict[str, Any], at: str, calls: ChatMessage | None) -> ChatMessage | None:
    """The chat message of one input item; None where a function_call joins the previous call's
    message (`calls`): a turn's parallel calls are one assistant message in chat."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in MESSAGE_ROLES:
            raise InvalidRequest(f"{at}.role must be one of {', '.join(MESSAGE_ROLES)}, got {role!r}.",
                                 param=f"{at}.role")
        return ChatMessage.model_validate({"role": role, "content": _content(item.get("content"), f"{at}.content")})
    if kind == "function_call":
        call = {"id": _text(item, "call_id", at), "type": "function",
                "function": {"name": _text(item, "name", at), "arguments": _text(item, "arguments", at)}}
        if calls is not None and calls.tool_calls is not None:
            calls.tool_calls.append(call)
            return None
        return ChatMessage(role="assistant", content=None, tool_calls=[call])
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):  # content parts: chat's tool results are text alone
            parts = _content(output, f"{at}.output")
            if any(isinstance(p, ImagePart) for p in parts):
                raise InvalidRequest(f"{at}.output: images in a function result are not supported.",
                                     param=f"{at}.output")
            output = "\n".join(p.text for p in parts if isinstance(p, TextPart))
        if not isinstance(output, str):
            raise InvalidRequest(f"{at}.output must be a string.", param=f"{at}.output")
        return ChatMessage(role="tool", content=output, tool_call_id=_text(item, "call_id", at))
    raise InvalidRequest(
        f"{at}.type {kind!r} is not supported: input items are messages, function_call and "
        "function_call_output (this server is stateless and runs function tools only).",
        param=f"{at}.type",
    )


def _content(raw: Any, at: str) -> str | list[TextPart | ImagePart]:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise InvalidRequest(f"{at} must be a string or a list of content parts.", param=at)
    parts: list[TextPart | ImagePart] = []
    for j, part in enumerate(raw):
        here = f"{at}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            parts.append(TextPart(type="text", text=_text(part, "text", here)))
        elif kind == "refusal":
            parts.append(TextPart(type="text", text=_text(part, "refusal", here)))
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidRequest(
                    f"{here}.image_url is required: send the image as a data URL or an http(s) URL "
                    "(file_id needs OpenAI's Files API, which this server does not have).",
                    param=f"{here}.image_url",
                )
            parts.append(ImagePart(type="image_url", image_url=ImageUrl(url=url, detail=part.get("detail"))))
        else:
            raise InvalidRequest(
                f"{here}.type {kind!r} is not supported: content parts are input_text, input_image and output_text.",
                param=f"{here}.type",
            )
    return parts


def _text(item: dict[str, Any], key: str, at: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{at}.{key} must be a string.", param=f"{at}.{key}")
    return value


def _tools(raw: list[Any] | None) -> list[Any] | None:
    """Responses' flat function tools as chat tools; the chat plan checks names and schemas."""
    if raw is None:
        return None
    out = []
    for i, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise InvalidRequest(
                f"tools[{i}].type {kind!r} is not supported: only function tools are (hosted tools such as "
                "web_search or file_search run on OpenAI's side).",
                param=f"tools[{i}].type",
            )
        out.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    return out


def _tool_choice(raw: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if not isinstance(raw, dict):
        return raw
    if raw.get("type") != "function":
        raise InvalidRequest(
            f"tool_choice of type {raw.get('type')!r} is not supported: use 'auto', 'none', 'required' "
            'or {"type": "function", "name": ...}.',
            param="tool_choice",
        )
    return {"type": "function", "function": {"name": raw.get("name")}}


def _format(fmt: dict[str, Any] | None) -> ResponseFormat | None:
    kind = fmt.get("type") if fmt is not None else "text"
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat.model_validate({"type": "json_object"})
    if kind == "json_schema":
        # The name is always passed on, so a missing schema is refused rather than read as the schema.
        spec: dict[str, Any] = {"name": fmt.get("name") or "response"}
        spec.update({k: fmt[k] for k in ("schema", "strict") if k in fmt})
        return ResponseFormat.model_validate({"type": "json_schema", "json_schema": spec})
    raise InvalidRequest(
        f"text.format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}.", param="text.format.type"
    )


# Chat's field names in the chat path's errors, and this API's names for them, in this order.
_RENAMES = (
    (re.compile(r"\bresponse_format\.(json_schema\.)?schema\b"), "text.format.schema"),
    (re.compile(r"\bresponse_format(\.json_schema)?\b"), "text.format"),
    (re.compile(r"\b(tools\[\d+\])\.function\b"), r"\1"),
    (re.compile(r"\bmax_tokens\b"), "max_output_tokens"),
    (re.compile(r"\.tool_call_id\b"), ".call_id"),
    (re.compile(re.escape('{"type": "function", "function": {"name": ...}}')), '{"type": "function", "name": ...}'),
)
_MESSAGE = re.compile(r"\bmessages\[(\d+)\](?:\.tool_calls\[(\d+)\](?:\.function)?)?")


def _rename(text: str, origins: Origins) -> str:
    def origin(m: re.Match[str]) -> str:
        i = int(m[1])
        where = origins[i] if i < len(origins) else None
        if isinstance(where, int):  # a merged call: tool_calls[j] is the j-th function_call item from there
            return f"input[{where + int(m[2] or 0)}]"
        return where or m[0]

    text = _MESSAGE.sub(origin, text)
    for pattern, name in _RENAMES:
        text = pattern.sub(name, text)
    return text


def _rename_param(param: str | None, origins: Origins) -> str | None:
    if param is None:
        return None
    return "input" if param == "messages" else _rename(param, origins)


# ----------------------------------------------------------------------------- chat -> response


@dataclass(frozen=True)
class Reply:
    """What every `response` object of one request shares: its id, time and settings as applied."""

    id: str
    created_at: int
    body: ResponsesRequest
    chat: ChatRequest

    def response(
        self, model: str, output: list[OutputItem], finish: str | None, usage: Usage | None
    ) -> ResponseObject:
        """The response so far (`finish` None: still being written) or finished."""
        body, chat_body = self.body, self.chat
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status="in_progress" if finish is None else item_status(finish),
            error=None,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if finish == "length" else None,
            instructions=body.instructions,
            max_output_tokens=chat_body.max_tokens,
            model=model,
            output=output,
            parallel_tool_calls=body.parallel_tool_calls,
            previous_response_id=None,
            temperature=chat_body.temperature,
            top_p=chat_body.top_p,
            text={"format": (body.text.format if body.text else None) or {"type": "text"}},
            tool_choice=body.tool_choice or "auto",
            tools=body.tools or [],
            metadata=body.metadata or {},
            usage=_usage(usage) if usage is not None else None,
        )

    def whole(self, answer: ChatCompletion) -> ResponseObject:
        choice = answer.choices[0]
        message, status = choice.message, item_status(choice.finish_reason)
        output: list[OutputItem]
        if message.tool_calls:
            output = [  # the last may have been cut by max_output_tokens
                FunctionCallItem(id=item_id("fc"), status=_call_status(call.function.arguments), call_id=call.id,
                                 name=call.function.name, arguments=call.function.arguments)
                for call in message.tool_calls
            ]
        else:
            text = OutputText(text=message.content or "")
            output = [OutputMessage(id=item_id("msg"), status=status, content=[text])]
        return self.response(answer.model, output, choice.finish_reason, answer.usage)


def _call_status(arguments: str) -> Status:
    try:
        json.loads(arguments)
    except json.JSONDecodeError:
        return "incomplete"
    return "completed"


def _usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(
            cached_tokens=usage.prompt_tokens_details.cached_tokens, cache_write_tokens=0
        ),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=usage.total_tokens,
    )
