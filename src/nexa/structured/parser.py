"""Reading the answer: the constrained output, as it arrives, split into text or tool calls."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from nexa.structured.plan import Plan

_HEADER = re.compile(r'\s*<tool_call>\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')
_TRAILER = re.compile(r"\s*\}\s*</tool_call>")


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


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class CallParser:
    """Splits the constrained output, as it arrives, into plain text or calls.

    The grammar makes the first character decide: "<" starts calls, anything else is text.
    Arguments are passed on as written, so streamed pieces join into exactly the
    non-streamed `arguments`.
    """

    def __init__(self, calls_only: bool):
        self.mode: str | None = "calls" if calls_only else None
        self.calls: list[ToolCall] = []
        self._buf = ""
        self._pos = 0
        self._state = "header"
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> CallEvents:
        ev = CallEvents()
        if self.mode is None and text:
            self.mode = "calls" if text.startswith("<") else "text"
        if self.mode == "text":
            ev.text = text
            return ev
        self._buf += text
        self._scan(ev)
        return ev

    @property
    def complete_calls(self) -> list[ToolCall]:
        return [c for c in self.calls if c.complete]

    def _scan(self, ev: CallEvents) -> None:
        while True:
            if self._state == "header":
                m = _HEADER.match(self._buf, self._pos)
                if not m:
                    return
                call = ToolCall(new_call_id(), m.group(1))
                self.calls.append(call)
                ev.calls.append((len(self.calls) - 1, call, ""))
                self._pos, self._state = m.end(), "arguments"
                self._depth, self._in_string, self._escaped = 0, False, False
            elif self._state == "arguments":
                if not self.calls[-1].arguments:
                    # The header may have matched before the blank that follows `"arguments":`
                    # arrived; skip it so streamed and whole arguments are the same text.
                    while self._pos < len(self._buf) and self._buf[self._pos].isspace():
                        self._pos += 1
                start, done = self._pos, False
                while self._pos < len(self._buf) and not done:
                    done = self._step(self._buf[self._pos])
                    self._pos += 1
                piece = self._buf[start : self._pos]
                if piece:
                    self.calls[-1].arguments += piece
                    ev.calls.append((len(self.calls) - 1, None, piece))
                if not done:
                    return
                self._state = "trailer"
            else:
                m = _TRAILER.match(self._buf, self._pos)
                if not m:
                    return
                self.calls[-1].complete = True
                self._pos, self._state = m.end(), "header"
                self._buf, self._pos = self._buf[self._pos :], 0

    def _step(self, ch: str) -> bool:
        """One character of the arguments; True when their JSON object has closed."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            return self._depth == 0
        return False


def new_parser(plan: Plan) -> CallParser:
    """A parser for this plan's answer."""
    return CallParser(calls_only=plan.choice in ("required", "named"))
