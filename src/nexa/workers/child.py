"""The model worker: `python -m nexa.workers.child CALLS REPLIES` loads one model and serves its
engine: it reads calls from the socket CALLS and answers on the socket REPLIES, until told to
close or the server goes away. Two sockets, one way each, so that the server can read its end of
REPLIES on its event loop (non-blocking) while it writes calls blocking (see remote.py).

Each call runs in a thread of its own, as it did in the server before workers: engines are
built for concurrent callers (the text scheduler batches them, image and speech engines queue
them), and a long image must not hold up a tokenize call on the same worker.
"""

from __future__ import annotations

import faulthandler
import inspect
import itertools
import logging
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from nexa.channel import END, Stream
from nexa.config import Settings
from nexa.engines import base
from nexa.models.startup import load_in_process
from nexa.models.types import ResolvedModel
from nexa.workers.protocol import FRAME_SIZE, CancelToken, EngineFacts, Ref, RemoteError, stays_in_worker

log = logging.getLogger("nexa.worker")

SMALL = 16384  # replies up to this size go out in one write of their own (see Worker.send)
_PLAIN = (str, int, float, bool, type(None), Path, frozenset, tuple, list, dict)


class Worker:
    def __init__(self, calls: Connection, replies: Connection, engine: base.Engine):
        self.calls = calls
        self.replies = replies
        self.replies_fd = replies.fileno()
        self.engine = engine
        self.send_lock = threading.Lock()
        self.cancels: dict[int, threading.Event] = {}
        self.kept: dict[int, Any] = {}
        self.ids = itertools.count(1)

    def send(self, message: tuple[Any, ...]) -> None:
        # Plain pickle, framed as Connection.send frames it: Connection.send builds a pickler with
        # multiprocessing's reducers (for sockets and descriptors, which no reply carries) per
        # message, and a streamed token is one message: written here in one call.
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        with self.send_lock:
            if len(data) > SMALL:
                self.replies.send_bytes(data)
                return
            frame = FRAME_SIZE.pack(len(data)) + data
            while frame:  # a blocking socket writes it whole, unless a signal cuts in
                frame = frame[os.write(self.replies_fd, frame) :]

    def serve(self) -> None:
        while True:
            try:
                message = self.calls.recv()
            except (EOFError, OSError):  # the server is gone: nothing left to serve
                return
            kind = message[0]
            if kind == "call":
                _, call_id, method, args, kwargs, gather = message
                threading.Thread(target=self.run, args=(call_id, method, args, kwargs, gather), daemon=True).start()
            elif kind == "cancel":
                event = self.cancels.get(message[1])
                if event is not None:
                    event.set()
            elif kind == "release":
                self.kept.pop(message[1], None)
            elif kind == "close":
                return

    def run(self, call_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], gather: bool) -> None:
        cancel = threading.Event()
        self.cancels[call_id] = cancel
        try:
            args = tuple(self.unwrap(a, cancel) for a in args)
            kwargs = {k: self.unwrap(v, cancel) for k, v in kwargs.items()}
            result = getattr(self.engine, method)(*args, **kwargs)
            if isinstance(result, Stream) and result.plain:  # the text scheduler's
                self.send(("stream", call_id))
                result.channel.forward(Forward(self, call_id, gather))
                return
            if isinstance(result, Iterator):
                self.send(("stream", call_id))
                forward = Forward(self, call_id, gather)
                try:
                    for item in result:
                        forward(item)
                        if forward.done:  # the server is gone
                            break
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                forward(END)
            else:
                self.send(("ok", call_id, self.wrap(result)))
        except Exception as exc:
            self.send(("err", call_id, RemoteError.of(exc)))
        self.cancels.pop(call_id, None)

    def unwrap(self, value: Any, cancel: threading.Event) -> Any:
        if isinstance(value, CancelToken):
            return cancel
        if isinstance(value, Ref):
            return self.kept.pop(value.id)
        return value

    def wrap(self, value: Any) -> Any:
        if isinstance(value, tuple):  # e.g. (prompt, stops): keep only the part that cannot travel
            return tuple(self.keep_if_needed(v) for v in value)
        return self.keep_if_needed(value)

    def keep_if_needed(self, value: Any) -> Any:
        if not stays_in_worker(value):
            return value
        ref = Ref(next(self.ids), type(value).__name__)
        self.kept[ref.id] = value
        return ref


class Forward:
    """Sends a stream's items, then its end or error: from the producer's thread as it puts them
    (see Channel.forward), or from the call's own thread iterating the result. With `gather`, the
    text items are joined and sent as one just before whatever comes next (the end, mostly): the
    caller reads the whole answer anyway, and a token then costs no message on either side."""

    def __init__(self, worker: Worker, call_id: int, gather: bool = False):
        self.worker, self.call_id, self.done, self.gather = worker, call_id, False, gather
        self.texts: list[str] = []
        self.logprobs: list[Any] = []

    def __call__(self, item: Any) -> None:
        if self.done:
            return
        if self.gather:
            if type(item) is base.TextDelta:
                self.texts.append(item.text)
                self.logprobs.extend(item.logprobs)
                return
            if self.texts or self.logprobs:
                gathered = base.TextDelta("".join(self.texts), self.logprobs)
                self.texts, self.logprobs = [], []
                self.send(gathered)
                if self.done:
                    return
        self.send(item)

    def send(self, item: Any) -> None:
        if type(item) is base.TextDelta and not item.logprobs:  # a streamed token: the cheapest message, first
            message: tuple[Any, ...] = ("text", self.call_id, item.text)
        elif item is END or isinstance(item, BaseException):
            self.done = True
            self.worker.cancels.pop(self.call_id, None)
            message = ("end", self.call_id) if item is END else ("err", self.call_id, RemoteError.of(item))
        elif isinstance(item, (base.TextDelta, base.Finish)):  # plain data: no need to test that it travels
            message = ("item", self.call_id, item)
        else:
            message = ("item", self.call_id, self.worker.wrap(item))
        try:
            self.worker.send(message)
        except (OSError, ValueError):  # the server is gone; serve() sees it and ends the worker
            self.done = True


def facts(engine: base.Engine) -> EngineFacts:
    """The engine's plain attributes and which of its methods may run in the parent: the
    common ones from engines/base.py that the engine did not override (they only read
    attributes, so answering them here spares a round trip, and keeps require() and the prompt
    size checks off the worker)."""
    kind = type(engine)
    attributes: dict[str, Any] = {}
    methods: set[str] = set()
    local: dict[str, str] = {}
    for name, value in inspect.getmembers(kind):
        if name.startswith("_"):
            continue
        if callable(value) and not isinstance(value, type):
            shared = next((c for c in (base.TextEngine, base.Engine) if getattr(c, name, None) is value), None)
            if shared is not None:
                local[name] = f"{shared.__module__}:{shared.__qualname__}"
            else:
                methods.add(name)
        elif isinstance(value, property):
            current = getattr(engine, name, None)
            if isinstance(current, _PLAIN):
                attributes[name] = current
        elif isinstance(value, _PLAIN):
            attributes[name] = value
    for name, value in vars(engine).items():
        if not name.startswith("_") and isinstance(value, _PLAIN) and not callable(value):
            attributes[name] = value
    attributes["described"] = engine.describe()
    return EngineFacts(f"{kind.__module__}:{kind.__qualname__}", attributes, methods, local)


def main(calls_fd: int, replies_fd: int) -> int:
    faulthandler.enable()  # a native crash prints the Python stack to stderr, which the server keeps
    calls, replies = Connection(calls_fd, writable=False), Connection(replies_fd, readable=False)
    model, settings = calls.recv()
    assert isinstance(model, ResolvedModel) and isinstance(settings, Settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)-7s [{model.name}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        engine = load_in_process(model, settings)
    except Exception as exc:
        replies.send(("failed", str(exc)))
        return 1
    replies.send(("ready", facts(engine)))
    try:
        Worker(calls, replies, engine).serve()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    code = main(int(sys.argv[1]), int(sys.argv[2]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # engine threads (the text scheduler) must not keep a closed worker alive
