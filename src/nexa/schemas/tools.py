"""Request of the original Nexa server's /v1/function-calling.

The body is a chat request (messages, tools, tool_choice, sampling fields of both APIs);
tools and tool_choice stay loose dicts here and are checked by nexa.structured.plan, so a
malformed tool is a 400 that names the field rather than a 422 about a union type.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nexa.schemas.text import ChatRequest


class FunctionCallingRequest(ChatRequest):
    """the Nexa server API's body: `messages`, `tools`, `tool_choice` ("auto" by default)."""

    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = Field("auto")
    parallel_tool_calls: bool = False  # one call, as the original Nexa server answered; true allows several
