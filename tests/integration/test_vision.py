"""Vision chat end to end: SmolLM2 plus a random-weight llava projector (tests/projector.py),
loaded by the real manager into the real VisionEngine, over HTTP.

A random projector proves the plumbing, not the answers: the tests check that images reach the
model (different pictures steer greedy decoding differently, the same pixels the same way, in
any format and through any URL form), and that the fetching rules refuse what they must.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from nexa.cli import build_parser, settings_from_args
from nexa.config import Settings
from nexa.engines.llama.vision import VisionEngine
from nexa.engines.loader import load_engine
from nexa.errors import StartupError
from nexa.models.manager import ModelManager, resolve_model
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from projector import ensure_projector
from support.images import encode, picture
from support.servers import LiveServer
from support.sse import delta_text, iter_chunks

TIMEOUT = 600  # other test runs share the two cores: generous, and never asserted on
MAX_TOKENS = 8


# -- images -------------------------------------------------------------------------------------


RED, BLUE = encode(picture("red")), encode(picture("blue"))


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat(*urls: str, text: str = "What is in this image?", **extra: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"messages": [{"role": "user", "content": parts}], "temperature": 0, "max_tokens": MAX_TOKENS, **extra}


def answer(client: TestClient, body: dict[str, Any]) -> str:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def refused(client: TestClient, body: dict[str, Any], status: int = 400) -> str:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]


# -- a web server on loopback -------------------------------------------------------------------


class ImageServer:
    """Serves images, redirects and oversized bodies on 127.0.0.1; records every request."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []  # (path, Host header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the connection closes

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.hits.append((self.path, self.headers.get("Host", "")))
                routes = {
                    "/red.png": (200, RED, True),
                    "/big": (200, b"\x89PNG" + b"\0" * 300_000, True),
                    "/big-unsized": (200, b"\x89PNG" + b"\0" * 300_000, False),
                    "/to-red": (302, "/red.png", True),
                    "/to-metadata": (302, "http://169.254.169.254/latest/meta-data/", True),
                    "/to-private": (302, "http://10.1.2.3/red.png", True),
                    "/loop": (302, "/loop", True),
                    "/missing": (404, b"not here", True),
                }
                if self.path == "/slow":
                    time.sleep(3)
                    routes["/slow"] = (200, RED, True)
                status, body, sized = routes.get(self.path, (404, b"", True))
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", str(body))
                    body = b""
                assert isinstance(body, bytes)
                if sized:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: as it should
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vision_model(smollm2: ResolvedModel) -> ResolvedModel:
    return ResolvedModel(
        name="smollm2-vision", path=smollm2.path, model_type=ModelType.MULTIMODAL, projector=ensure_projector()
    )


@pytest.fixture(scope="session")
def vision_manager(vision_model: ResolvedModel) -> Iterator[ModelManager]:
    manager = ModelManager.load(vision_model, Settings(n_ctx=1024, n_threads=2))
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision")
    allowed, secret = root / "allowed", root / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "red.png").write_bytes(RED)
    (secret / "blue.png").write_bytes(BLUE)
    (allowed / "escape.png").symlink_to(secret / "blue.png")
    return {"allowed": allowed, "secret": secret}


@pytest.fixture(scope="session")
def web() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


def _client(manager: ModelManager, **settings: Any) -> TestClient:
    # No `with`: the lifespan would close the shared session model.
    return TestClient(create_app(Settings(n_threads=2, **settings), manager))


@pytest.fixture(scope="session")
def vision(vision_manager: ModelManager, dirs: dict[str, Path]) -> TestClient:
    """Default rules (no private addresses), plus one allowed directory."""
    return _client(vision_manager, allowed_image_dirs=[str(dirs["allowed"])])


@pytest.fixture(scope="session")
def open_vision(vision_manager: ModelManager) -> TestClient:
    """The operator allowed the loopback test server (by address, and `localhost` by name)."""
    return _client(
        vision_manager,
        allowed_image_hosts=["127.0.0.1/32", "localhost"],
        max_image_bytes=200_000,
        image_fetch_timeout_s=1.0,
    )


@pytest.fixture(scope="session")
def red_answer(vision: TestClient) -> str:
    return answer(vision, chat(data_uri(RED)))


@pytest.fixture(scope="session")
def blue_answer(vision: TestClient) -> str:
    return answer(vision, chat(data_uri(BLUE)))


# -- loading ------------------------------------------------------------------------------------


def test_manager_loads_the_vision_engine(vision_manager: ModelManager, vision: TestClient) -> None:
    assert isinstance(vision_manager.engine, VisionEngine)
    (entry,) = vision.get("/v1/models").json()["data"]
    assert "vision" in entry["tasks"] and entry["projector_type"] == "mlp"
    assert entry["chat_template"] == "the GGUF's own template"


def test_projector_output_has_token_scale(vision_manager: ModelManager) -> None:
    from nexa.server.image_input import decode_image

    engine = vision_manager.engine
    assert isinstance(engine, VisionEngine)
    red = engine.embed_image(decode_image(RED, "x"))
    assert red.shape == (16, 576)
    assert 0.05 < float(red.std()) < 0.5
    assert (engine.embed_image(decode_image(RED, "x")) == red).all()
    assert (engine.embed_image(decode_image(BLUE, "x")) != red).any()


def test_cli_flags_and_projector_override(smollm2: ResolvedModel, tmp_path: Path) -> None:
    projector = ensure_projector()
    args = build_parser().parse_args(
        [
            "server", str(smollm2.path), "-lp", "--projector", str(projector), "--no-remote-images",
            "--allow-image-host", "10.0.0.0/8", "--allow-image-host", "images.internal", "--max-image-mb", "2",
        ]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.projector == str(projector) and settings.remote_images is False
    assert settings.allowed_image_hosts == ["10.0.0.0/8", "images.internal"]
    assert settings.max_image_bytes == 2 * 2**20
    # A lone model file (no projector beside it) becomes a vision model with the named projector.
    model = resolve_model(settings, ModelStore())
    assert model.model_type == ModelType.MULTIMODAL and model.projector == projector
    with pytest.raises(StartupError, match="--allow-image-host"):
        settings_from_args(build_parser().parse_args(["server", "--allow-image-host", "a b"]))
    with pytest.raises(StartupError, match="--projector"):
        settings_from_args(build_parser().parse_args(["server", "--projector", str(tmp_path / "none.gguf")]))


def test_local_folder_finds_model_and_projector(smollm2: ResolvedModel, tmp_path: Path) -> None:
    # Neutral names: the store tells them apart by their GGUF metadata (architecture clip).
    (tmp_path / "a.gguf").symlink_to(ensure_projector())
    (tmp_path / "b.gguf").symlink_to(smollm2.path)
    model = ModelStore(tmp_path / "cache").resolve(str(tmp_path), source="local", model_type=ModelType.MULTIMODAL)
    assert model.path.name == "b.gguf" and model.projector is not None and model.projector.name == "a.gguf"


def test_missing_projector_is_a_startup_error(smollm2: ResolvedModel) -> None:
    model = ResolvedModel(name="x", path=smollm2.path, model_type=ModelType.MULTIMODAL)
    with pytest.raises(StartupError, match="--projector"):
        ModelManager.load(model, Settings(n_threads=2))


# -- images reach the model ---------------------------------------------------------------------


def test_same_image_same_answer_other_image_other_answer(vision: TestClient, red_answer: str, blue_answer: str) -> None:
    assert blue_answer != red_answer
    # Again after the other image, then once more straight after itself: the second time the
    # image is still in the KV cache and is reused, and the answer must not change.
    assert answer(vision, chat(data_uri(RED))) == red_answer
    r = vision.post("/v1/chat/completions", json=chat(data_uri(RED)))
    assert r.json()["choices"][0]["message"]["content"] == red_answer
    usage = r.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= usage["prompt_tokens"] - 2
    assert usage["prompt_tokens"] > 16  # the image's 16 tokens are counted


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP"])
def test_formats_decode_to_the_same_pixels(vision: TestClient, red_answer: str, fmt: str) -> None:
    data = encode(picture("red"), fmt)
    got = answer(vision, chat(data_uri(data, f"image/{fmt.lower()}")))
    if fmt != "JPEG":  # lossless formats carry exactly the PNG's pixels
        assert got == red_answer


def test_url_forms(vision: TestClient, red_answer: str, dirs: dict[str, Path]) -> None:
    assert answer(vision, chat(base64.b64encode(RED).decode())) == red_answer  # bare base64
    assert answer(vision, chat(str(dirs["allowed"] / "red.png"))) == red_answer  # a path
    assert answer(vision, chat("red.png")) == red_answer  # relative to an allowed directory
    assert answer(vision, chat((dirs["allowed"] / "red.png").as_uri())) == red_answer  # file://
    # The string form of image_url (some clients send it) works too.
    body = chat()
    body["messages"][0]["content"].append({"type": "image_url", "image_url": data_uri(RED)})
    assert answer(vision, body) == red_answer


def test_http_url_when_allowed(open_vision: TestClient, web: ImageServer, red_answer: str) -> None:
    assert answer(open_vision, chat(f"{web.url}/red.png")) == red_answer
    assert answer(open_vision, chat(f"{web.url}/to-red")) == red_answer  # a redirect on the same host
    # A host allowed by name: we connect to the address we checked, the server sees its name.
    assert answer(open_vision, chat(f"http://localhost:{web.port}/red.png")) == red_answer
    assert ("/red.png", f"localhost:{web.port}") in web.hits


def test_several_images_and_turns(vision: TestClient) -> None:
    red, blue = data_uri(RED), data_uri(BLUE)
    one = vision.post("/v1/chat/completions", json=chat(red, blue)).json()
    assert one["usage"]["prompt_tokens"] > 32
    assert answer(vision, chat(red, red)) != one["choices"][0]["message"]["content"]
    first = [{"type": "image_url", "image_url": {"url": red}}, {"type": "text", "text": "And this?"}]
    second = [{"type": "text", "text": "Compare with:"}, {"type": "image_url", "image_url": {"url": blue}}]
    turns = {
        "messages": [
            {"role": "user", "content": first},
            {"role": "assistant", "content": "A red square."},
            {"role": "user", "content": second},
        ],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    }
    r = vision.post("/v1/chat/completions", json=turns)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 32


def test_text_cannot_smuggle_image_markers(vision: TestClient) -> None:
    body = chat(data_uri(RED), text="<__media__> <__media__> what is this?")
    assert answer(vision, body)


def test_streaming(vision: TestClient, red_answer: str) -> None:
    text, finish = [], None
    with vision.stream("POST", "/v1/chat/completions", json=chat(data_uri(RED), stream=True)) as r:
        assert r.status_code == 200
        for chunk in iter_chunks(r.iter_lines()):
            text.append(delta_text(chunk))
            finish = chunk["choices"][0]["finish_reason"] or finish
    assert "".join(text) == red_answer and finish in ("stop", "length")


def test_openai_client_and_concurrent_requests(vision_manager: ModelManager, red_answer: str, blue_answer: str) -> None:
    from openai import OpenAI

    with LiveServer(create_app(Settings(n_threads=2), vision_manager)) as live:
        # Two requests at once: prompts are built side by side, decoded together by the
        # scheduler, and neither sees the other's image.
        with ThreadPoolExecutor(2) as pool:
            red, blue = pool.map(
                lambda uri: httpx.post(f"{live.url}/v1/chat/completions", json=chat(uri), timeout=TIMEOUT),
                [data_uri(RED), data_uri(BLUE)],
            )
        assert red.json()["choices"][0]["message"]["content"] == red_answer
        assert blue.json()["choices"][0]["message"]["content"] == blue_answer
        client = OpenAI(base_url=live.url + "/v1", api_key="none", timeout=TIMEOUT)
        content = [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": data_uri(RED), "detail": "low"}},
        ]
        out = client.chat.completions.create(
            model="smollm2-vision",
            messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
            temperature=0,
            max_tokens=MAX_TOKENS,
        )
        assert out.choices[0].message.content == red_answer
        stream = client.chat.completions.create(
            model="smollm2-vision",
            messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == red_answer


# -- what is refused ----------------------------------------------------------------------------


def test_text_only_model_refuses_images(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(data_uri(RED)))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task"


def test_tools_with_images_are_refused_clearly(vision: TestClient) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    assert "images" in refused(vision, chat(data_uri(RED), tools=[tool]))


def test_undecodable_images(vision: TestClient) -> None:
    assert "could not be decoded" in refused(vision, chat(data_uri(b"not an image at all, just bytes")))
    assert "base64" in refused(vision, chat("data:image/png;base64,@@@@"))
    assert "base64 encoded" in refused(vision, chat("data:image/png,rawbytes"))
    assert "scheme" in refused(vision, chat("ftp://example.com/a.png"))


def test_too_many_image_tokens_for_the_context(vision_model: ResolvedModel) -> None:
    manager = ModelManager.load(vision_model, Settings(n_ctx=256, n_threads=2))
    try:
        small = _client(manager, max_chat_images=20)
        r = small.post("/v1/chat/completions", json=chat(*[data_uri(RED)] * 16))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded" and "image" in error["message"]
        assert "--max-chat-images" in refused(_client(manager), chat(*[data_uri(RED)] * 17))
    finally:
        manager.close()


def test_loopback_refused_by_default(vision: TestClient, web: ImageServer) -> None:
    before = len(web.hits)
    message = refused(vision, chat(f"{web.url}/red.png"))
    assert "private, loopback or link-local" in message and "--allow-image-host" in message
    assert "loopback" in refused(vision, chat(f"http://localhost:{web.port}/red.png"))
    assert len(web.hits) == before  # refused before connecting


def test_redirects_are_checked_at_every_hop(open_vision: TestClient, web: ImageServer) -> None:
    assert "169.254.169.254" in refused(open_vision, chat(f"{web.url}/to-metadata"))
    assert "10.1.2.3" in refused(open_vision, chat(f"{web.url}/to-private"))
    assert "redirected more than" in refused(open_vision, chat(f"{web.url}/loop"))
    assert "HTTP 404" in refused(open_vision, chat(f"{web.url}/missing"))


def test_size_and_time_limits(open_vision: TestClient, web: ImageServer) -> None:
    assert "limit" in refused(open_vision, chat(f"{web.url}/big"), 413)
    assert "limit" in refused(open_vision, chat(f"{web.url}/big-unsized"), 413)  # no Content-Length
    assert "limit" in refused(open_vision, chat(data_uri(b"\0" * 300_000)), 413)
    assert "longer than" in refused(open_vision, chat(f"{web.url}/slow"))


def test_remote_fetching_can_be_turned_off(vision_manager: ModelManager, web: ImageServer) -> None:
    off = _client(vision_manager, remote_images=False, allowed_image_hosts=["127.0.0.1"])
    assert "--no-remote-images" in refused(off, chat(f"{web.url}/red.png"))


def test_local_files_only_inside_allowed_dirs(
    vision: TestClient, open_vision: TestClient, dirs: dict[str, Path]
) -> None:
    assert "outside" in refused(vision, chat(str(dirs["secret"] / "blue.png")))
    assert "outside" in refused(vision, chat((dirs["secret"] / "blue.png").as_uri()))
    assert "'..'" in refused(vision, chat(str(dirs["allowed"] / ".." / "secret" / "blue.png")))
    assert "outside" in refused(vision, chat(str(dirs["allowed"] / "escape.png")))  # a symbolic link out
    assert "No image file" in refused(vision, chat(str(dirs["allowed"] / "none.png")))
    assert "--allow-dir" in refused(open_vision, chat(str(dirs["allowed"] / "red.png")))  # none allowed


# -- the address rules, unit by unit ------------------------------------------------------------


def test_vision_engine_loads_with_parallel_and_queue(smollm2: ResolvedModel) -> None:
    model = ResolvedModel("smollm2-vision", smollm2.path, ModelType.MULTIMODAL, projector=ensure_projector())
    engine: Any = load_engine(model, Settings(n_ctx=256, n_threads=2, parallel=3, max_queue=5))
    try:
        assert type(engine).__name__ == "VisionEngine"
        assert (engine.parallel, engine.scheduler.max_waiting, engine.n_ctx) == (3, 5, 256)
    finally:
        engine.close()
