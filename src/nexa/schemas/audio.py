"""/v1/audio/transcriptions and /v1/audio/translations: the request fields and the five
response formats (json, text, srt, vtt, verbose_json).

The seed sent `beam_size`, `language` and `temperature` as query parameters; OpenAI clients
send everything as multipart form fields. The router merges both into one request model.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator

from nexa.engines.whisper import Segment, SpeechOptions, TranscriptInfo
from nexa.schemas.common import RequestModel

# Whisper's language codes and the names OpenAI's verbose_json reports ("english").
_LANGUAGES = (
    "en english,zh chinese,de german,es spanish,ru russian,ko korean,fr french,ja japanese,pt portuguese,"
    "tr turkish,pl polish,ca catalan,nl dutch,ar arabic,sv swedish,it italian,id indonesian,hi hindi,"
    "fi finnish,vi vietnamese,he hebrew,uk ukrainian,el greek,ms malay,cs czech,ro romanian,da danish,"
    "hu hungarian,ta tamil,no norwegian,th thai,ur urdu,hr croatian,bg bulgarian,lt lithuanian,la latin,"
    "mi maori,ml malayalam,cy welsh,sk slovak,te telugu,fa persian,lv latvian,bn bengali,sr serbian,"
    "az azerbaijani,sl slovenian,kn kannada,et estonian,mk macedonian,br breton,eu basque,is icelandic,"
    "hy armenian,ne nepali,mn mongolian,bs bosnian,kk kazakh,sq albanian,sw swahili,gl galician,"
    "mr marathi,pa punjabi,si sinhala,km khmer,sn shona,yo yoruba,so somali,af afrikaans,oc occitan,"
    "ka georgian,be belarusian,tg tajik,sd sindhi,gu gujarati,am amharic,yi yiddish,lo lao,uz uzbek,"
    "fo faroese,ht haitian creole,ps pashto,tk turkmen,nn nynorsk,mt maltese,sa sanskrit,"
    "lb luxembourgish,my myanmar,bo tibetan,tl tagalog,mg malagasy,as assamese,tt tatar,haw hawaiian,"
    "ln lingala,ha hausa,ba bashkir,jw javanese,su sundanese,yue cantonese"
)
LANGUAGES: dict[str, str] = dict(pair.split(" ", 1) for pair in _LANGUAGES.split(","))
_BY_NAME = {name: code for code, name in LANGUAGES.items()}

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["segment", "word"]


def _segments_only() -> list[Granularity]:
    return ["segment"]


class TranscriptionRequest(RequestModel):
    """Everything but the `file` part. `model` is accepted and ignored: the server has one model."""

    model: str | None = None
    language: str | None = Field(None, description="Spoken language as ISO-639-1 code or English name; empty: detect")
    prompt: str | None = Field(None, description="Text that guides spelling and style (Whisper's initial prompt)")
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0, description="0: beam search, raised only where decoding fails")
    beam_size: int = Field(5, ge=1, le=16)
    timestamp_granularities: list[Granularity] = Field(
        default_factory=_segments_only, description="verbose_json only; 'word' adds word timings"
    )
    vad_filter: bool | None = Field(None, description="Skip non-speech with Silero VAD; empty: only for long audio")

    @field_validator("language", mode="before")
    @classmethod
    def _language(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
            return None
        if not isinstance(value, str):
            return value
        key = value.strip().lower()
        code = _BY_NAME.get(key, key)
        if code not in LANGUAGES:
            raise ValueError(f"unknown language {value!r}: use a code such as 'en' or 'fr', or leave it empty")
        return code

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities

    def options(self, task: str) -> SpeechOptions:
        return SpeechOptions(
            task=task,
            language=self.language,
            beam_size=self.beam_size,
            temperature=self.temperature,
            prompt=self.prompt,
            word_timestamps=self.words and self.response_format == "verbose_json",
            vad_filter=self.vad_filter,
        )


def transcript_text(segments: list[Segment]) -> str:
    # Segment texts carry their own leading spaces; OpenAI's `text` has none at either end.
    return "".join(s.text for s in segments).strip()


def _usage(info: TranscriptInfo) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(info.duration)}


def json_response(info: TranscriptInfo, segments: list[Segment]) -> dict[str, Any]:
    return {"text": transcript_text(segments), "usage": _usage(info)}


def verbose_json(info: TranscriptInfo, segments: list[Segment], body: TranscriptionRequest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": info.task,
        "language": LANGUAGES.get(info.language, info.language),
        "duration": round(info.duration, 3),
        "text": transcript_text(segments),
    }
    if "segment" in body.timestamp_granularities:
        out["segments"] = [
            {
                "id": s.id, "seek": s.seek, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                "tokens": s.tokens, "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob,
            }
            for s in segments
        ]
    if body.words:
        out["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in segments for w in s.words
        ]
    out["usage"] = _usage(info)
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
