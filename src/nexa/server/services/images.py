"""Image generation behind the image routers: reading a JSON or multipart request, finding the
input image and mask, the generation itself and the two response shapes (the original Nexa server's and OpenAI's).

Every image is written under a unique name into the operator's output directory; responses
carry it as `url` (a link to this server) and/or inline as base64. Decoding the input, the
generation and PNG encoding all run in a worker thread, so the event loop stays free.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from nexa.config import Settings
from nexa.engines.base import Task
from nexa.errors import InvalidRequest
from nexa.schemas.common import now
from nexa.schemas.images import GenerationParams, ImageRequest, NexaImage, NexaImages, OpenAIImage, OpenAIImages
from nexa.server.files import (
    ImageFiles,
    decode_base64_image,
    image_too_large,
    open_image,
    output_dir,
    read_allowed_file,
)
from nexa.server.threads import Pool, in_thread

Source = Callable[[], bytes]  # reads an input image's bytes (in the worker thread)
Link = Callable[[str], str]  # a saved file's name -> its URL on this server


@dataclass
class Inputs:
    image: Source | None = None
    mask: Source | None = None
    pool: Pool | None = None  # where they are read and decoded (with an image, always set)


@dataclass
class Generated:
    saved: list[tuple[str, bytes]]  # (file name, PNG) per image
    seed: int
    params: GenerationParams


def files(settings: Settings) -> ImageFiles:
    return ImageFiles(output_dir(settings))


async def read_request(request: Request, model: type[ImageRequest]) -> tuple[ImageRequest, dict[str, bytes]]:
    """A JSON body or a multipart form (files `image`/`mask`, also as `image[]`) -> the model and the uploads."""
    ctype = request.headers.get("content-type", "")
    uploads: dict[str, bytes] = {}
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form(max_files=4, max_fields=64)
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                name = key.removesuffix("[]")
                if name not in ("image", "mask"):
                    raise InvalidRequest(f"Unexpected file {key!r}: send `image` and optionally `mask`.", param=key)
                if name in uploads:
                    raise InvalidRequest(f"Send one {name}: this model edits a single image.", param=name)
                limit = request.app.state.settings.max_image_bytes
                data = await value.read(limit + 1)
                if len(data) > limit:
                    raise image_too_large(limit, name)
                uploads[name] = data
            else:
                fields[key] = value
        data_in: Any = fields
    else:
        try:
            data_in = await request.json()
        except ValueError:
            raise InvalidRequest("Send the request as JSON or as multipart/form-data.", param="body") from None
    try:
        return model.model_validate(data_in), uploads
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def inputs(body: ImageRequest, uploads: dict[str, bytes], settings: Settings, pool: Pool) -> Inputs:
    """Where the input image and mask come from; exactly one place each, or a 400."""
    image: list[Source] = []
    if "image" in uploads:
        image.append(lambda: uploads["image"])
    if body.image:
        image.append(lambda: decode_base64_image(body.image or "", "image", settings.max_image_bytes))
    if body.image_path:
        image.append(
            lambda: read_allowed_file(
                body.image_path, settings.allowed_image_dirs, "image_path", max_bytes=settings.max_image_bytes
            )
        )
    if len(image) > 1:
        raise InvalidRequest("Give the input image one way: an upload, `image` or `image_path`.", param="image")
    mask: Source | None = None
    if "mask" in uploads:
        mask = lambda: uploads["mask"]  # noqa: E731
    elif body.mask:
        mask = lambda: decode_base64_image(body.mask or "", "mask", settings.max_image_bytes)  # noqa: E731
    if mask is not None and not image:
        raise InvalidRequest("A mask needs an input image to apply to.", param="mask")
    return Inputs(image[0] if image else None, mask, pool)


def mask_image(data: bytes) -> Image.Image:
    """stable-diffusion.cpp repaints where its mask is white. OpenAI's masks mark the area to
    edit as transparent, so an image with alpha is turned into 255 - alpha; a mask without
    alpha is taken as is (white: repaint)."""
    mask = open_image(data, "mask")
    if "A" in mask.getbands():
        return Image.eval(mask.getchannel("A"), lambda a: 255 - a)
    return mask.convert("L")


def decode_inputs(given: Inputs) -> tuple[Image.Image | None, Image.Image | None]:
    init = open_image(given.image(), "image") if given.image else None
    return init, mask_image(given.mask()) if given.mask else None


async def generate(engine: Any, settings: Settings, body: ImageRequest, task: Task, given: Inputs) -> Generated:
    """`engine`: a DiffusionEngine (the server layer never imports it)."""
    params = body.checked(settings)
    out = files(settings)

    init = mask = None
    if given.image is not None:
        assert given.pool is not None
        # Decoded in the shared pool, apart from the generation: a big image or mask takes a
        # core for a while, and a queue of them must not take every core (503 past the cap).
        init, mask = await given.pool.run(decode_inputs, given)

    def work() -> tuple[list[tuple[str, bytes]], int]:
        images, seed = engine.generate(**params.engine_kwargs(), init_image=init, mask_image=mask)
        return [out.save_png(im, task.value) for im in images], seed

    saved, seed = await in_thread(work)
    return Generated(saved, seed, params)


def nexa_images(made: Generated, fmt: str | None, link: Link) -> NexaImages:
    """The original's shape, `{created, data: [{base64, url}]}`, with OpenAI's `b64_json` beside `base64`."""
    data = []
    for name, png in made.saved:
        b64 = base64.b64encode(png).decode() if fmt != "url" else None
        url = link(name) if fmt in (None, "url") else None
        data.append(NexaImage(base64=b64, b64_json=b64, url=url))
    return NexaImages(created=now(), data=data, seed=made.seed, size=_size(made.params))


def openai_images(made: Generated, fmt: str | None, link: Link) -> OpenAIImages:
    """OpenAI's images response: `data: [{url} | {b64_json}]`, as `response_format` asks."""
    data = [
        OpenAIImage(url=link(name)) if fmt == "url" else OpenAIImage(b64_json=base64.b64encode(png).decode())
        for name, png in made.saved
    ]
    return OpenAIImages(created=now(), data=data, size=_size(made.params), seed=made.seed)


def _size(params: GenerationParams) -> str:
    return f"{params.width}x{params.height}"
