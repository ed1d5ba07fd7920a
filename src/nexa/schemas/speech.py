"""Speech synthesis: OpenAI's /v1/audio/speech and the original Nexa server's /v1/txt2speech.

Ranges and choices are checked by the service (server/services/speech.py), so a value out of
range is a 400 naming its field, as on the text endpoints, rather than FastAPI's 422; the schema
still documents them.
"""

from __future__ import annotations

from pydantic import Field

from nexa.schemas.common import KeepAlive, RequestModel, ResponseModel

MAX_INPUT_CHARS = 4096  # OpenAI's limit on `input`
AUDIO_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
STREAM_FORMATS = ("audio",)
TXT2SPEECH_RATES = (8000, 48000)  # the `sampling_rate` range /v1/txt2speech resamples to
TXT2SPEECH_LANGUAGES = {"en": "en-us", "en-us": "en-us", "en-gb": "en-gb"}  # -> espeak-ng's names


class SpeechRequest(RequestModel):
    """OpenAI's speech request. `instructions` (gpt-4o-mini-tts's voice direction) is accepted and
    ignored: Kokoro takes no instructions."""

    model: str | None = Field(None, description="The speech model; OpenAI's names (tts-1) reach the served one")
    keep_alive: KeepAlive = None
    input: str = Field(description=f"The text to speak, at most {MAX_INPUT_CHARS} characters")
    voice: str = Field(description="One of the model's voices (GET /v1/models/{model} lists them)")
    instructions: str | None = None
    response_format: str = Field(
        "mp3", description="mp3, opus (Ogg), aac (ADTS), flac, wav, or pcm (raw 16-bit little-endian mono)",
        json_schema_extra={"enum": list(AUDIO_FORMATS)},
    )
    speed: float = Field(1.0, description="0.25 to 4.0", json_schema_extra={"minimum": 0.25, "maximum": 4.0})
    stream_format: str | None = Field(
        None, description="'audio': the body is sent sentence by sentence as it is synthesized (chunked)",
        json_schema_extra={"enum": [*STREAM_FORMATS, None]},
    )


class Txt2SpeechRequest(RequestModel):
    """The original Nexa server's body. `seed` and `output_dir` are accepted and ignored: Kokoro
    is deterministic, and the server writes no files where a client says."""

    model: str | None = None
    keep_alive: KeepAlive = None
    text: str = Field(description=f"The text to speak, at most {MAX_INPUT_CHARS} characters")
    seed: int | None = 42
    sampling_rate: int = Field(
        24000, description="Hz of the WAV sent back (8000 to 48000); the model speaks at 24000",
        json_schema_extra={"minimum": TXT2SPEECH_RATES[0], "maximum": TXT2SPEECH_RATES[1]},
    )
    language: str = Field(
        "en", description="en (en-us) or en-gb", json_schema_extra={"enum": list(TXT2SPEECH_LANGUAGES)}
    )
    output_dir: str | None = None
    voice: str | None = Field(None, description="One of the model's voices; empty: its default_voice")
    speed: float = Field(1.0, description="0.25 to 4.0", json_schema_extra={"minimum": 0.25, "maximum": 4.0})


class SpeechFile(ResponseModel):
    url: str | None = Field(description="Always null: the speech is sent inline, no file is written")
    base64: str = Field(description="The speech as a WAV file, base64")


class Txt2SpeechResponse(ResponseModel):
    """The original's `{created, data: {url, base64}}` (an object, as it sent, not the list its docs said)."""

    created: int
    data: SpeechFile
    sampling_rate: int
    duration: float = Field(description="seconds of speech")
