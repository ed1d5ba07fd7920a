"""`nexa server onnx FOLDER` serves Stable Diffusion pipelines in the diffusers/optimum ONNX layout.

The model is a random-weight pipeline of SD 1.x's architecture (tests/onnx_diffusion.py), built
into the cache on first use: the outputs are noise, the path is real. The engine is checked
against diffusers' own OnnxStableDiffusionPipeline on the same folder and starting noise, then
served by a real `nexa server onnx` process and used over HTTP like the stable-diffusion.cpp
engine in test_images.py: sizes, counts, seeds, inputs that change outputs, and refusals.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import fakehub
from nexa.config import Settings
from nexa.engines.onnx.diffusion import ClipTokenizer, OnnxDiffusionEngine, initial_noise
from nexa.errors import StartupError
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from onnx_diffusion import sd_tiny_onnx
from support.images import b64, pixels, png, post_ok, refused
from support.servers import ServerProcess

fake_hub = fakehub.fake_hub  # the fixture: a local stand-in for the Hugging Face hub

SMALL = {"width": 128, "height": 128, "sample_steps": 2, "cfg_scale": 5.0}
TIMEOUT = 120.0


@pytest.fixture(scope="session")
def sd_dir() -> Path:
    return sd_tiny_onnx()


@pytest.fixture(scope="session")
def engine(sd_dir: Path) -> Iterator[OnnxDiffusionEngine]:
    e = OnnxDiffusionEngine(sd_dir, name="sd-tiny", n_threads=2)
    yield e
    e.close()


@pytest.fixture(scope="session")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-images")
    for name in ("out", "allowed", "secret"):
        (root / name).mkdir()
    return {name: root / name for name in ("out", "allowed", "secret")}


@pytest.fixture(scope="session")
def server(sd_dir: Path, dirs: dict[str, Path]) -> Iterator[ServerProcess]:
    # No -mt: the folder's layout says it is an image model.
    args = ["onnx", str(sd_dir), "-lp", "-t", "2", "--output-dir", str(dirs["out"]), "--allow-dir",
            str(dirs["allowed"]), "--max-image-size", "256", "--max-image-steps", "8", "--max-images", "2"]
    with ServerProcess.nexa(*args, start_timeout_s=180) as process:
        yield process


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


# -- the engine against diffusers on the same folder ----------------------------------------------


def test_tokens_match_transformers_clip_tokenizer(sd_dir: Path) -> None:
    from transformers import CLIPTokenizer

    ours = ClipTokenizer(sd_dir / "tokenizer", 77)
    theirs = CLIPTokenizer.from_pretrained(str(sd_dir / "tokenizer"))
    for text in ("a red fox", "A  Lighthouse,\tat SUNSET!! 1984", "naïve café 東京 🎉", "", "the fox " * 60):
        expected = theirs(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert ours(text)[0].tolist() == expected, text


@pytest.mark.parametrize("cfg_scale", [5.0, 1.0])
def test_pixels_match_diffusers_onnx_pipeline(sd_dir: Path, engine: OnnxDiffusionEngine, cfg_scale: float) -> None:
    from diffusers import EulerDiscreteScheduler, OnnxStableDiffusionPipeline

    class Euler(EulerDiscreteScheduler):  # the deprecated ONNX pipeline multiplies numpy by this tensor
        @property
        def init_noise_sigma(self) -> float:  # type: ignore[override]
            return float(super().init_noise_sigma)

    pipe = OnnxStableDiffusionPipeline.from_pretrained(str(sd_dir), provider="CPUExecutionProvider")
    pipe.scheduler = Euler.from_config(pipe.scheduler.config)  # PNDM in the folder runs as Euler here
    negative = "blurry" if cfg_scale > 1 else ""
    _, noise = initial_noise(11, (1, 4, 16, 16))
    ref = pipe("a red fox", negative_prompt=negative or None, height=128, width=128, num_inference_steps=4,
               guidance_scale=cfg_scale, output_type="np", latents=noise).images[0]
    images, seed = engine.generate(prompt="a red fox", negative_prompt=negative, width=128, height=128,
                                   cfg_scale=cfg_scale, steps=4, seed=11, sampler="euler")
    ours = np.asarray(images[0]).astype(int)
    assert seed == 11 and ours.std() > 0
    assert np.abs(ours - (ref * 255).round().astype(int)).max() <= 2


def test_mask_keeps_what_is_black_and_repaints_what_is_white(engine: OnnxDiffusionEngine) -> None:
    init = Image.open(io.BytesIO(png((220, 30, 30), stripes=True)))
    common: dict[str, Any] = dict(prompt="a painting", width=128, height=128, steps=3, seed=2, sampler="euler",
                                  init_image=init)

    def made(**kwargs: Any) -> np.ndarray:
        return np.asarray(engine.generate(**{**common, **kwargs})[0][0])

    untouched = made(strength=0.0)  # no step runs: the input through the VAE
    assert np.array_equal(made(strength=1.0, mask_image=Image.new("L", (128, 128), 0)), untouched)
    repainted = made(strength=1.0)
    assert np.array_equal(made(strength=1.0, mask_image=Image.new("L", (128, 128), 255)), repainted)
    assert not np.array_equal(repainted, untouched)


# -- over HTTP, from `nexa server onnx FOLDER` ------------------------------------------------------


def test_models_lists_an_image_model(http: httpx.Client) -> None:
    (entry,) = http.get("/v1/models").json()["data"]
    assert entry["tasks"] == ["img2img", "txt2img"] and entry["runtime"] == "onnxruntime"
    assert entry["model_type"] == "COMPUTER_VISION"  # from the folder: the server was started without -mt
    assert entry["samplers"] == ["euler", "euler_a"] and entry["sampler"] == "euler"  # PNDM runs as Euler


def test_txt2img_makes_n_images_of_the_size_and_serves_them(
    http: httpx.Client, server: ServerProcess, dirs: dict[str, Path]
) -> None:
    out = post_ok(http, "/v1/txt2img", json={"prompt": "a red fox", **SMALL, "width": 192, "n": 2, "seed": 3})
    assert out["seed"] == 3 and out["size"] == "192x128" and len(out["data"]) == 2
    for item in out["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(item["base64"])))
        assert image.format == "PNG" and image.size == (192, 128) and image.mode == "RGB"
        assert item["b64_json"] == item["base64"]
        got = http.get(item["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert got.content == base64.b64decode(item["base64"])
        assert (dirs["out"] / item["url"].rsplit("/", 1)[1]).read_bytes() == got.content  # in --output-dir
    # Image i of a request is made with seed + i: the second one alone, with seed 4, is the same.
    alone = post_ok(http, "/v1/txt2img", json={"prompt": "a red fox", **SMALL, "width": 192, "seed": 4})
    assert np.array_equal(pixels(out["data"][1]["base64"]), pixels(alone["data"][0]["base64"]))
    assert not np.array_equal(pixels(out["data"][0]["base64"]), pixels(out["data"][1]["base64"]))
    assert "step 2/2" in server.log(), "sampling progress is logged"


def test_same_seed_same_pixels_other_seed_or_sampler_other_pixels(http: httpx.Client) -> None:
    body = {"prompt": "a lighthouse", **SMALL, "seed": 42, "response_format": "b64_json"}
    a, b = (pixels(post_ok(http, "/v1/txt2img", json=body)["data"][0]["base64"]) for _ in range(2))
    c = pixels(post_ok(http, "/v1/txt2img", json={**body, "seed": 43})["data"][0]["base64"])
    d = pixels(post_ok(http, "/v1/txt2img", json={**body, "prompt": "a cat"})["data"][0]["base64"])
    e = pixels(post_ok(http, "/v1/txt2img", json={**body, "sampler": "euler_a"})["data"][0]["base64"])
    assert a.std() > 0, "a flat image means the random network saturated"
    assert np.array_equal(a, b)
    for other in (c, d, e):
        assert not np.array_equal(a, other)


def test_img2img_depends_on_the_input_image_strength_and_mask(http: httpx.Client, dirs: dict[str, Path]) -> None:
    common = {"prompt": "a painting", **SMALL, "sample_steps": 4, "seed": 9, "strength": 0.5,
              "response_format": "b64_json"}
    red, blue = png((220, 30, 30), stripes=True), png((20, 40, 230))

    def made(path: str = "/v1/img2img", **kwargs: Any) -> np.ndarray:
        return pixels(post_ok(http, path, **kwargs)["data"][0]["base64"])

    from_red = made(json={**common, "image": b64(red)})
    from_blue = made(json={**common, "image": "data:image/png;base64," + b64(blue)})
    form = {k: str(v) for k, v in {**common, "strength": 0.9}.items()}
    stronger = made(data=form, files={"image": ("red.png", red, "image/png")})
    (dirs["allowed"] / "red.png").write_bytes(red)
    by_path = made(json={**common, "image_path": str(dirs["allowed"] / "red.png")})
    # txt2img with an image_path is img2img, as in the original server.
    via_txt2img = made("/v1/txt2img", json={**common, "image_path": str(dirs["allowed"] / "red.png")})
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 64, 128))  # white: repaint the left half
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    masked = made(json={**common, "image": b64(red), "mask": b64(buf.getvalue())})

    assert from_red.shape == (128, 128, 3)
    assert not np.array_equal(from_red, from_blue), "the input image changes the output"
    assert not np.array_equal(from_red, stronger), "strength changes the output"
    assert not np.array_equal(from_red, masked), "a mask changes the output"
    assert np.array_equal(from_red, by_path) and np.array_equal(from_red, via_txt2img)


def test_openai_client_generates_and_edits(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    extra = {"sample_steps": 2, "seed": 5}
    result = client.images.generate(prompt="a cat", size="128x128", n=2, response_format="b64_json", extra_body=extra)
    assert [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))).size for d in result.data] == [(128, 128)] * 2
    linked = client.images.generate(prompt="a cat", size="128x128", extra_body=extra)  # default: a URL
    assert linked.data[0].b64_json is None and linked.data[0].url
    assert Image.open(io.BytesIO(httpx.get(linked.data[0].url, timeout=30).content)).size == (128, 128)

    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 128))  # OpenAI's masks: transparent is the area to repaint
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    edited = client.images.edit(
        image=("in.png", png((10, 200, 10)), "image/png"), mask=("mask.png", buf.getvalue(), "image/png"),
        prompt="a tree", size="128x128", response_format="b64_json", extra_body=extra,
    )
    assert pixels(edited.data[0].b64_json or "").shape == (128, 128, 3)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"width": 100}, "width"),
        ({"height": 320}, "height"),  # over --max-image-size 256
        ({"size": "128by128"}, "size"),
        ({"sample_steps": 9}, "sample_steps"),  # over --max-image-steps 8
        ({"n": 3}, "n"),  # over --max-images 2
        ({"cfg_scale": -1}, "cfg_scale"),
        ({"strength": 1.5}, "strength"),
        ({"sampler": "dpm++2m"}, "sampler"),
        ({"prompt": "a fox " * 2000}, "prompt"),
    ],
)
def test_bad_parameters_are_400_in_the_openai_envelope(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    for path in ("/v1/txt2img", "/v1/images/generations"):
        message = refused(http.post(path, json={"prompt": "x", **SMALL, **body}), 400, param)
        if param == "sampler":
            assert "euler, euler_a" in message


def test_bad_input_images_and_paths_are_400(http: httpx.Client, dirs: dict[str, Path]) -> None:
    body = {"prompt": "x", **SMALL}
    refused(http.post("/v1/img2img", json=body), 400, "image")  # no image at all
    refused(http.post("/v1/img2img", json={**body, "image": "not base64 !!"}), 400, "image")
    form = {k: str(v) for k, v in body.items()}
    refused(http.post("/v1/images/edits", data=form, files={"image": ("x.png", b"junk")}), 400, "image")
    secret = dirs["secret"] / "secret.png"
    secret.write_bytes(png((0, 0, 0)))
    (dirs["allowed"] / "escape.png").unlink(missing_ok=True)
    (dirs["allowed"] / "escape.png").symlink_to(secret)
    for path, why in [(str(secret), "outside"), ("../secret/secret.png", ".."),
                      (str(dirs["allowed"] / "escape.png"), "symbolic link"), ("/etc/passwd", "outside")]:
        message = refused(http.post("/v1/img2img", json={**body, "image_path": path}), 400, "image_path")
        assert why in message, (path, message)
    post_ok(http, "/v1/txt2img", json=body)  # still serving


def test_text_endpoints_are_refused_by_the_image_model(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert "cannot serve" in refused(r, 400)


def test_image_path_is_off_without_allow_dir(sd_dir: Path, dirs: dict[str, Path]) -> None:
    model = ModelStore(onnx=True).resolve(str(sd_dir), source="local", model_type=ModelType.COMPUTER_VISION)
    settings = Settings(onnx=True, n_threads=2, image_output_dir=str(dirs["out"]))
    manager = ModelManager.load(model, settings)
    try:
        assert isinstance(manager.engine, OnnxDiffusionEngine)
        (dirs["allowed"] / "ok.png").write_bytes(png((5, 5, 5)))
        client = TestClient(create_app(settings, manager))
        r = client.post("/v1/img2img", json={"prompt": "x", **SMALL, "image_path": str(dirs["allowed"] / "ok.png")})
        assert "--allow-dir" in refused(r, 400, "image_path")  # type: ignore[arg-type]
    finally:
        manager.close()


# -- start-up ---------------------------------------------------------------------------------------


def _load(path: Path, model_type: ModelType = ModelType.NLP) -> None:
    ModelManager.load(ResolvedModel(name=path.name, path=path, model_type=model_type), Settings(onnx=True))


def _unet_stand_in(path: Path, channels: int, extra: dict[str, list[int]]) -> None:
    """A graph with a UNet's inputs (and more), for the checks made when a pipeline loads."""
    import onnx
    from onnx import TensorProto, helper

    shapes = {"sample": [1, channels, 8, 8], "timestep": [1], "encoder_hidden_states": [1, 77, 32], **extra}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in shapes.items()]
    out = helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, shapes["sample"])
    graph = helper.make_graph([helper.make_node("Identity", ["sample"], ["out_sample"])], "unet", inputs, [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_incomplete_or_other_folders_are_refused_with_the_reason(sd_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(sd_dir, partial)
    shutil.rmtree(partial / "vae_encoder")
    with pytest.raises(StartupError, match="diffusion pipeline without vae_encoder/model.onnx"):
        _load(partial)
    for inputs, why in (({"text_embeds": [1, 1280], "time_ids": [1, 6]}, "an SDXL UNet"), ({}, "9 latent channels")):
        other = tmp_path / why.replace(" ", "-")
        shutil.copytree(sd_dir, other)
        _unet_stand_in(other / "unet" / "model.onnx", channels=4 if inputs else 9, extra=inputs)
        with pytest.raises(StartupError, match=why):
            _load(other)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("hi")
    with pytest.raises(StartupError, match="not an ONNX Stable Diffusion pipeline: found readme.md"):
        _load(tmp_path / "notes", ModelType.COMPUTER_VISION)


def test_a_hub_repository_downloads_only_the_onnx_pipeline(sd_dir: Path, fake_hub: fakehub.FakeHub) -> None:
    files = {str(p.relative_to(sd_dir)): p.read_bytes() for p in sd_dir.rglob("*") if p.is_file()}
    files.update({"unet/diffusion_pytorch_model.safetensors": b"not needed" * 100, "README.md": b"hi"})
    fake_hub.add_hf_repo("org/tiny-sd-onnx", files)
    model = ModelStore(onnx=True).resolve("org/tiny-sd-onnx", source="hf")
    assert (model.path / "unet" / "model.onnx").is_file() and (model.path / "tokenizer" / "merges.txt").is_file()
    assert not (model.path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    manager = ModelManager.load(model, Settings(onnx=True, n_threads=2))
    try:
        engine = manager.engine
        assert isinstance(engine, OnnxDiffusionEngine)
        images, _ = engine.generate(prompt="a fox", width=64, height=64, steps=1, seed=1)
        assert images[0].size == (64, 64)
    finally:
        manager.close()
