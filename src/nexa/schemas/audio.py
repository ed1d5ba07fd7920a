"""/v1/audio/transcriptions and /v1/audio/translations: the request fields and the JSON
responses (json, verbose_json); text, srt and vtt are plain text (see nexa.server.services.audio).

The seed sent `beam_size`, `language` and `temperature` as query parameters; OpenAI clients
send everything as multipart form fields. The router merges both into one request model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from nexa.engines.whisper import SpeechOptions
from nexa.schemas.common import KeepAlive, RequestModel, ResponseModel

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
    """Everything but the `file` part; `model` picks the speech model (a multipart field like the others)."""

    model: str | None = None
    keep_alive: KeepAlive = None
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


class TranscriptionUsage(ResponseModel):
    type: Literal["duration"] = "duration"
    seconds: int  # the audio's length, rounded up


class Transcription(ResponseModel):
    """response_format=json."""

    text: str
    usage: TranscriptionUsage


class TranscriptionSegment(ResponseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionWord(ResponseModel):
    word: str
    start: float
    end: float


class VerboseTranscription(ResponseModel):
    """response_format=verbose_json: `segments` unless only words were asked, `words` when asked."""

    task: str
    language: str  # the English name ("english"), as OpenAI reports it
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None
    words: list[TranscriptionWord] | None = None
    usage: TranscriptionUsage
