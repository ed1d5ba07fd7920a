"""Who may talk to the server: API keys, browser origins (CORS) and the Host header.

Three ASGI middlewares, outermost first: the Host check (on a loopback bind, against DNS
rebinding: a page on an attacker's name that resolves to 127.0.0.1 would otherwise be
same-origin), CORS (before the key, since a browser's preflight never carries one, and so that
an allowed page can read a 401), and the key. With no key configured every request passes it.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from nexa.config import Settings
from nexa.server.errors import envelope

# Pages served from this machine may call the API from any port.
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Without a key these stay reachable: load balancers' health checks and the playground page with
# its own files (a page cannot send a key with its <script> tags; it asks for one on a 401).
PUBLIC_PATHS = ("/health", "/")
PUBLIC_PREFIXES = ("/playground/",)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # another name: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def api_keys(settings: Settings) -> list[str]:
    """The keys from --api-key / NEXA_API_KEY and the lines of --api-key-file (blank lines and
    `#` comments skipped). ValueError for a key that could never arrive intact in a header; the
    message never repeats a key. OSError if the file cannot be read."""
    keys = [(key, "--api-key") for key in settings.api_key]
    if settings.api_key_file:
        with open(settings.api_key_file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                key = line.strip()
                if key and not key.startswith("#"):
                    keys.append((key, f"line {n} of --api-key-file"))
    for key, where in keys:
        if not (key.isascii() and key.isprintable() and key and " " not in key):
            raise ValueError(f"the API key at {where} must be printable ASCII without spaces")
    return [key for key, _ in keys]


def _origin(host: str, port: int) -> str | None:
    """The server's own origin, where its bind address is one a browser could use."""
    if host in ("", "0.0.0.0", "::"):
        return None
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _refuse(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(envelope(message, "invalid_request_error", None, code), status, headers=headers)


class RequireKey:
    """401 for a request without one of the keys in `Authorization: Bearer` or `x-api-key`."""

    def __init__(self, app: Any, keys: list[str]):
        self.app = app
        self.keys = [key.encode() for key in keys]

    def _known(self, given: str) -> bool:
        # Every key is compared in constant time, and all of them, so timing says nothing.
        found = False
        for key in self.keys:
            found |= hmac.compare_digest(key, given.encode("latin-1"))
        return found

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or _public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = [token.strip()] if scheme.lower() == "bearer" else []
        given += headers.getlist("x-api-key")
        if any([self._known(g) for g in given]):
            await self.app(scope, receive, send)
            return
        message = "Missing or invalid API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`."
        response = _refuse(401, message, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class CheckHost:
    """403 for a Host header other than this machine's names and --allowed-host (Ollama's rule)."""

    def __init__(self, app: Any, allowed: list[str]):
        self.app = app
        self.allowed = {*LOCAL_HOSTS, *(name.lower() for name in allowed)}

    def _name(self, host: str) -> str:
        """The Host header without its port: `[::1]:8000` -> `[::1]`, `localhost:8000` -> `localhost`."""
        host = host.lower()
        if host.startswith("["):
            return host.partition("]")[0] + "]"
        return host.rpartition(":")[0] if ":" in host else host

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        host = Headers(scope=scope).get("host", "") if scope["type"] == "http" else ""
        # No Host at all (or no HTTP) is never a browser.
        if not host or self._name(host) in self.allowed:
            await self.app(scope, receive, send)
            return
        message = f"Host {host!r} is not served: name it with --allowed-host to reach the server by that name."
        await _refuse(403, message, "host_not_allowed")(scope, receive, send)


class Cors(CORSMiddleware):
    """Starlette's CORS, with a refused preflight in the error envelope like every other refusal
    (Starlette answers it in plain text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        text = bytes(response.body).decode()
        message = f"{text}: this origin may not call the server (add it with --cors-origin)."
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return _refuse(400, message, "cors_refused", headers)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the three checks; call before any middleware that should see their refusals (logs)."""
    app.add_middleware(RequireKey, keys=api_keys(settings))
    own = _origin(settings.host, settings.port)
    # Credentials stay off: even `--cors-origin '*'` cannot let a page ride a user's cookies.
    origins = [*settings.cors_origins, *([own] if own else [])]
    app.add_middleware(
        Cors,
        allow_origins=origins,
        allow_origin_regex=LOCAL_ORIGINS,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    if is_loopback(settings.host):
        app.add_middleware(CheckHost, allowed=settings.allowed_hosts)
