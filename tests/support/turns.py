"""Hold a model's turn from another thread, with no room to wait: the next request must be a 503."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from nexa.engines.base import Turns


@contextlib.contextmanager
def model_busy(turns: Turns) -> Iterator[None]:
    """While inside, one caller holds `turns` and `max_waiting` is 0; both restored afterwards."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with turns():
            entered.set()
            release.wait(60)

    saved, turns.max_waiting = turns.max_waiting, 0
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(60), "the holder never got its turn"
        yield
    finally:
        release.set()
        holder.join(60)
        turns.max_waiting = saved
