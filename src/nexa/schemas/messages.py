"""Requests and responses of Anthropic's Messages API (/v1/messages and its count_tokens).

Field names and defaults are Anthropic's. Content blocks of a type this server does not serve
(documents, thinking, server tool results...) still parse, as `OtherBlock`, so that the
translation (nexa.server.services.messages) can refuse them with a 400 that names the field
instead of a union error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from nexa.schemas.common import RequestModel, ResponseModel


class TextBlock(RequestModel):
    type: Literal["text"]
    text: str


class Base64Source(RequestModel):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(RequestModel):
    type: Literal["url"]
    url: str


class OtherSource(RequestModel):
    """A source kind this server does not fetch (`file`, `text`...): refused by name."""

    model_config = ConfigDict(extra="allow")
    type: str


def _source_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("base64", "url") else "other"


ImageSource = Annotated[
    Annotated[Base64Source, Tag("base64")] | Annotated[UrlSource, Tag("url")] | Annotated[OtherSource, Tag("other")],
    Discriminator(_source_kind),
]


class ImageBlock(RequestModel):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(RequestModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class OtherBlock(RequestModel):
    """Any block type not served here (document, thinking, server_tool_use...): refused by name."""

    model_config = ConfigDict(extra="allow")
    type: str


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("text", "image", "tool_use", "tool_result") else "other"


def _result_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("text", "image") else "other"


ResultBlock = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")] | Annotated[OtherBlock, Tag("other")],
    Discriminator(_result_kind),
]


class ToolResultBlock(RequestModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultBlock] = ""
    is_error: bool = False


Block = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


class InputMessage(RequestModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolDefinition(RequestModel):
    """A client tool (`type` absent or "custom"); server tools (web_search_..., bash_...) have a
    dated `type` and no input_schema, and are refused by name."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(RequestModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class CountTokensRequest(RequestModel):
    """What decides the prompt: the body of /v1/messages/count_tokens."""

    model: str | None = None
    system: str | list[TextBlock] | None = None
    messages: list[InputMessage] = Field(min_length=1)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    # Features this server lacks; any value but "disabled"/null is a 400 naming the field.
    thinking: dict[str, Any] | None = None
    mcp_servers: list[Any] | None = None
    container: Any = None


class MessagesRequest(CountTokensRequest):
    """The body of /v1/messages. Defaults are Anthropic's: temperature 1, top_p and top_k off."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float = Field(1.0, ge=0.0, le=1.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- responses


class TextContent(ResponseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseContent(ResponseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(ResponseModel):
    input_tokens: int
    output_tokens: int


class Message(ResponseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[TextContent | ToolUseContent]
    model: str
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(ResponseModel):
    input_tokens: int


class AnthropicErrorBody(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error shape, on the /v1/messages routes only (the rest keep OpenAI's)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorBody
