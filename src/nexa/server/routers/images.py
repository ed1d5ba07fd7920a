"""Image generation: the seed's /v1/txt2img and /v1/img2img, OpenAI's /v1/images/generations
and /v1/images/edits, and /v1/files/{name}, which serves the images they wrote.

Every image is written under a unique name into the operator's output directory; responses
carry it as `url` (a link to this server) and/or inline as base64. Decoding the input, the
generation itself and PNG encoding all run in a worker thread, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from nexa.config import Settings
from nexa.engines.base import Task
from nexa.errors import InvalidRequest
from nexa.schemas.common import now
from nexa.schemas.images import GenerationParams, ImageRequest, OpenAIImageRequest
from nexa.server.files import (
    ImageFiles,
    decode_base64_image,
    image_too_large,
    open_image,
    output_dir,
    read_allowed_file,
)

router = APIRouter(tags=["images"])
T = TypeVar("T")
Source = Callable[[], bytes]  # reads an input image's bytes (in the worker thread)

_IMG2IMG_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ImageRequest"}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                "prompt": {"type": "string"}}, "required": ["image", "prompt"]}},
        },
        "required": True,
    }
}


@router.post("/v1/txt2img")
async def txt2img(body: ImageRequest, request: Request) -> dict[str, Any]:
    # As in the original, an input image (image_path/image) makes txt2img an img2img call.
    image, mask = _sources(request, body, {})
    task = Task.IMG2IMG if image else Task.TXT2IMG
    return await _nexa(request, body, task, "/v1/txt2img", image, mask)


@router.post("/v1/img2img", openapi_extra=_IMG2IMG_BODY)
async def img2img(request: Request) -> dict[str, Any]:
    body, uploads = await _parse(request, ImageRequest)
    image, mask = _sources(request, body, uploads)
    if image is None:
        raise InvalidRequest("img2img needs an input image: upload `image`, send it as base64 or a data URI in "
                             "`image`, or give an `image_path` the server may read.", param="image")
    return await _nexa(request, body, Task.IMG2IMG, "/v1/img2img", image, mask)


@router.post("/v1/images/generations")
async def generations(body: OpenAIImageRequest, request: Request) -> dict[str, Any]:
    return await _openai(request, body, Task.TXT2IMG, "/v1/images/generations", None, None)


@router.post("/v1/images/edits", openapi_extra=_IMG2IMG_BODY)
async def edits(request: Request) -> dict[str, Any]:
    body, uploads = await _parse(request, OpenAIImageRequest)
    image, mask = _sources(request, body, uploads)
    if image is None:
        raise InvalidRequest("images/edits needs an `image` (a file upload, base64 or a data URI).", param="image")
    return await _openai(request, body, Task.IMG2IMG, "/v1/images/edits", image, mask)


@router.get("/v1/files/{name}", name="image_file", response_class=FileResponse)
async def image_file(name: str, request: Request) -> FileResponse:
    path = _files(request.app.state.settings).path(name)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


# ----------------------------------------------------------------------------- request side


async def _parse(request: Request, model: type[ImageRequest]) -> tuple[ImageRequest, dict[str, bytes]]:
    """A JSON body or a multipart form (files `image`/`mask`, also as `image[]`) -> the model."""
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


def _sources(request: Request, body: ImageRequest, uploads: dict[str, bytes]) -> tuple[Source | None, Source | None]:
    """Where the input image and mask come from; exactly one place each, or a 400."""
    settings: Settings = request.app.state.settings
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
    return (image[0] if image else None), mask


def _mask(data: bytes) -> Image.Image:
    """stable-diffusion.cpp repaints where its mask is white. OpenAI's masks mark the area to
    edit as transparent, so an image with alpha is turned into 255 - alpha; a mask without
    alpha is taken as is (white: repaint)."""
    mask = open_image(data, "mask")
    if "A" in mask.getbands():
        return Image.eval(mask.getchannel("A"), lambda a: 255 - a)
    return mask.convert("L")


# ----------------------------------------------------------------------------- generation


def _files(settings: Settings) -> ImageFiles:
    return ImageFiles(output_dir(settings))


async def _generate(request: Request, body: ImageRequest, task: Task, endpoint: str,
                    image: Source | None, mask: Source | None) -> tuple[list[tuple[str, bytes]], int, GenerationParams]:
    settings: Settings = request.app.state.settings
    engine: Any = request.app.state.manager.get(task, endpoint)  # a DiffusionEngine (routers never import it)
    params = body.checked(settings)
    files = _files(settings)
    kind = task.value

    def work() -> tuple[list[tuple[str, bytes]], int]:
        init = open_image(image(), "image") if image else None
        mask_image = _mask(mask()) if mask else None
        images, seed = engine.generate(**params.engine_kwargs(), init_image=init, mask_image=mask_image)
        return [files.save_png(im, kind) for im in images], seed

    saved, seed = await _in_thread(work)
    return saved, seed, params


async def _nexa(request: Request, body: ImageRequest, task: Task, endpoint: str,
                image: Source | None, mask: Source | None) -> dict[str, Any]:
    """The seed's shape, `{created, data: [{base64, url}]}`, with OpenAI's `b64_json` beside `base64`."""
    saved, seed, params = await _generate(request, body, task, endpoint, image, mask)
    fmt = body.response_format
    data = []
    for name, png in saved:
        b64 = base64.b64encode(png).decode() if fmt != "url" else None
        url = str(request.url_for("image_file", name=name)) if fmt in (None, "url") else None
        data.append({"base64": b64, "b64_json": b64, "url": url})
    return {"created": now(), "data": data, "seed": seed, "size": f"{params.width}x{params.height}"}


async def _openai(request: Request, body: ImageRequest, task: Task, endpoint: str,
                  image: Source | None, mask: Source | None) -> dict[str, Any]:
    """OpenAI's images response: `data: [{url} | {b64_json}]`, as `response_format` asks."""
    saved, seed, params = await _generate(request, body, task, endpoint, image, mask)
    as_url = body.response_format == "url"
    data = [
        {"url": str(request.url_for("image_file", name=name))} if as_url
        else {"b64_json": base64.b64encode(png).decode()}
        for name, png in saved
    ]
    size = f"{params.width}x{params.height}"
    return {"created": now(), "data": data, "output_format": "png", "size": size, "seed": seed}


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in its own thread: image requests queue on the engine's lock for seconds, and
    must not hold the event loop's shared executor (other endpoints use it) while they wait."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if future.done():  # the request was cancelled meanwhile
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(), None)
        except BaseException as exc:  # handed to the awaiting request
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop has closed (server shutting down): nobody is waiting
            pass

    threading.Thread(target=work, name="nexa-images", daemon=True).start()
    return await future
