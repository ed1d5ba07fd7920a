"""Requests and responses of the image endpoints: the original Nexa server's /v1/txt2img and /v1/img2img, and OpenAI's
/v1/images/generations and /v1/images/edits, with both APIs' field names.

The original Nexa server's names (`sample_steps`, `width`/`height`, `base64`) and OpenAI's (`size` "WxH",
`b64_json`) are accepted side by side. Limits the operator sets (size, steps, n) are checked
here and refused with a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, Field

from nexa.config import Settings
from nexa.errors import InvalidRequest
from nexa.schemas.common import KeepAlive, RequestModel, ResponseModel

SIZE_STEP = 64  # the latent is 1/8 of the image and the UNet halves it twice more


class ImageRequest(RequestModel):
    """The original Nexa server's body (the Nexa server API's defaults), plus `n`, `sampler`, `strength`, `size` and
    `response_format`. `image` carries an img2img input as base64 or a data URI."""

    model: str | None = None
    keep_alive: KeepAlive = None
    prompt: str
    negative_prompt: str = ""
    image_path: str = ""
    image: str | None = Field(None, validation_alias=AliasChoices("image", "init_image"))
    mask: str | None = Field(None, validation_alias=AliasChoices("mask", "mask_image"))
    cfg_scale: float = Field(7.0, validation_alias=AliasChoices("cfg_scale", "guidance_scale"))
    width: int = 256
    height: int = 256
    size: str | None = None  # OpenAI's "WxH"; wins over width/height when given ("auto": the defaults)
    sample_steps: int = Field(20, validation_alias=AliasChoices("sample_steps", "steps", "num_inference_steps"))
    seed: int = 0  # negative: a random seed (the response says which)
    n: int = 1
    sampler: str | None = Field(None, validation_alias=AliasChoices("sampler", "sample_method"))
    strength: float = 0.75  # img2img: 0 keeps the input, 1 replaces it
    response_format: Literal["url", "b64_json", "base64"] | None = None  # None: both

    def checked(self, settings: Settings) -> GenerationParams:
        width, height = self._size()
        limit = settings.max_image_size
        for field, value in (("width", width), ("height", height)):
            if value % SIZE_STEP or not SIZE_STEP <= value <= limit:
                param = "size" if self.size else field
                raise InvalidRequest(
                    f"{field} must be a multiple of {SIZE_STEP} between {SIZE_STEP} and {limit} (got {value}).",
                    param=param,
                )
        if not 1 <= self.sample_steps <= settings.max_image_steps:
            raise InvalidRequest(
                f"sample_steps must be between 1 and {settings.max_image_steps} (got {self.sample_steps}).",
                param="sample_steps",
            )
        if not 1 <= self.n <= settings.max_images_n:
            raise InvalidRequest(f"n must be between 1 and {settings.max_images_n} (got {self.n}).", param="n")
        if not 0.0 <= self.cfg_scale <= 30.0:
            raise InvalidRequest("cfg_scale must be between 0 and 30.", param="cfg_scale")
        if not 0.0 <= self.strength <= 1.0:
            raise InvalidRequest("strength must be between 0 and 1.", param="strength")
        most = settings.max_image_prompt_chars
        for field, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt)):
            if len(text) > most:
                raise InvalidRequest(
                    f"{field} is {len(text)} characters; this server takes at most {most} "
                    f"(--max-image-prompt-chars).",
                    param=field, code="prompt_too_long",
                )
        return GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=width,
            height=height,
            cfg_scale=self.cfg_scale,
            steps=self.sample_steps,
            seed=self.seed,
            n=self.n,
            sampler=self.sampler,
            strength=self.strength,
        )

    def _size(self) -> tuple[int, int]:
        if not self.size or self.size == "auto":
            return self.width, self.height
        w, sep, h = self.size.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise InvalidRequest(f"size must look like '256x256' (width x height), not {self.size!r}.", param="size")
        return int(w), int(h)


class OpenAIImageRequest(ImageRequest):
    """OpenAI's images API: a URL by default, and a fresh seed per call unless one is given."""

    seed: int = -1
    response_format: Literal["url", "b64_json", "base64"] | None = "url"


@dataclass
class GenerationParams:
    """Checked values, as the engine's `generate` takes them (plus the input images)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    cfg_scale: float
    steps: int
    seed: int
    n: int
    sampler: str | None
    strength: float

    def engine_kwargs(self) -> dict[str, Any]:
        return dict(self.__dict__)


class NexaImage(ResponseModel):
    """The original Nexa server's `base64` and OpenAI's `b64_json` (the same PNG), and/or a link, as asked."""

    base64: str | None
    b64_json: str | None
    url: str | None


class NexaImages(ResponseModel):
    """The original Nexa server's `{created, data: [{base64, url}]}`, with the seed used and the size."""

    created: int
    data: list[NexaImage]
    seed: int
    size: str


class OpenAIImage(ResponseModel):
    """A link (`response_format: url`) or the PNG inline, never both."""

    url: str | None = None
    b64_json: str | None = None


class OpenAIImages(ResponseModel):
    created: int
    data: list[OpenAIImage]
    output_format: Literal["png"] = "png"
    size: str
    seed: int
