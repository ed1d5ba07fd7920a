"""Pictures the vision and image tests send (two clearly different ones, encoded in any format PIL
writes; plain and striped PNGs), and the image endpoints' answers as the image tests check them."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
from PIL import Image

from nexa.schemas.images import NexaImages, OpenAIImages


def picture(kind: str) -> Image.Image:
    """Two clearly different 64x64 pictures with few colours (GIF keeps them exactly)."""
    image = Image.new("RGB", (64, 64), (230, 30, 30) if kind == "red" else (20, 40, 220))
    if kind == "blue":
        for x in range(0, 64, 8):
            for y in range(64):
                image.putpixel((x, y), (250, 250, 250))
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {}
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def png(color: tuple[int, int, int], size: int = 128, stripes: bool = False) -> bytes:
    """A PNG of one colour (with `stripes`, every eighth row inverted: an input that differs)."""
    image = Image.new("RGB", (size, size), color)
    if stripes:
        pixels = np.array(image)
        pixels[::8] = 255 - pixels[::8]
        image = Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pixels(item_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item_b64))))


# The image endpoints' documented answers (the Nexa shape and OpenAI's).
SHAPES = {"/v1/txt2img": NexaImages, "/v1/img2img": NexaImages,
          "/v1/images/generations": OpenAIImages, "/v1/images/edits": OpenAIImages}


def post_ok(http: httpx.Client, path: str, **kwargs: Any) -> dict[str, Any]:
    r = http.post(path, **kwargs)
    assert r.status_code == 200, r.text
    out = r.json()
    assert SHAPES[path].model_validate(out).model_dump(mode="json") == out  # the documented shape, exactly
    return out


def refused(r: httpx.Response, status: int = 400, param: str | None = None) -> str:
    """The refusal's message, after checking its status, its envelope and the field it names."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error["message"]
