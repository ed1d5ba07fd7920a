"""Image endpoints end to end on the real stable-diffusion.cpp engine.

The model is a random-weight SDXS-512-DS checkpoint (tests/sdxs_checkpoint.py) written into a
cache on first use: real architecture and loading code, meaningless pictures. So the tests
check sizes, counts, determinism, that inputs change outputs, and that bad input is refused.
Images are 128x128 with one sampling step to keep the file quick (each step busy-waits the CPU).
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from nexa.config import Settings
from nexa.engines.base import Engine, Task
from nexa.engines.diffusion import DiffusionEngine
from nexa.models.manager import ModelManager
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from sdxs_checkpoint import ensure_checkpoint
from support.images import b64, pixels, png, post_ok, refused
from support.servers import LiveServer
from support.turns import model_busy

SMALL = {"width": 128, "height": 128, "sample_steps": 1, "cfg_scale": 1.0}  # cfg 1: one UNet pass per step
TIMEOUT = 300.0


def _cache() -> Path:
    return Path(os.environ.get("NEXA_TEST_MODELS", Path.home() / ".cache" / "nexa" / "test-models"))


@pytest.fixture(scope="session")
def sdxs() -> ResolvedModel:
    path = ensure_checkpoint(_cache())
    return ResolvedModel(name="sdxs-random", path=path, model_type=ModelType.COMPUTER_VISION)


@pytest.fixture(scope="session")
def image_manager(sdxs: ResolvedModel) -> Iterator[ModelManager]:
    manager = ModelManager.load(sdxs, Settings(n_threads=2))
    assert isinstance(manager.engine, DiffusionEngine)
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    out, allowed, secret = root / "out", root / "allowed", root / "secret"
    for d in (out, allowed, secret):
        d.mkdir()
    return {"out": out, "allowed": allowed, "secret": secret}


@pytest.fixture(scope="session")
def image_settings(dirs: dict[str, Path]) -> Settings:
    return Settings(
        n_threads=2, image_output_dir=str(dirs["out"]), allowed_image_dirs=[str(dirs["allowed"])],
        max_image_size=256, max_image_steps=4, max_images_n=2,
    )


@pytest.fixture(scope="session")
def image_app(image_settings: Settings, image_manager: ModelManager):
    return create_app(image_settings, image_manager)


@pytest.fixture(scope="session")
def server(image_app) -> Iterator[LiveServer]:
    with LiveServer(image_app) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def test_queue_past_max_queue_is_503(http: httpx.Client, image_manager: ModelManager) -> None:
    # One generation holds the model and --max-queue 0 lets nobody wait: the next is a 503 at once.
    engine = image_manager.engine
    assert isinstance(engine, DiffusionEngine)
    with model_busy(engine._turns):
        r = http.post("/v1/txt2img", json={"prompt": "a red fox", **SMALL})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    post_ok(http, "/v1/txt2img", json={"prompt": "a red fox", **SMALL})  # served again


# ----------------------------------------------------------------------------- txt2img


def test_txt2img_makes_n_images_of_the_requested_size_and_serves_them(
    http: httpx.Client, dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="nexa.engine.diffusion")
    out = post_ok(http, "/v1/txt2img", json={"prompt": "a red fox", **SMALL, "width": 192, "n": 2, "seed": 3})
    assert isinstance(out["created"], int) and out["seed"] == 3 and len(out["data"]) == 2
    for item in out["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(item["base64"])))
        assert image.format == "PNG" and image.size == (192, 128) and image.mode == "RGB"
        assert item["b64_json"] == item["base64"]
        # `url` is a link to this server that downloads the very same PNG, written to the output dir.
        assert item["url"].startswith(http.base_url.__str__().rstrip("/") + "/v1/files/")
        got = http.get(item["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert got.content == base64.b64decode(item["base64"])
        assert (dirs["out"] / item["url"].rsplit("/", 1)[1]).read_bytes() == got.content
    assert out["data"][0]["url"] != out["data"][1]["url"]
    assert any("step 1/1" in r.getMessage() for r in caplog.records), "sampling progress is logged"


def test_same_seed_same_pixels_other_seed_other_pixels(http: httpx.Client) -> None:
    body = {"prompt": "a lighthouse", **SMALL, "seed": 42, "response_format": "b64_json"}
    a = post_ok(http, "/v1/txt2img", json=body)["data"][0]
    b = post_ok(http, "/v1/txt2img", json=body)["data"][0]
    c = post_ok(http, "/v1/txt2img", json={**body, "seed": 43})["data"][0]
    assert a["url"] is None  # b64_json only
    pa, pb, pc = pixels(a["base64"]), pixels(b["base64"]), pixels(c["base64"])
    assert pa.std() > 0, "a flat image means the random network saturated"
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)


def test_response_format_url_only(http: httpx.Client) -> None:
    item = post_ok(http, "/v1/txt2img", json={"prompt": "x", **SMALL, "response_format": "url"})["data"][0]
    assert item["base64"] is None and item["b64_json"] is None
    assert Image.open(io.BytesIO(http.get(item["url"]).content)).size == (128, 128)


# ----------------------------------------------------------------------------- img2img


def test_img2img_depends_on_the_input_image_and_on_strength(http: httpx.Client, dirs: dict[str, Path]) -> None:
    # Two steps: with one, stable-diffusion.cpp runs the same single step for every strength below 1.
    common = {"prompt": "a painting", **SMALL, "sample_steps": 2, "seed": 9, "strength": 0.3}
    common["response_format"] = "b64_json"
    red, blue = png((220, 30, 30), stripes=True), png((20, 40, 230))
    # Base64, a data URI and a multipart upload are all accepted.
    from_red = post_ok(http, "/v1/img2img", json={**common, "image": b64(red)})["data"][0]
    from_blue = post_ok(http, "/v1/img2img", json={**common, "image": "data:image/png;base64," + b64(blue)})["data"][0]
    form = {k: str(v) for k, v in {**common, "strength": 0.8}.items()}
    stronger = post_ok(http, "/v1/img2img", data=form, files={"image": ("red.png", red, "image/png")})["data"][0]
    # image_path inside an allowed directory reads the same image as the upload.
    (dirs["allowed"] / "red.png").write_bytes(red)
    by_path = post_ok(http, "/v1/img2img", json={**common, "image_path": str(dirs["allowed"] / "red.png")})["data"][0]

    p_red, p_blue, p_strong, p_path = (pixels(x["base64"]) for x in (from_red, from_blue, stronger, by_path))
    assert p_red.shape == (128, 128, 3)
    assert not np.array_equal(p_red, p_blue), "the input image changes the output"
    assert not np.array_equal(p_red, p_strong), "strength changes the output"
    assert np.array_equal(p_red, p_path), "image_path and base64 of the same file give the same image"


# ----------------------------------------------------------------------------- the openai client


def test_openai_client_generate_and_edit(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    extra = {"sample_steps": 1, "seed": 5}
    result = client.images.generate(prompt="a cat", size="128x128", n=1, response_format="b64_json", extra_body=extra)
    assert len(result.data) == 1
    generated = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert generated.size == (128, 128)

    linked = client.images.generate(prompt="a cat", size="128x128", extra_body=extra)  # default: a URL
    assert linked.data[0].b64_json is None and linked.data[0].url
    assert Image.open(io.BytesIO(httpx.get(linked.data[0].url, timeout=30).content)).size == (128, 128)

    # OpenAI masks mark the area to repaint as transparent.
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 128))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    edited = client.images.edit(
        image=("in.png", png((10, 200, 10)), "image/png"), mask=("mask.png", buf.getvalue(), "image/png"),
        prompt="a tree", size="128x128", response_format="b64_json", extra_body=extra,
    )
    out = pixels(edited.data[0].b64_json or "")
    assert out.shape == (128, 128, 3)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"width": 100}, "width"),
        ({"height": 320}, "height"),  # over this server's max_image_size (256)
        ({"width": 0}, "width"),
        ({"size": "128by128"}, "size"),
        ({"size": "2048x2048"}, "size"),
        ({"sample_steps": 0}, "sample_steps"),
        ({"sample_steps": 5}, "sample_steps"),  # over max_image_steps (4)
        ({"n": 3}, "n"),  # over max_images_n (2)
        ({"n": 0}, "n"),
        ({"cfg_scale": -1}, "cfg_scale"),
        ({"strength": 1.5}, "strength"),
        ({"sampler": "no_such_sampler"}, "sampler"),
    ],
)
def test_bad_parameters_are_400(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    for path in ("/v1/txt2img", "/v1/images/generations"):
        refused(http.post(path, json={"prompt": "x", **SMALL, **body}), 400, param)


def test_bad_input_images_are_400(http: httpx.Client, dirs: dict[str, Path]) -> None:
    body = {"prompt": "x", **SMALL}
    refused(http.post("/v1/img2img", json=body), 400, "image")  # no image at all
    refused(http.post("/v1/img2img", json={**body, "image": "not base64 !!"}), 400, "image")
    refused(http.post("/v1/img2img", json={**body, "image": b64(b"GIF89a but not really")}), 400, "image")
    form = {k: str(v) for k, v in body.items()}
    refused(http.post("/v1/img2img", data=form, files={"image": ("x.png", b"\x89PNG garbage")}), 400, "image")
    refused(http.post("/v1/images/edits", data=form, files={"image": ("x.png", b"junk")}), 400, "image")
    refused(http.post("/v1/img2img", json={**body, "image": b64(png((1, 2, 3))), "image_path": "a.png"}), 400, "image")

    secret = dirs["secret"] / "secret.png"
    secret.write_bytes(png((0, 0, 0)))
    allowed = dirs["allowed"]
    (allowed / "escape.png").unlink(missing_ok=True)
    (allowed / "escape.png").symlink_to(secret)
    (allowed / "escape_dir").unlink(missing_ok=True)
    (allowed / "escape_dir").symlink_to(dirs["secret"], target_is_directory=True)
    for path, why in [
        (str(secret), "outside"),
        (f"{allowed}/../secret/secret.png", ".."),
        ("../secret/secret.png", ".."),
        (str(allowed / "escape.png"), "symbolic link"),
        ("escape_dir/secret.png", "symbolic link"),
        (str(allowed / "missing.png"), "No file"),
        ("/etc/passwd", "outside"),
    ]:
        message = refused(http.post("/v1/img2img", json={**body, "image_path": path}), 400, "image_path")
        assert why in message, (path, message)


def test_long_prompts_are_400_and_the_server_keeps_serving(http: httpx.Client) -> None:
    # A prompt of 32 KiB or more killed the whole server inside stable-diffusion.cpp.
    long = "a red fox " * 4096  # 40 KiB
    for path in ("/v1/txt2img", "/v1/images/generations"):
        assert "--max-image-prompt-chars" in refused(http.post(path, json={"prompt": long, **SMALL}), 400, "prompt")
    r = http.post("/v1/txt2img", json={"prompt": "x", "negative_prompt": long, **SMALL})
    refused(r, 400, "negative_prompt")
    r = http.post("/v1/img2img", json={"prompt": long, "image": b64(png((1, 2, 3))), **SMALL})
    refused(r, 400, "prompt")
    assert r.json()["error"]["code"] == "prompt_too_long"
    post_ok(http, "/v1/txt2img", json={"prompt": "a red fox " * 409, **SMALL})  # 4090 characters: fine


def test_image_path_is_off_unless_the_operator_allows_a_directory(
    image_manager: ModelManager, dirs: dict[str, Path]
) -> None:
    (dirs["allowed"] / "ok.png").write_bytes(png((5, 5, 5)))
    # No `with`: the lifespan would close the shared model.
    client = TestClient(create_app(Settings(image_output_dir=str(dirs["out"])), image_manager))
    r = client.post("/v1/img2img", json={"prompt": "x", **SMALL, "image_path": str(dirs["allowed"] / "ok.png")})
    assert "--allow-dir" in refused(r, 400, "image_path")


def test_max_image_mb_bounds_every_input_image(image_manager: ModelManager, dirs: dict[str, Path]) -> None:
    big = png((10, 200, 30), size=128, stripes=True)
    assert len(big) > 200
    (dirs["allowed"] / "big.png").write_bytes(big)
    settings = Settings(
        image_output_dir=str(dirs["out"]), allowed_image_dirs=[str(dirs["allowed"])], max_image_bytes=200
    )
    client = TestClient(create_app(settings, image_manager))  # no `with`: keep the shared model open
    as_b64 = base64.b64encode(big).decode()
    for body, param in (
        ({"image": as_b64}, "image"),
        ({"image": "data:image/png;base64," + as_b64}, "image"),
        ({"image_path": str(dirs["allowed"] / "big.png")}, "image_path"),
        ({"image": base64.b64encode(png((1, 2, 3), size=8)).decode(), "mask": as_b64}, "mask"),
    ):
        r = client.post("/v1/img2img", json={"prompt": "x", **SMALL, **body})
        assert "MiB" in refused(r, 413, param), body
    r = client.post("/v1/images/edits", data={"prompt": "x"}, files={"image": ("big.png", big, "image/png")})
    assert "--max-image-mb" in refused(r, 413, "image")


def test_files_route_serves_only_generated_names(http: httpx.Client, dirs: dict[str, Path]) -> None:
    (dirs["secret"] / "x.txt").write_text("TOP-SECRET-CONTENT")
    link = dirs["out"] / f"txt2img-{'0' * 32}.png"
    link.unlink(missing_ok=True)
    link.symlink_to(dirs["secret"] / "x.txt")
    names = ("..%2Fsecret%2Fx.txt", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "x.txt", link.name, f"txt2img-{'1' * 32}.png")
    for name in names:
        r = http.get(f"/v1/files/{name}")
        assert r.status_code == 404, (name, r.text)
        assert b"TOP-SECRET-CONTENT" not in r.content


def test_wrong_model_type_is_400(image_app, image_settings: Settings) -> None:
    class ChatOnly(Engine):
        tasks = frozenset({Task.CHAT})
        name = "chat-only"

    chat_client = TestClient(create_app(image_settings, ModelManager(ChatOnly())))
    for path in ("/v1/txt2img", "/v1/images/generations"):
        assert "cannot serve" in refused(chat_client.post(path, json={"prompt": "x", **SMALL}), 400)
    r = chat_client.post("/v1/images/edits", data={"prompt": "x"}, files={"image": ("a.png", png((1, 1, 1)))})
    refused(r, 400)
    # And the image model refuses text endpoints the same way.
    client = TestClient(image_app)
    refused(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}), 400)


# ----------------------------------------------------------------------------- concurrency


def test_other_endpoints_answer_while_an_image_is_generated(http: httpx.Client, server: LiveServer) -> None:
    result: dict[str, Any] = {}

    def generate() -> None:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
            result["r"] = c.post("/v1/txt2img", json={"prompt": "slow", **SMALL, "sample_steps": 4})

    worker = threading.Thread(target=generate)
    worker.start()
    answered_during = 0
    while worker.is_alive():
        if http.get("/health", timeout=TIMEOUT).status_code == 200 and worker.is_alive():
            answered_during += 1
        time.sleep(0.05)
    worker.join()
    assert result["r"].status_code == 200, result["r"].text
    assert answered_during > 0, "/health was not answered while the image was generated"


# ----------------------------------------------------------------------------- wiring


