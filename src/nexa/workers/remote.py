"""RemoteEngine: a model loaded in a worker process, used by the server as if it were the engine.

Why a process per model: a native crash (llama.cpp's AMX kernels, a stable-diffusion.cpp
assert, the OOM killer) then ends one worker, not the server; unloading a model returns all
of its memory to the system; and the decoding loop no longer shares an interpreter lock with
the HTTP work.

The proxy answers attribute reads from facts the worker sent once it had loaded, runs the
common checks of engines/base.py here (require, check_prompt...) unless the engine overrides
them, and sends every other method call to the worker. A call that returns an iterator in the
worker returns one here, fed item by item as the replies arrive: a channel.Stream, which the
server awaits on its event loop with no thread of the request's own in between. If the worker
dies, every call waiting on it fails with ModelCrashed (a 500 in the error envelope; a stream
ends with an error event), and `alive` turns False so that the model manager starts a new worker
on the next request.

Who reads the replies. Outside a server (tests, benches, a blocking caller), a thread per worker.
Inside one, the server's event loop itself (`read_on`, from the app's lifespan): a streamed token
then wakes one thread, the loop, where a reader thread cost a second wake-up, a hand-over of the
interpreter lock and a write to the loop's wake-up pipe (about a tenth of the server's CPU per
token, measured on 2 cores). The loop reads
a socket of its own, one way (replies), made non-blocking; calls go out on another socket, blocking.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import io
import itertools
import logging
import os
import pickle
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from typing import IO, Any

from nexa.channel import END, Channel, Stream
from nexa.config import Settings
from nexa.engines.base import TextDelta
from nexa.errors import ModelCrashed, StartupError
from nexa.models.types import ResolvedModel
from nexa.workers.protocol import FRAME_SIZE, CancelToken, EngineFacts, Ref, RemoteError

log = logging.getLogger("nexa.workers")

TAIL_LINES = 40  # worker output kept to explain a crash
CLOSE_WAIT_S = 10.0  # for a worker to close its engine before it is killed
_GONE = ("gone",)
READ_SIZE = 1 << 16

# The server's event loop and its thread, once it reads the workers' replies (read_on).
_reading: tuple[asyncio.AbstractEventLoop, int] | None = None
_engines: weakref.WeakSet[RemoteEngine] = weakref.WeakSet()


def read_on(loop: asyncio.AbstractEventLoop) -> None:
    """From now on read every worker's replies on `loop`, the server's; call on its thread, and
    `stop_reading_on` before it stops."""
    global _reading
    _reading = (loop, threading.get_ident())
    for engine in list(_engines):
        engine._read_on_loop(loop)


def stop_reading_on(loop: asyncio.AbstractEventLoop) -> None:
    """Workers whose replies `loop` reads go back to a reader thread; call on the loop's thread."""
    global _reading
    if _reading is not None and _reading[0] is loop:
        _reading = None
    for engine in list(_engines):
        if engine._loop is loop:
            engine._read_in_thread()


class Kept:
    """A value the worker kept for us (see protocol.Ref). Given back as an argument it is the
    value again there; dropped unused, the worker is told to drop it too."""

    def __init__(self, ref: Ref, owner: RemoteEngine):
        self.ref = ref
        self._owner: RemoteEngine | None = owner

    def take(self) -> Ref:
        self._owner = None  # the worker pops it when the call uses it
        return self.ref

    def __del__(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._post(("release", self.ref.id))


class WorkerOutput:
    """Copies a worker's stdout and stderr to ours, line by line, keeping the last lines."""

    def __init__(self, stream: IO[bytes]):
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.thread = threading.Thread(target=self._copy, args=(stream,), name="nexa-worker-output", daemon=True)
        self.thread.start()

    def _copy(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            self.lines.append(line.rstrip("\n"))
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is closed (shutting down): keep the tail only
                pass

    def tail(self) -> str:
        self.thread.join(timeout=2)  # a dead worker's last lines may still be in the pipe
        return "\n".join(self.lines) or "(no output)"


def exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _child_env() -> dict[str, str]:
    """Our environment, with the import path we run with (a source checkout, tests/) first, so the
    worker imports the same nexa as the server."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    own = [p for p in sys.path if p and not any(os.path.realpath(p).startswith(x) for x in prefixes)]
    current = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(own + ([current] if current else []))}


class RemoteEngine:
    def __init__(
        self, model: ResolvedModel, process: subprocess.Popen[bytes], calls: Connection, replies: socket.socket,
        facts: EngineFacts, output: WorkerOutput,
    ):
        self.model = model
        self.process = process
        self.pid = process.pid
        self.facts = facts
        self.alive = True
        self._conn = calls
        self._replies = replies
        self._replies.setblocking(False)  # read only when there is something to read (a loop sets this too)
        self._buffer = bytearray()  # the start of a reply not yet whole
        self._output = output
        self._calls: dict[int, Channel] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        # Reentrant: a finalizer (Kept.__del__, an abandoned stream's `ended`) that the garbage
        # collector runs in the middle of a send on this thread posts too; it is sent after.
        self._send_lock = threading.RLock()
        self._sending = False
        self._deferred: list[tuple[Any, ...]] = []
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, once it reads our replies
        self._loop_thread = 0
        self._stop_r, self._stop_w = os.pipe()  # tells the reader thread to hand over to the loop
        self._thread: threading.Thread | None = None
        self._read_in_thread()
        _engines.add(self)
        if _reading is not None:
            loop, _ = _reading
            try:
                loop.call_soon_threadsafe(self._read_on_loop, loop)
            except RuntimeError:  # that loop has closed: the thread goes on reading
                pass

    @classmethod
    def start(cls, model: ResolvedModel, settings: Settings) -> RemoteEngine:
        """Start a worker and load the model in it; blocks until the model is ready.
        StartupError (with the worker's own words) if it cannot load."""
        calls, calls_theirs = socket.socketpair()
        replies, replies_theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "nexa.workers.child", str(calls_theirs.fileno()), str(replies_theirs.fileno())],
                pass_fds=(calls_theirs.fileno(), replies_theirs.fileno()), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env(),
                start_new_session=True,  # Ctrl-C in a terminal reaches the server alone, which then closes its workers
            )
        finally:
            calls_theirs.close()
            replies_theirs.close()
        assert process.stdout is not None
        output = WorkerOutput(process.stdout)
        conn = Connection(calls.detach(), readable=False)
        handshake = Connection(os.dup(replies.fileno()), writable=False)  # blocking: the one reply before any reader
        log.info("worker for %s started (pid %d)", model.name, process.pid)
        try:
            conn.send((model, settings))
            first = handshake.recv()
        except (EOFError, OSError):
            first = None
        finally:
            handshake.close()
        if first is None or first[0] != "ready":
            code = process.wait()
            conn.close()
            replies.close()
            if first is not None:
                raise StartupError(first[1])
            raise StartupError(
                f"The worker loading {model.name} stopped ({exit_reason(code)}). Its last lines:\n{output.tail()}"
            )
        return cls(model, process, conn, replies, first[1], output)

    # -- the engine's face -------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        facts = self.__dict__.get("facts")
        if facts is None or name.startswith("__"):
            raise AttributeError(name)
        if name in facts.attributes:
            return facts.attributes[name]
        if name in facts.methods:
            return lambda *args, **kwargs: self._call(name, args, kwargs)
        if name in facts.local:
            module, _, qualname = facts.local[name].partition(":")
            return getattr(getattr(importlib.import_module(module), qualname), name).__get__(self)
        raise AttributeError(f"{facts.kind} has no attribute {name!r}")

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = self.facts.attributes["described"]
        return described

    def rss_bytes(self) -> int:
        """The worker's resident memory (0 where /proc is missing)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def close(self) -> None:
        """End the worker (it closes its engine first) and wait for it: its memory is returned."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._post(("close",))
        try:
            self.process.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("worker for %s (pid %d) did not close in %.0fs; killing it", self.model.name, self.pid,
                        CLOSE_WAIT_S)
            self.process.kill()
            self.process.wait()
        self.alive = False
        self._conn.close()
        self._close_replies()
        log.info("worker for %s (pid %d) ended", self.model.name, self.pid)

    # -- calls -------------------------------------------------------------------------------

    def _post(self, message: tuple[Any, ...]) -> bool:
        try:
            with self._send_lock:
                if self._sending:  # re-entered on this thread mid-send (see _send_lock)
                    self._deferred.append(message)
                    return True
                self._sending = True
                try:
                    self._conn.send(message)
                    while self._deferred:
                        self._conn.send(self._deferred.pop(0))
                finally:
                    self._sending = False
        except (OSError, ValueError):  # the worker is gone; _read reports it
            return False
        return True

    def gathered(self, method: str, *args: Any) -> Any:
        """`method(*args)`, a call that streams text, with the worker joining the text into one
        item sent just before the end: for a caller that reads the whole answer anyway (a request
        without `stream`), a token then costs no message on either side."""
        return self._call(method, args, {}, gather=True)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], gather: bool = False) -> Any:
        if not self.alive:
            raise self._crashed()
        cancels = [a for a in (*args, *kwargs.values()) if isinstance(a, threading.Event)]
        replies = Channel(pump=self._pump)
        with self._lock:
            call_id = next(self._ids)
            self._calls[call_id] = replies
        out_args = tuple(_outgoing(a) for a in args)
        out_kwargs = {k: _outgoing(v) for k, v in kwargs.items()}
        if not self._post(("call", call_id, method, out_args, out_kwargs, gather)):
            replies.put(_GONE)
        first = self._first(call_id, replies, cancels)
        if first[0] == "stream":
            return self._stream(call_id, replies, cancels)
        self._forget(call_id)
        return self._result(first)

    def _stream(self, call_id: int, replies: Channel, cancels: list[threading.Event]) -> Stream[Any]:
        """The items, read blocking or awaited on the server's loop (the reader thread then hands
        them straight to it)."""

        def decode(message: tuple[Any, ...]) -> Any:
            if message[0] == "text":
                return TextDelta(message[2])
            if message[0] == "item":
                return self._incoming(message[2])
            if message[0] == "end":
                return END
            return self._result(message)  # raises the worker's error, or ModelCrashed

        def ended(early: bool) -> None:
            if early:  # left early: the worker stops at its next item
                self._post(("cancel", call_id))
            self._forget(call_id)

        return Stream(replies, decode, ended, (lambda: self._pass_cancel(call_id, cancels)) if cancels else None)

    def _pass_cancel(self, call_id: int, cancels: list[threading.Event]) -> None:
        """Checked on every message, not only when idle: a fast worker keeps the channel full,
        and a cancel seen only on a timeout would never be sent. The list is this call's own:
        emptied once the worker has been told."""
        if cancels and any(e.is_set() for e in cancels) and self._post(("cancel", call_id)):
            cancels.clear()

    def _first(self, call_id: int, replies: Channel, cancels: list[threading.Event]) -> tuple[Any, ...]:
        if not cancels:
            message: tuple[Any, ...] = replies.get()
            return message
        while True:
            self._pass_cancel(call_id, cancels)
            try:
                message = replies.get(timeout=0.05)
                return message
            except queue.Empty:
                continue

    def _result(self, message: tuple[Any, ...]) -> Any:
        if message[0] == "ok":
            return self._incoming(message[2])
        if message[0] == "err":
            error: RemoteError = message[2]
            raise error.rebuild()
        raise self._crashed()

    def _incoming(self, value: Any) -> Any:
        if isinstance(value, Ref):
            return Kept(value, self)
        if isinstance(value, tuple):
            return tuple(Kept(v, self) if isinstance(v, Ref) else v for v in value)
        return value

    def _forget(self, call_id: int) -> None:
        with self._lock:
            self._calls.pop(call_id, None)

    def _crashed(self) -> ModelCrashed:
        return ModelCrashed(
            f"The worker serving {self.model.name} stopped ({exit_reason(self.process.poll())}) "
            f"while answering; the next request starts it again."
        )

    # -- reading the replies -------------------------------------------------------------------

    def _pull(self) -> bool:
        """Hand every whole reply the socket holds to the call waiting for it; False once the
        worker is gone. Framed as multiprocessing's Connection frames them (the worker sends
        with one)."""
        try:
            data = self._replies.recv(READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:  # closed under us (close())
            return False
        if not data:
            return False
        buffer = self._buffer
        if not buffer and len(data) > 4 and FRAME_SIZE.unpack_from(data)[0] == len(data) - 4:
            self._deliver(pickle.loads(data[4:]))  # one whole reply: a streamed token, mostly
            return True
        buffer += data
        messages, pos = [], 0
        with memoryview(buffer) as view:  # each message unpickled in place; the buffer trimmed once
            while len(buffer) - pos >= 4:
                (size,), start = FRAME_SIZE.unpack_from(buffer, pos), pos + 4
                if size == -1:  # over 2 GiB
                    if len(buffer) - pos < 12:
                        break
                    (size,), start = struct.unpack_from("!Q", buffer, pos + 4), pos + 12
                if len(buffer) < start + size:
                    break
                messages.append(pickle.loads(view[start : start + size]))
                pos = start + size
        del buffer[:pos]
        for message in messages:
            self._deliver(message)
        return True

    def _deliver(self, message: tuple[Any, ...]) -> None:
        replies = self._calls.get(message[1])  # one dict read needs no lock; the lock orders ids and inserts
        if replies is not None:  # None: a call we stopped waiting for
            replies.put(message)

    def _read(self) -> None:
        """The reader thread, until the worker is gone or the loop takes over."""
        poll = select.poll()
        poll.register(self._replies, select.POLLIN)
        poll.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poll.poll()}
            if self._stop_r in ready:
                os.read(self._stop_r, 1)
                return
            if not self._pull():
                break
        self._gone()

    def _read_in_thread(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._replies.fileno())
            self._loop = None
        if self.alive and not self._closing:
            self._thread = threading.Thread(target=self._read, name=f"nexa-worker-{self.pid}", daemon=True)
            self._thread.start()

    def _read_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the reading over from the thread; on `loop`'s thread."""
        if self._loop is not None or self._closing or _reading is None or _reading[0] is not loop:
            return
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join()  # at once: it stops between two reads
            self._thread = None
        if not self.alive or self._closing:
            return
        self._loop, self._loop_thread = loop, threading.get_ident()
        loop.add_reader(self._replies.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        if not self._pull():
            self._lost()
            threading.Thread(target=self._gone, daemon=True).start()  # it waits for the process

    def _lost(self) -> None:
        self.alive = False
        if self._loop is not None:
            self._loop.remove_reader(self._replies.fileno())
            self._loop = None

    def _pump(self, replies: Channel) -> None:
        """A blocking wait on the loop that reads the replies would wait forever: there, read
        them here until this call has one (the loop is held meanwhile, as it was by any blocking
        call)."""
        if self._loop is None or threading.get_ident() != self._loop_thread:
            return
        while replies.empty():
            select.select([self._replies], [], [])
            if not self._pull():
                self._lost()
                self._gone()
                return

    def _gone(self) -> None:
        """The worker is gone: say why, and fail every call still waiting."""
        self.alive = False
        if not self._closing:
            code = self.process.wait()
            log.error(
                "the worker serving %s (pid %d) stopped: %s. Its last lines:\n%s",
                self.model.name, self.pid, exit_reason(code), self._output.tail(),
            )
        with self._lock:
            waiting = list(self._calls.values())
        for replies in waiting:
            replies.put(_GONE)

    def _close_replies(self) -> None:
        """Close the reading end once nobody reads it: the loop's reader goes first, on the loop."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            try:
                loop.call_soon_threadsafe(self._close_replies)
                return
            except RuntimeError:  # the loop has closed, and its reader with it
                self._loop = None
        self._lost()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)  # the worker has exited: it sees the end at once
        self._thread = None
        self._replies.close()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)


def _outgoing(value: Any) -> Any:
    if isinstance(value, threading.Event):
        return CancelToken()
    if isinstance(value, Kept):
        return value.take()
    if hasattr(value, "read") and not isinstance(value, io.BytesIO):  # an upload: send its bytes
        return io.BytesIO(value.read())
    return value
