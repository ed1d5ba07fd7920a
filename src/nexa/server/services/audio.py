"""Speech to text behind /v1/audio/transcriptions and /v1/audio/translations.

The upload is a multipart `file`; the options come as form fields (OpenAI clients) or query
parameters (the original Nexa server's clients), form fields winning. The size limit is checked from the
Content-Length header before the body is read, and again on the file itself. Starlette
spools the upload into an anonymous temporary file, which is closed (and so removed) when the
form is closed at the end of the `async with`, whatever happened. Decoding and transcription
run in a worker thread; a client that disconnects stops the transcription at its next segment.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from nexa.config import Settings
from nexa.engines.base import Task
from nexa.engines.whisper import Segment, SpeechToTextEngine, TranscriptInfo
from nexa.errors import InvalidRequest, PayloadTooLarge
from nexa.schemas.audio import (
    LANGUAGES,
    Transcription,
    TranscriptionRequest,
    TranscriptionSegment,
    TranscriptionUsage,
    TranscriptionWord,
    VerboseTranscription,
)
from nexa.server.leases import engine_for
from nexa.server.limits import FORM_OVERHEAD
from nexa.server.threads import collect, in_thread, iterate_in_thread


async def transcribe(
    request: Request, task: Task, endpoint: str
) -> tuple[TranscriptionRequest, TranscriptInfo, list[Segment]]:
    """Read the upload and its options, then run the engine over it."""
    settings: Settings = request.app.state.settings
    limit = int(settings.max_upload_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise _too_large(settings)

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Send the audio as multipart/form-data with the recording in the field `file`.",
                             param="file")
    async with request.form(max_files=1, max_fields=64) as form:
        # Refuse a task the model lacks (translation on an English-only model) only once the
        # upload is read: answering while a client is still sending makes many clients see a
        # broken connection instead of the 400.
        body = _options(request, form)
        engine: SpeechToTextEngine = await engine_for(request, task, endpoint, body.model, body.keep_alive)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("No audio file: send the recording in the multipart field `file`.", param="file")
        if upload.size is not None and upload.size > limit:
            raise _too_large(settings)
        if upload.size == 0:
            raise InvalidRequest("The uploaded file is empty: send a recording in the field `file`.", param="file",
                                 code="empty_file")
        opts = body.options(task.value)
        await in_thread(engine.check, opts)  # e.g. a language an English-only model cannot hear: 400 before decoding
        audio = await in_thread(engine.decode, upload.file, settings.max_audio_seconds)

    items = await collect(request, iterate_in_thread(lambda cancel: engine.transcribe(audio, opts, cancel)))
    info = items[0]
    assert isinstance(info, TranscriptInfo)
    return body, info, [s for s in items[1:] if isinstance(s, Segment)]


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


# ----------------------------------------------------------------------------- the five formats


def render(
    body: TranscriptionRequest, info: TranscriptInfo, segments: list[Segment]
) -> Transcription | VerboseTranscription | Response:
    fmt = body.response_format
    if fmt == "json":
        return json_response(info, segments)
    if fmt == "verbose_json":
        return verbose_json(info, segments, body)
    if fmt == "text":
        return PlainTextResponse(transcript_text(segments))
    if fmt == "srt":
        return PlainTextResponse(srt(segments))
    return Response(vtt(segments), media_type="text/vtt; charset=utf-8")


def transcript_text(segments: list[Segment]) -> str:
    # Segment texts carry their own leading spaces; OpenAI's `text` has none at either end.
    return "".join(s.text for s in segments).strip()


def _usage(info: TranscriptInfo) -> TranscriptionUsage:
    return TranscriptionUsage(seconds=math.ceil(info.duration))


def json_response(info: TranscriptInfo, segments: list[Segment]) -> Transcription:
    return Transcription(text=transcript_text(segments), usage=_usage(info))


def verbose_json(info: TranscriptInfo, segments: list[Segment], body: TranscriptionRequest) -> VerboseTranscription:
    out = VerboseTranscription(
        task=info.task,
        language=LANGUAGES.get(info.language, info.language),
        duration=round(info.duration, 3),
        text=transcript_text(segments),
        usage=_usage(info),
    )
    if "segment" in body.timestamp_granularities:
        out.segments = [
            TranscriptionSegment(
                id=s.id, seek=s.seek, start=round(s.start, 3), end=round(s.end, 3), text=s.text, tokens=s.tokens,
                temperature=s.temperature, avg_logprob=s.avg_logprob, compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
            )
            for s in segments
        ]
    if body.words:
        out.words = [
            TranscriptionWord(word=w.word.strip(), start=round(w.start, 3), end=round(w.end, 3))
            for s in segments for w in s.words
        ]
    return out


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(segments: list[Segment]) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def vtt(segments: list[Segment]) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)
