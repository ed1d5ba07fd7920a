"""Request, answer and stream events of OpenAI's Responses API (POST /v1/responses).

The server is stateless (OpenAI's `store: false`): every request carries the whole
conversation in `input`. Input items, tools and `text.format` stay loose here, like the chat
tools: nexa.server.services.responses checks them while turning the request into a chat
request, so a malformed item is a 400 naming `input[i]...` rather than a 422 about a union.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from nexa.errors import InvalidRequest
from nexa.schemas.common import RequestModel, ResponseModel


class TextConfig(RequestModel):
    format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    verbosity: str | None = None  # a hint for reasoning models; nothing to do here


class ResponsesRequest(RequestModel):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None  # unset: the chat default (128); null: until the context is full
    temperature: float | None = None  # None: the server's chat defaults (as /v1/chat/completions)
    top_p: float | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    stream: bool = False
    store: bool | None = None  # accepted either way: nothing is ever stored
    metadata: dict[str, str] | None = None
    # Features this server does not have: each is a 400 naming it (see `refuse_unsupported`).
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    prompt: Any = None
    truncation: str | None = None
    top_logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        stored = "this server keeps no responses (store is always false): send the whole conversation in `input`."
        if self.previous_response_id is not None:
            raise InvalidRequest(f"previous_response_id is not supported: {stored}", param="previous_response_id")
        if self.conversation is not None:
            raise InvalidRequest(f"conversation is not supported: {stored}", param="conversation")
        if self.prompt is not None:
            raise InvalidRequest("Stored prompt templates (prompt) are not supported.", param="prompt")
        if self.background:
            raise InvalidRequest("background responses are not supported: send the request without it.",
                                 param="background")
        if self.reasoning and any(v is not None for v in self.reasoning.values()):
            raise InvalidRequest("reasoning options are not supported: the models served here do not reason "
                                 "in a separate channel.", param="reasoning")
        if self.include:
            raise InvalidRequest(f"include is not supported (got {self.include!r}).", param="include")
        if self.truncation not in (None, "disabled"):
            raise InvalidRequest("truncation 'auto' is not supported: an input longer than the context is a 400.",
                                 param="truncation")
        if self.top_logprobs:
            raise InvalidRequest("top_logprobs is not supported on /v1/responses; /v1/chat/completions has logprobs.",
                                 param="top_logprobs")


# ----------------------------------------------------------------------------- the answer


class InputTokensDetails(ResponseModel):
    cached_tokens: int  # prompt tokens the engine's prompt cache already held
    cache_write_tokens: int  # always 0: OpenAI's explicit cache writes have no counterpart here


class OutputTokensDetails(ResponseModel):
    reasoning_tokens: int


class ResponseUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


Status = Literal["in_progress", "completed", "incomplete"]


class OutputText(ResponseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(ResponseModel):
    id: str
    type: Literal["message"] = "message"
    status: Status
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(ResponseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Status
    call_id: str
    name: str
    arguments: str


OutputItem = Annotated[OutputMessage | FunctionCallItem, Field(discriminator="type")]


class IncompleteDetails(ResponseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(ResponseModel):
    """OpenAI's `response` object; the request's settings are echoed as they were applied."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    error: dict[str, Any] | None  # always null: failures are HTTP errors, or an `error` event mid-stream
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None  # always null: nothing is stored to refer to
    store: bool = False
    background: bool = False
    temperature: float
    top_p: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: Literal["disabled"] = "disabled"
    metadata: dict[str, str]
    usage: ResponseUsage | None


# ----------------------------------------------------------------------------- stream events
# Each is sent as `event: <type>` then `data: <json>`, numbered by `sequence_number` from 0.


class ResponseEvent(ResponseModel):
    type: Literal["response.created", "response.in_progress", "response.completed", "response.incomplete"]
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(ResponseModel):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartEvent(ResponseModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(ResponseModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class TextDoneEvent(ResponseModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ArgumentsDeltaEvent(ResponseModel):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(ResponseModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(ResponseModel):
    """A failure after the stream began (the HTTP status was already sent)."""

    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None


StreamEvent = (
    ResponseEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | ErrorEvent
)
