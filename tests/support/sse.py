"""Reading server-sent event streams as OpenAI-style servers write them: `data: <json>` events
ended by a blank line, closed by `data: [DONE]`. One parser for whole bodies (checks the framing)
and one for lines as they arrive (for timing, or for leaving a stream half-read)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

DONE = "[DONE]"


def sse_payloads(raw: str) -> list[str]:
    """The data payloads of a whole event stream body, `[DONE]` included, asserting that every
    event is a `data: ` event and that the body ends with a complete one."""
    assert raw.endswith("\n\n"), raw[-200:]
    payloads = []
    for event in raw.split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        payloads.append(event[len("data: ") :])
    return payloads


def sse_chunks(raw: str) -> list[dict[str, Any]]:
    """The JSON chunks of a whole event stream body, which must end with `[DONE]`."""
    payloads = sse_payloads(raw)
    assert payloads and payloads[-1] == DONE, payloads[-3:]
    return [json.loads(p) for p in payloads[:-1]]


def iter_chunks(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """JSON chunks from a stream's lines (httpx's `iter_lines()`), as they arrive, until
    `[DONE]`. Other lines (blank separators, comments, `event:`) are skipped, so it reads
    llama.cpp's and llama-cpp-python's servers too."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == DONE:
            return
        yield json.loads(data)


def delta_text(chunk: dict[str, Any]) -> str:
    """The text a chat (`delta.content`) or completion (`text`) chunk adds, over its choices."""
    parts = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        parts.append((delta.get("content") if delta is not None else choice.get("text")) or "")
    return "".join(parts)
