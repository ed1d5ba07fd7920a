"""Pictures the vision tests send: two clearly different ones, encoded in any format PIL writes."""

from __future__ import annotations

import io

from PIL import Image


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
