"""Text to speech behind /v1/audio/speech (OpenAI) and /v1/txt2speech (the original Nexa server).

The engine yields PCM a piece at a time (in a worker thread, or a worker process); a whole
answer is encoded once all of it is there, a streamed one (`stream_format: "audio"`) a sentence
at a time as it comes. The first piece is awaited before a stream's headers go out, so a refusal
that only the model can make (an unknown voice, nothing speakable) is still a 400. A client
that goes away stops the synthesis at the next sentence.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from nexa.engines.base import Task
from nexa.engines.speech import SPEEDS, SpeechAudio, SpeechEngine
from nexa.errors import InvalidRequest
from nexa.schemas.common import now
from nexa.schemas.speech import (
    AUDIO_FORMATS,
    MAX_INPUT_CHARS,
    STREAM_FORMATS,
    TXT2SPEECH_LANGUAGES,
    TXT2SPEECH_RATES,
    SpeechFile,
    SpeechRequest,
    Txt2SpeechRequest,
    Txt2SpeechResponse,
)
from nexa.server.leases import engine_for
from nexa.server.services.speech_audio import FORMATS, Encoder, encode, resample
from nexa.server.threads import collect, in_thread, iterate_in_thread


def check_text(text: str, param: str) -> None:
    if not text.strip():
        raise InvalidRequest(f"`{param}` is empty: send the text to speak.", param=param, code="empty_input")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidRequest(
            f"`{param}` is {len(text)} characters; at most {MAX_INPUT_CHARS} are spoken in one request.",
            param=param, code="input_too_long",
        )


def check_speed(speed: float) -> None:
    if not SPEEDS[0] <= speed <= SPEEDS[1]:  # NaN fails both
        raise InvalidRequest(f"`speed` must be between {SPEEDS[0]} and {SPEEDS[1]}, not {speed}.", param="speed")


def check(body: SpeechRequest) -> None:
    check_text(body.input, "input")
    if body.response_format not in AUDIO_FORMATS:
        raise InvalidRequest(
            f"Unknown response_format {body.response_format!r}: use one of {', '.join(AUDIO_FORMATS)}.",
            param="response_format",
        )
    check_speed(body.speed)
    if body.stream_format is not None and body.stream_format not in STREAM_FORMATS:
        raise InvalidRequest(
            f"stream_format {body.stream_format!r} is not served here: use 'audio' (the file sent as it is "
            f"synthesized), or leave it out.",
            param="stream_format",
        )


def _pieces(
    engine: SpeechEngine, text: str, voice: str, speed: float, lang: str, stream: bool = False
) -> AsyncIterator[SpeechAudio]:
    return iterate_in_thread(lambda cancel: engine.speak(text, voice, speed, cancel, lang=lang, stream=stream))


async def speech(request: Request, body: SpeechRequest) -> Response:
    check(body)
    engine: SpeechEngine = await engine_for(request, Task.SPEECH, "/v1/audio/speech", body.model, body.keep_alive)
    fmt = FORMATS[body.response_format]
    pieces = _pieces(engine, body.input, body.voice, body.speed, "en-us", stream=body.stream_format is not None)
    if body.stream_format is None:
        audio = await collect(request, pieces)
        data = await in_thread(encode, b"".join(a.pcm for a in audio), body.response_format, engine.sample_rate)
        return Response(data, media_type=fmt.media_type)
    first = await anext(pieces)
    encoder = Encoder(body.response_format, first.sample_rate, streamed=True)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield await in_thread(encoder.add, first.pcm)
            async for piece in pieces:
                yield await in_thread(encoder.add, piece.pcm)
            yield await in_thread(encoder.finish)
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]  # a client gone mid-stream: the engine stops at its next sentence

    return StreamingResponse(stream(), media_type=fmt.media_type, headers={"Cache-Control": "no-cache"})


async def txt2speech(request: Request, body: Txt2SpeechRequest) -> Txt2SpeechResponse:
    check_text(body.text, "text")
    check_speed(body.speed)
    low, high = TXT2SPEECH_RATES
    if not low <= body.sampling_rate <= high:
        raise InvalidRequest(f"`sampling_rate` must be between {low} and {high} Hz.", param="sampling_rate")
    lang = TXT2SPEECH_LANGUAGES.get(body.language.lower())
    if lang is None:
        raise InvalidRequest(
            f"language {body.language!r} is not spoken here: use one of {', '.join(TXT2SPEECH_LANGUAGES)}.",
            param="language",
        )
    engine: SpeechEngine = await engine_for(request, Task.SPEECH, "/v1/txt2speech", body.model, body.keep_alive)
    voice = body.voice or engine.default_voice
    audio = await collect(request, _pieces(engine, body.text, voice, body.speed, lang))
    pcm = await in_thread(resample, b"".join(a.pcm for a in audio), engine.sample_rate, body.sampling_rate)
    wav = encode(pcm, "wav", body.sampling_rate)  # a header on bytes in hand: no thread needed
    return Txt2SpeechResponse(
        created=now(),
        data=SpeechFile(url=None, base64=base64.b64encode(wav).decode()),
        sampling_rate=body.sampling_rate,
        duration=round(len(pcm) / 2 / body.sampling_rate, 3),
    )
