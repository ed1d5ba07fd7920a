"""A local stand-in for the Hugging Face hub, ModelScope and a PyPI simple index.

The real hubs are out of reach from CI, so the store's download code is tested against this:
a threaded HTTP server on 127.0.0.1 (random port) serving small in-memory files. It speaks what
huggingface_hub calls (HEAD/GET /{repo}/resolve/{rev}/{file} with X-Repo-Commit, ETag and
Content-Length; /api/models/{repo}/tree/{rev}; /api/models/{repo}/revision/{rev}), ModelScope's
file API, a PEP 503 index and Range requests. It can cut a connection mid-file to test resuming,
and it logs every request so tests can assert what went over the wire (or that nothing did).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class Cut:
    """Send only `at` bytes of a matching body, then drop the connection (`times` times)."""

    match: str
    at: int
    times: int = 1


@dataclass
class FakeHub:
    hf: dict[str, dict[str, bytes]] = field(default_factory=dict)
    ms: dict[str, dict[str, bytes]] = field(default_factory=dict)
    wheels: dict[str, dict[str, bytes]] = field(default_factory=dict)  # package -> {filename: bytes}
    advertised_sha: dict[str, str | None] = field(default_factory=dict)  # wheel -> sha shown in the index
    requests: list[Request] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- content --------------------------------------------------------------------------------

    def add_hf_repo(self, repo: str, files: dict[str, bytes]) -> None:
        self.hf[repo] = dict(files)

    def add_ms_repo(self, repo: str, files: dict[str, bytes]) -> None:
        self.ms[repo] = dict(files)

    def add_wheel(self, package: str, filename: str, data: bytes, *, advertise: str | None | bool = True) -> None:
        """advertise=True shows the real sha256 in the index, a string shows that, None/False none."""
        self.wheels.setdefault(package, {})[filename] = data
        self.advertised_sha[filename] = hashlib.sha256(data).hexdigest() if advertise is True else (advertise or None)

    def cut(self, match: str, at: int, times: int = 1) -> None:
        self.cuts.append(Cut(match, at, times))

    def requests_for(self, fragment: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if fragment in r.path]

    # --- server lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            for c in self.cuts:
                if c.times > 0 and c.match in path:
                    c.times -= 1
                    return c.at
        return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # --- routing --------------------------------------------------------------------------------

    def _route(self, *, head: bool) -> None:
        if self.fake._server is None:  # stopped: a kept-alive connection must not be served
            self.close_connection = True
            return
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        with self.fake._lock:
            self.fake.requests.append(Request(self.command, self.path, self.headers.get("Range")))
        parts = [p for p in path.split("/") if p]
        try:
            if parts[:2] == ["api", "models"]:
                return self._hf_api(parts[2:])
            if parts[:3] == ["api", "v1", "models"]:
                return self._ms_api(parts[3:], query, head)
            if parts[:1] == ["simple"] and len(parts) == 2:
                return self._simple(parts[1])
            if parts[:1] == ["files"] and len(parts) == 2:
                return self._wheel(parts[1], head)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._hf_resolve("/".join(parts[:2]), "/".join(parts[4:]), head)
        except (BrokenPipeError, ConnectionResetError):
            return None
        self._json(404, {"error": "not found"})

    # --- Hugging Face ----------------------------------------------------------------------------

    def _hf_api(self, rest: list[str]) -> None:
        repo = "/".join(rest[:2])
        files = self.fake.hf.get(repo)
        if files is None:
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if len(rest) == 2 or (len(rest) >= 4 and rest[2] == "revision"):
            siblings = [{"rfilename": p} for p in sorted(files)]
            return self._json(200, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings})
        if len(rest) >= 4 and rest[2] == "tree":
            prefix = "/".join(rest[4:])
            entries: list[dict[str, object]] = []
            folders: set[str] = set()
            for p in sorted(files):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                for i in range(1, p.count("/") + 1):
                    folders.add("/".join(p.split("/")[:i]))
                entries.append(
                    {"type": "file", "path": p, "size": len(files[p]), "oid": hashlib.sha1(files[p]).hexdigest()}
                )
            entries += [{"type": "directory", "path": d, "size": 0, "oid": "0" * 40} for d in sorted(folders)]
            return self._json(200, entries)
        self._json(404, {"error": "not found"})

    def _hf_resolve(self, repo: str, filename: str, head: bool) -> None:
        files = self.fake.hf.get(repo)
        if files is None:
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if filename not in files:
            return self._json(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
            )
        data = files[filename]
        etag = hashlib.sha256(data).hexdigest()
        self._bytes(data, head, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"'})

    # --- ModelScope ------------------------------------------------------------------------------

    def _ms_api(self, rest: list[str], query: dict[str, list[str]], head: bool) -> None:
        repo = "/".join(rest[:2])
        files = self.fake.ms.get(repo)
        if files is None:
            return self._json(404, {"Code": 10010205001, "Message": "model not found", "Success": False})
        if rest[2:] == ["repo", "files"]:
            listing = [
                {"Path": p, "Name": p.rsplit("/", 1)[-1], "Size": len(d), "Type": "blob"} for p, d in files.items()
            ]
            return self._json(200, {"Code": 200, "Data": {"Files": listing}, "Success": True})
        if rest[2:] == ["repo"]:
            path = query.get("FilePath", [""])[0]
            if path not in files:
                return self._json(404, {"Code": 10010205001, "Message": "file not found", "Success": False})
            return self._bytes(files[path], head, {})
        self._json(404, {"error": "not found"})

    # --- PyPI ---------------------------------------------------------------------------------------

    def _simple(self, package: str) -> None:
        wheels = self.fake.wheels.get(package)
        if wheels is None:
            return self._send(404, b"Not Found", {"Content-Type": "text/plain"})
        links = []
        for name in sorted(wheels):
            sha = self.fake.advertised_sha.get(name)
            frag = f"#sha256={sha}" if sha else ""
            links.append(f'<a href="../../files/{name}{frag}" data-requires-python="&gt;=3.9">{name}</a><br/>')
        body = "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>"
        self._send(200, body.encode(), {"Content-Type": "text/html"})

    def _wheel(self, filename: str, head: bool) -> None:
        for wheels in self.fake.wheels.values():
            if filename in wheels:
                return self._bytes(wheels[filename], head, {"Content-Type": "application/octet-stream"})
        self._send(404, b"Not Found", {"Content-Type": "text/plain"})

    # --- plumbing -------------------------------------------------------------------------------

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _bytes(self, data: bytes, head: bool, headers: dict[str, str]) -> None:
        """Serve a file with Range support, or cut it short when a test asked for that."""
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        self.send_response(status)
        for k, v in {"Accept-Ranges": "bytes", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        cut_at = self.fake._take_cut(self.path)
        if cut_at is not None:
            self.wfile.write(body[: max(0, cut_at - start)])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


# --- fixtures and file makers -----------------------------------------------------------------------


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub with every endpoint variable pointed at it and the cache in tmp_path."""
    from nexa.models import download

    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
    monkeypatch.setenv("NEXA_PYPI_INDEX", hub.url + "/simple")
    monkeypatch.setenv("NEXA_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("NEXA_PROGRESS", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)  # retries without sleeping
    try:
        yield hub
    finally:
        hub.stop()


def gguf_bytes(tmp_dir: Path, arch: str = "llama", *, pad: int = 64, name: str = "m.gguf") -> bytes:
    """A small but valid GGUF file (written by the `gguf` package) with `general.architecture`."""
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_dir / f".{arch}-{pad}-{name}"
    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {arch}")
    writer.add_tensor("weight", np.arange(max(1, pad), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    return data


def wheel_bytes(members: dict[str, bytes]) -> bytes:
    """A zip laid out like a wheel; the store only needs the named members."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()
