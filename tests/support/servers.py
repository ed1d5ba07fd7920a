"""Servers for tests and benchmarks: an app served in this process (LiveServer), for clients that
need a real socket, and a server command run as a child process (ServerProcess): `nexa server`
as a user starts it, or a peer server the benchmarks compare against."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    """A port nothing listens on now (another process could still take it before we do)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll `url` until it answers 200; raise if `alive()` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server stopped before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


class LiveServer:
    """An ASGI app served by uvicorn in a thread of this process, on a port of its own.

    The lifespan stays off: the app's shutdown would close a model that the caller (often a
    session fixture) owns and closes itself."""

    def __init__(self, app: Any, timeout_s: float = 30) -> None:
        config = uvicorn.Config(app, host=HOST, port=0, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.timeout_s = timeout_s
        self.port = 0
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        # Port 0: the socket is bound by uvicorn itself, so no other process can take the port
        # between choosing and binding it.
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


_PR_SET_PDEATHSIG = 1
try:
    _prctl: Callable[..., int] | None = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not glibc Linux: stop() in a finally block still ends the server
    _prctl = None


def _die_with_parent() -> None:
    # In the child, before exec: SIGTERM when the thread that started it dies, even by SIGKILL,
    # so an interrupted test run or benchmark leaves no server behind. Resolved before the fork:
    # nothing here may import or take a lock.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess:
    """A server command run as a child process in its own process group (uvicorn's --reload
    runs a second process), stdout and stderr written to a log file.

    start() waits until `ready_path` answers 200 and fails with the log's tail if the process
    exits first; stop() sends SIGTERM to the group, then SIGKILL if it does not end in time.
    The log stays readable after stop(). Start it from a thread that outlives it: the child is
    told to stop when that thread ends."""

    def __init__(
        self,
        cmd: Sequence[str],
        port: int,
        *,
        name: str = "server",
        ready_path: str = "/health",
        env: dict[str, str] | None = None,
        start_timeout_s: float = 180,
    ) -> None:
        self.cmd = list(cmd)
        self.port = port
        self.name = name
        self.ready_path = ready_path
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.url = f"http://{HOST}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def nexa(cls, *args: str, **kwargs: Any) -> ServerProcess:
        """`nexa server ARGS...` on a free loopback port, with this interpreter."""
        port = free_port()
        cmd = [sys.executable, "-m", "nexa", "server", *args, "--host", HOST, "--port", str(port)]
        return cls(cmd, port, name="nexa server", **kwargs)

    def start(self, timeout_s: float | None = None, log_dir: Path | None = None) -> float:
        """Start and wait until ready; the seconds that took. The log goes into `log_dir`, or a
        temporary folder that lives as long as this object."""
        if log_dir is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix="nexa-server-")
            log_dir = Path(self._log_dir.name)
        self.log_path = log_dir / f"{self.name.replace(' ', '_')}.log"
        started = time.perf_counter()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        proc = self.proc
        try:
            wait_until_ready(self.url + self.ready_path, timeout_s or self.start_timeout_s, lambda: proc.poll() is None)
        except RuntimeError as exc:
            self.stop()
            status = f"exit status {proc.returncode}"
            raise RuntimeError(f"{self.name}: {exc} ({status}); its log ends:\n{self.tail()}") from exc
        return time.perf_counter() - started

    def stop(self, timeout_s: float = 30) -> int | None:
        """End the server (SIGTERM, then SIGKILL) and return its exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        return proc.returncode

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:  # already gone
            pass

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
