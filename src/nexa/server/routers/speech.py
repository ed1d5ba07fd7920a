"""POST /v1/audio/speech (OpenAI) and /v1/txt2speech (the original Nexa server): text to speech on
the served TTS model. The work is in nexa.server.services.speech."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nexa.schemas.speech import SpeechRequest, Txt2SpeechRequest, Txt2SpeechResponse
from nexa.server.openapi import ERRORS
from nexa.server.services import speech as service
from nexa.server.services.speech_audio import FORMATS

router = APIRouter(tags=["audio"], responses=ERRORS)

_AUDIO: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The speech as the file `response_format` names (`pcm`: raw 16-bit little-endian mono "
        "at 24 kHz); with `stream_format: \"audio\"` the same file, sent as it is synthesized.",
        "content": {f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in FORMATS.values()},
    }
}


@router.post("/v1/audio/speech", response_class=Response, responses=_AUDIO)
async def speech(body: SpeechRequest, request: Request) -> Response:
    return await service.speech(request, body)


@router.post("/v1/txt2speech", response_model=Txt2SpeechResponse)
async def txt2speech(body: Txt2SpeechRequest, request: Request) -> Txt2SpeechResponse:
    return await service.txt2speech(request, body)
