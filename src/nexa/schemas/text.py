"""Requests and responses of /v1/completions and /v1/chat/completions, with both APIs' field names.

Nexa's names (`max_new_tokens`, `stop_words`) and OpenAI's (`max_tokens`, `stop`) are
accepted side by side. Out-of-range values become a 400 naming the field; a body of the
wrong shape is a 422 (see the error handlers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, PrivateAttr

from nexa.engines.base import SamplingParams
from nexa.errors import InvalidRequest
from nexa.schemas.common import KeepAlive, RequestModel, ResponseModel, Usage

MAX_STOPS = 16


class StreamOptions(BaseModel):
    include_usage: bool = False


_ENGINE = SamplingParams()  # the engines' defaults are the requests' (where an endpoint sets none of its own)


class SamplingFields(RequestModel):
    model: str | None = None
    keep_alive: KeepAlive = None
    max_tokens: int | None = Field(
        _ENGINE.max_tokens, validation_alias=AliasChoices("max_tokens", "max_new_tokens", "max_completion_tokens")
    )
    temperature: float = _ENGINE.temperature
    top_k: int = _ENGINE.top_k
    top_p: float = _ENGINE.top_p
    min_p: float = _ENGINE.min_p
    repeat_penalty: float = _ENGINE.repeat_penalty
    presence_penalty: float = _ENGINE.presence_penalty
    frequency_penalty: float = _ENGINE.frequency_penalty
    seed: int | None = _ENGINE.seed
    stop: str | list[str] | None = Field(None, validation_alias=AliasChoices("stop", "stop_words"))
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None

    def sampling(self, logprobs: int | None) -> SamplingParams:
        """Check ranges (400 with the field's name) and build the engine's parameters."""
        _range("temperature", self.temperature, 0.0, 2.0)
        _range("top_p", self.top_p, 0.0, 1.0)
        _range("min_p", self.min_p, 0.0, 1.0)
        _range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _range("repeat_penalty", self.repeat_penalty, 0.0, 10.0)
        if self.top_k < 0:
            raise InvalidRequest("top_k must be 0 (off) or a positive number of tokens.", param="top_k")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
        if self.n != 1:
            raise InvalidRequest("Only n=1 is supported: send several requests for several answers.", param="n")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise InvalidRequest(f"At most {MAX_STOPS} stop strings are allowed.", param="stop")
        if logprobs is not None and not 0 <= logprobs <= 20:
            raise InvalidRequest("logprobs/top_logprobs must be between 0 and 20.", param="logprobs")
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            stop=[s for s in stops if s],
            logprobs=logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}.", param=name)


class ResponseFormat(BaseModel):
    """OpenAI's response_format; output is constrained to JSON (see nexa.structured.grammars)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None  # {"name": ..., "schema": {...}, "strict": ...}
    schema_: dict[str, Any] | None = Field(None, validation_alias="schema")  # llama.cpp's json_object + schema


class CompletionRequest(SamplingFields):
    # the Nexa server API's defaults for /v1/completions.
    prompt: str | list[str] | list[int]
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    logprobs: int | None = None
    echo: bool = False
    response_format: ResponseFormat | None = None

    def prompt_text(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            if len(p) != 1:
                raise InvalidRequest(
                    "Send one prompt per request (a list of several prompts is not supported).", param="prompt"
                )
            return str(p[0])
        if isinstance(p, list) and not p:
            raise InvalidRequest("prompt must not be empty.", param="prompt")
        return p  # type: ignore[return-value]  # a string, or token ids (a list of strings returned above)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl | str


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart) for p in self.content)

    def as_template_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it: string content, developer -> system."""
        content = self.content
        if isinstance(content, list):
            content = "\n".join(p.text for p in content if isinstance(p, TextPart))
        msg: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                msg[key] = getattr(self, key)
        return msg

    def image_urls(self) -> list[tuple[int, str]]:
        """(index in content, URL) of this message's image parts, in order."""
        if not isinstance(self.content, list):
            return []
        return [
            (i, p.image_url.url if isinstance(p.image_url, ImageUrl) else p.image_url)
            for i, p in enumerate(self.content)
            if isinstance(p, ImagePart)
        ]

    def as_parts_dict(self) -> dict[str, Any]:
        """Like as_template_dict, but list content keeps its parts in order (for vision engines):
        {"type": "text", "text": ...} and {"type": "image_url"}, the image itself sent apart."""
        msg = self.as_template_dict()
        if isinstance(self.content, list):
            msg["content"] = [
                {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image_url"}
                for p in self.content
            ]
        return msg


class ChatRequest(SamplingFields):
    # the Nexa server API's defaults for chat: max_tokens 128, temperature 0.1, top_k 40, top_p 0.95.
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = 0.1
    logprobs: bool = False
    top_logprobs: int | None = None
    # Tools stay loose here: nexa.structured.plan checks them and answers 400 naming the field.
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    functions: list[Any] | None = None  # OpenAI's deprecated form of tools
    function_call: str | dict[str, Any] | None = None  # ... and of tool_choice
    response_format: ResponseFormat | None = None

    def logprob_count(self) -> int | None:
        if not self.logprobs:
            return None  # top_logprobs alone is ignored, as OpenAI and the original did
        return self.top_logprobs or 0


# ----------------------------------------------------------------------------- responses


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseModel):
    content: list[TokenLogprob]
    refusal: str | None


class CompletionLogprobs(ResponseModel):
    """OpenAI's legacy completions layout: parallel lists plus text offsets."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(ResponseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class CompletionChunk(ResponseModel):
    """One event of a streamed completion; the last carries `usage` (and no choices) when asked."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Completion(CompletionChunk):
    """OpenAI's text_completion, plus the original's `result` (the same text)."""

    usage: Usage
    result: str


class FunctionCall(ResponseModel):
    name: str
    arguments: str


class ToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(ResponseModel):
    """`content` is null when the answer is calls; `function_call` is the legacy form of the first."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ChatChoice(ResponseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str


class ChatCompletion(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    # The stop string that ended the answer: not on OpenAI's wire; /v1/messages reports it.
    _stop_sequence: str | None = PrivateAttr(None)


class FunctionDelta(ResponseModel):
    name: str | None = None
    arguments: str


class ToolCallDelta(ResponseModel):
    """A call's first piece names it (id, type, name); later pieces add argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionDelta | None = None


class ChunkChoice(ResponseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(ResponseModel):
    """One event of a streamed chat answer; the last carries `usage` (and no choices) when asked."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    _stop_sequence: str | None = PrivateAttr(None)  # on the usage chunk, as on ChatCompletion
