"""Request of the seed's /v1/function-calling, and the plain shapes of tools and calls.

The body is a chat request (messages, tools, tool_choice, sampling fields of both APIs);
tools and tool_choice stay loose dicts here and are checked by nexa.server.tools, so a
malformed tool is a 400 that names the field rather than a 422 about a union type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from nexa.schemas.text import ChatRequest


class FunctionCallingRequest(ChatRequest):
    """SERVER.md's body: `messages`, `tools`, `tool_choice` ("auto" by default)."""

    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = Field("auto")
    parallel_tool_calls: bool = False  # one call, as the seed answered; true allows several


@dataclass(frozen=True)
class Tool:
    """One callable function, checked."""

    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def as_prompt(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out


@dataclass
class ToolCall:
    """A call parsed from the model's output; `arguments` is its JSON text as written."""

    id: str
    name: str
    arguments: str = ""
    complete: bool = False

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class CallEvents:
    """What one piece of output adds: plain text, or call events in order: (index, the call
    when it has just been named else None, new argument text)."""

    text: str = ""
    calls: list[tuple[int, ToolCall | None, str]] = field(default_factory=list)
