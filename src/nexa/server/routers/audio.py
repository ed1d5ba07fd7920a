"""POST /v1/audio/transcriptions and /v1/audio/translations (Whisper via the loaded engine).
The work, and why the handler reads the multipart body itself, is in nexa.server.services.audio."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from nexa.engines.base import Task
from nexa.schemas.audio import Transcription, TranscriptionRequest, VerboseTranscription
from nexa.server.openapi import ERRORS, form_schema, text_alternatives
from nexa.server.services import audio

router = APIRouter(tags=["audio"], responses=ERRORS)


def _body() -> dict[str, Any]:
    """The multipart body, and the options the original Nexa server's clients send as query parameters."""
    form = form_schema(
        TranscriptionRequest, {"file": True}, renamed={"timestamp_granularities": "timestamp_granularities[]"}
    )
    query = [
        {"name": name, "in": "query", "required": False, "schema": form["properties"][name]}
        for name in ("beam_size", "language", "temperature")
    ]
    body = {"required": True, "content": {"multipart/form-data": {"schema": form}}}
    return {"parameters": query, "requestBody": body}


_DOCS: dict[str, Any] = {
    "response_model": Transcription | VerboseTranscription,
    "responses": text_alternatives("text/plain", "text/vtt"),  # response_format text and srt; vtt
    "openapi_extra": _body(),
}


@router.post("/v1/audio/transcriptions", **_DOCS)
async def transcriptions(request: Request) -> Any:
    body, info, segments = await audio.transcribe(request, Task.TRANSCRIBE, "/v1/audio/transcriptions")
    return audio.render(body, info, segments)


@router.post("/v1/audio/translations", **_DOCS)
async def translations(request: Request) -> Any:
    body, info, segments = await audio.transcribe(request, Task.TRANSLATE, "/v1/audio/translations")
    return audio.render(body, info, segments)
