"""POST /v1/audio/transcriptions and /v1/audio/translations (Whisper via the loaded engine).

The upload is a multipart `file`; the options come as form fields (OpenAI clients) or query
parameters (the seed's clients), form fields winning. The size limit is checked from the
Content-Length header before the body is read, and again on the file itself. Starlette
spools the upload into an anonymous temporary file, which is closed (and so removed) when the
form is closed at the end of the `async with`, whatever happened. Decoding and transcription
run in a worker thread; a client that disconnects stops the transcription at its next segment.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from nexa.config import Settings
from nexa.engines.base import Task
from nexa.engines.whisper import Segment, TranscriptInfo, WhisperEngine
from nexa.errors import InvalidRequest, PayloadTooLarge
from nexa.schemas.audio import TranscriptionRequest, json_response, srt, verbose_json, vtt
from nexa.server.threads import collect, iterate_in_thread

router = APIRouter(tags=["audio"])

# Multipart framing and the small option fields around the file.
_FORM_OVERHEAD = 64 * 1024


def _openapi(model: type[TranscriptionRequest]) -> dict[str, Any]:
    """Document the multipart body (the handler parses it itself, to check its size first)."""
    schema = model.model_json_schema()
    props = dict(schema["properties"])
    props["timestamp_granularities[]"] = props.pop("timestamp_granularities")  # as OpenAI clients name it
    schema["properties"] = {"file": {"type": "string", "format": "binary"}, **props}
    schema["required"] = ["file"]
    query = [
        {"name": name, "in": "query", "required": False, "schema": props[name]}
        for name in ("beam_size", "language", "temperature")
    ]
    return {
        "parameters": query,
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}},
    }


@router.post("/v1/audio/transcriptions", openapi_extra=_openapi(TranscriptionRequest))
async def transcriptions(request: Request) -> Any:
    return await _speech(request, Task.TRANSCRIBE, "/v1/audio/transcriptions")


@router.post("/v1/audio/translations", openapi_extra=_openapi(TranscriptionRequest))
async def translations(request: Request) -> Any:
    return await _speech(request, Task.TRANSLATE, "/v1/audio/translations")


async def _speech(request: Request, task: Task, endpoint: str) -> Any:
    settings: Settings = request.app.state.settings
    limit = int(settings.max_upload_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD:
        raise _too_large(settings)

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Send the audio as multipart/form-data with the recording in the field `file`.",
                             param="file")
    async with request.form(max_files=1, max_fields=64) as form:
        # Refuse a task the model lacks (translation on an English-only model) only once the
        # upload is read: answering while a client is still sending makes many clients see a
        # broken connection instead of the 400.
        engine: WhisperEngine = request.app.state.manager.get(task, endpoint)
        body = _options(request, form)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("No audio file: send the recording in the multipart field `file`.", param="file")
        if upload.size is not None and upload.size > limit:
            raise _too_large(settings)
        if upload.size == 0:
            raise InvalidRequest("The uploaded file is empty: send a recording in the field `file`.", param="file",
                                 code="empty_file")
        opts = body.options(task.value)
        engine.check(opts)  # e.g. a language an English-only model cannot hear: 400 before decoding
        audio = await asyncio.to_thread(engine.decode, upload.file)

    items = await collect(request, iterate_in_thread(lambda cancel: engine.transcribe(audio, opts, cancel)))
    info = items[0]
    assert isinstance(info, TranscriptInfo)
    segments = [s for s in items[1:] if isinstance(s, Segment)]
    return _render(body, info, segments)


def _options(request: Request, form: FormData) -> TranscriptionRequest:
    fields: dict[str, Any] = {k: v for k, v in request.query_params.items() if k != "timestamp_granularities[]"}
    for key, value in form.multi_items():
        if isinstance(value, str) and not key.startswith("timestamp_granularities"):
            fields[key] = value
    # OpenAI clients repeat `timestamp_granularities[]`; accept the bare name too, from either place.
    grains = [
        g for source in (request.query_params, form)
        for key in ("timestamp_granularities[]", "timestamp_granularities")
        for g in source.getlist(key) if isinstance(g, str)
    ]
    if grains:
        fields["timestamp_granularities"] = [p.strip() for g in grains for p in g.split(",") if p.strip()]
    try:
        body = TranscriptionRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
    if body.words and body.response_format != "verbose_json":
        raise InvalidRequest("Word timestamps need response_format=verbose_json (timestamp_granularities[]=word).",
                             param="timestamp_granularities[]")
    return body


def _too_large(settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is over the server's {settings.max_upload_mb:g} MiB limit: send a shorter or more compressed "
        f"recording (e.g. mp3 or opus), or start the server with a higher --max-upload-mb.",
        param="file", code="file_too_large",
    )


def _render(body: TranscriptionRequest, info: TranscriptInfo, segments: list[Segment]) -> Any:
    fmt = body.response_format
    if fmt == "json":
        return json_response(info, segments)
    if fmt == "verbose_json":
        return verbose_json(info, segments, body)
    if fmt == "text":
        return PlainTextResponse(json_response(info, segments)["text"])
    if fmt == "srt":
        return PlainTextResponse(srt(segments))
    return Response(vtt(segments), media_type="text/vtt; charset=utf-8")
