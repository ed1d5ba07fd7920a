"""A message posted to a worker from a finalizer that runs in the middle of another send, on the
same thread (the garbage collector freeing an abandoned stream while a call is pickled), is sent
after that one: before, the second post waited on the first's lock, forever."""

from __future__ import annotations

import threading
from typing import Any

from nexa.workers.remote import RemoteEngine


class Conn:
    def __init__(self, engine: RemoteEngine):
        self.engine = engine
        self.sent: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
        if message[0] == "call":  # as if a finalizer ran while this call was being pickled
            assert self.engine._post(("cancel", 7))
        self.sent.append(message)


def test_a_post_from_a_finalizer_mid_send_goes_after_it() -> None:
    engine = RemoteEngine.__new__(RemoteEngine)
    engine._send_lock, engine._sending, engine._deferred = threading.RLock(), False, []
    engine._conn = conn = Conn(engine)  # type: ignore[assignment]
    done = threading.Event()

    def post() -> None:
        engine._post(("call", 1, "tokenize", ("hi",), {}))
        done.set()

    threading.Thread(target=post, daemon=True).start()
    assert done.wait(5), "the nested post deadlocked"
    assert conn.sent == [("call", 1, "tokenize", ("hi",), {}), ("cancel", 7)]
    engine._post(("release", 3))  # and the next post goes out as usual
    assert conn.sent[-1] == ("release", 3)
