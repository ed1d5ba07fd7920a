"""The body limit on its own, around an app that reads and echoes the body's length."""

from __future__ import annotations

from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from nexa.config import Settings
from nexa.server.limits import FORM_OVERHEAD, BodyLimit, body_limits

SETTINGS = Settings(max_body_bytes=1000, max_upload_mb=0.001, max_image_bytes=3000)


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"read": len(await request.body())})


def client() -> TestClient:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    app.add_middleware(BodyLimit, settings=SETTINGS)
    return TestClient(app)


def test_multipart_bodies_may_carry_two_images() -> None:
    assert body_limits(SETTINGS) == (1000, 6000 + FORM_OVERHEAD)
    assert body_limits(Settings()) == (32 * 2**20, 40 * 2**20 + FORM_OVERHEAD)  # the defaults


def test_declared_and_streamed_bodies() -> None:
    c = client()
    assert c.post("/echo", content=b"x" * 1000).json() == {"read": 1000}
    r = c.post("/echo", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert r.json()["error"]["param"] == "body" and r.headers["connection"] == "close"

    def chunks(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"x" * 100

    assert c.post("/echo", content=chunks(10)).json() == {"read": 1000}
    assert c.post("/echo", content=chunks(11)).status_code == 413
    form = {"content-type": "multipart/form-data; boundary=b"}
    assert c.post("/echo", content=b"x" * 6000, headers=form).json() == {"read": 6000}
    assert c.post("/echo", content=chunks(60 + FORM_OVERHEAD // 100 + 1), headers=form).status_code == 413
