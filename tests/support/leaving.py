"""For the tests that a client leaving a stream stops the generation in the model's worker."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest


def count_generation(monkeypatch: pytest.MonkeyPatch, engine: Any) -> tuple[list[int], threading.Event]:
    """Wrap `engine.generate`: one entry per item that reaches this process, and an event set
    when the HTTP layer closes the stream."""
    produced: list[int] = []
    closed = threading.Event()
    real = engine.generate

    def counting(prompt: Any, params: Any, cancel: threading.Event) -> Any:
        try:
            for item in real(prompt, params, cancel):
                produced.append(1)
                yield item
        finally:
            closed.set()

    monkeypatch.setattr(engine, "generate", counting)
    return produced, closed


def decoding_stops(engine: Any, timeout_s: float = 30) -> bool:
    """Whether the engine (a worker's, asked over its pipe) has no sequence running within the time."""
    deadline = time.monotonic() + timeout_s
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(engine.stats().running == 0)
