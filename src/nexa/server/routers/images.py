"""Image generation: the original Nexa server's /v1/txt2img and /v1/img2img, OpenAI's /v1/images/generations
and /v1/images/edits, and /v1/files/{name}, which serves the images they wrote. The work is
in nexa.server.services.images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from nexa.config import Settings
from nexa.engines.base import Task
from nexa.errors import InvalidRequest
from nexa.schemas.images import ImageRequest, NexaImages, OpenAIImageRequest, OpenAIImages
from nexa.server.leases import engine_for
from nexa.server.openapi import ERRORS, form_schema
from nexa.server.services import images
from nexa.server.services.images import Link

router = APIRouter(tags=["images"], responses=ERRORS)


def _edit_body(model: type[ImageRequest]) -> dict[str, Any]:
    """JSON (the image as base64 or a data URI) or multipart (the image as a file): one path takes both."""
    form = form_schema(model, {"image": True, "mask": False})
    json_schema = {"$ref": f"#/components/schemas/{model.__name__}"}  # the generation route's body
    content = {"application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form}}
    return {"requestBody": {"required": True, "content": content}}


@router.post("/v1/txt2img", response_model=NexaImages)
async def txt2img(body: ImageRequest, request: Request) -> NexaImages:
    settings: Settings = request.app.state.settings
    # As in the original, an input image (image_path/image) makes txt2img an img2img call.
    given = images.inputs(body, {}, settings, request.app.state.preprocess)
    task = Task.IMG2IMG if given.image else Task.TXT2IMG
    made = await images.generate(await _engine(request, task, "/v1/txt2img", body), settings, body, task, given)
    return images.nexa_images(made, body.response_format, _link(request))


@router.post("/v1/img2img", response_model=NexaImages, openapi_extra=_edit_body(ImageRequest))
async def img2img(request: Request) -> NexaImages:
    body, made = await _edit(request, ImageRequest, "/v1/img2img", (
        "img2img needs an input image: upload `image`, send it as base64 or a data URI in `image`, or give an "
        "`image_path` the server may read."))
    return images.nexa_images(made, body.response_format, _link(request))


@router.post("/v1/images/generations", response_model=OpenAIImages)
async def generations(body: OpenAIImageRequest, request: Request) -> OpenAIImages:
    engine = await _engine(request, Task.TXT2IMG, "/v1/images/generations", body)
    made = await images.generate(engine, request.app.state.settings, body, Task.TXT2IMG, images.Inputs())
    return images.openai_images(made, body.response_format, _link(request))


@router.post("/v1/images/edits", response_model=OpenAIImages, openapi_extra=_edit_body(OpenAIImageRequest))
async def edits(request: Request) -> OpenAIImages:
    body, made = await _edit(request, OpenAIImageRequest, "/v1/images/edits",
                             "images/edits needs an `image` (a file upload, base64 or a data URI).")
    return images.openai_images(made, body.response_format, _link(request))


async def _edit(
    request: Request, model: type[ImageRequest], endpoint: str, no_image: str
) -> tuple[ImageRequest, images.Generated]:
    """An img2img request in JSON or multipart, refused with `no_image` when it has no input image."""
    settings: Settings = request.app.state.settings
    body, uploads = await images.read_request(request, model)
    given = images.inputs(body, uploads, settings, request.app.state.preprocess)
    if given.image is None:
        raise InvalidRequest(no_image, param="image")
    engine = await _engine(request, Task.IMG2IMG, endpoint, body)
    made = await images.generate(engine, settings, body, Task.IMG2IMG, given)
    return body, made


@router.get(
    "/v1/files/{name}",
    name="image_file",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def image_file(name: str, request: Request) -> FileResponse:
    path = images.files(request.app.state.settings).path(name)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


async def _engine(request: Request, task: Task, endpoint: str, body: ImageRequest) -> Any:
    return await engine_for(request, task, endpoint, body.model, body.keep_alive)


def _link(request: Request) -> Link:
    return lambda name: str(request.url_for("image_file", name=name))
