"""Speech endpoints on the real faster-whisper engine with the real Whisper tiny.en model.

The clips in tests/audio/ are espeak-ng speech (see tests/audio/make_clips.py); longer clips
are built here by joining them with pauses. Timings are never asserted (other processes share
the CPU); the benchmark in bench/bench_audio.py prints them instead.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from nexa.config import Settings
from nexa.engines.loader import load_engine
from nexa.engines.whisper import SpeechOptions, TranscriptInfo, WhisperEngine
from nexa.models.manager import ModelManager
from nexa.models.types import ResolvedModel
from nexa.schemas.audio import Transcription, VerboseTranscription
from nexa.server.app import create_app
from support.audio import wer, words
from support.servers import LiveServer, ServerProcess
from support.turns import model_busy

log = logging.getLogger(__name__)
AUDIO = Path(__file__).resolve().parent.parent / "audio"
TRANSCRIPTS: dict[str, str] = json.loads((AUDIO / "transcripts.json").read_text())
SENTENCES = [f"s{i}.wav" for i in range(1, 7)]
FORMATS = ["wav", "mp3", "flac", "ogg", "m4a", "webm"]  # all of sentence 2
RATE = 16000
TIMEOUT = 600  # seconds: the CPU is shared, never assert on speed


# -- helpers ---------------------------------------------------------------------------------

def samples(name: str) -> np.ndarray:
    with wave.open(str(AUDIO / name)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def wav_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype(np.int16).tobytes())
    return buf.getvalue()


def joined(names: list[str], gap_s: float = 1.0) -> tuple[bytes, str, float]:
    """The clips one after another with pauses: (wav bytes, reference text, seconds)."""
    gap = np.zeros(int(gap_s * RATE), dtype=np.int16)
    pcm = np.concatenate([part for n in names for part in (samples(n), gap)])
    return wav_bytes(pcm), " ".join(TRANSCRIPTS[n] for n in names), len(pcm) / RATE


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def whisper_engine(whisper_model: ResolvedModel) -> Iterator[WhisperEngine]:
    # float32, not the CPU default int8: int8 kernels differ between CPUs, and on an AMD EPYC
    # tiny.en heard "let the cool air come in" as "let the kill there come in" (float32 did
    # not), so the accuracy checks below would depend on the machine CI draws.
    engine = load_engine(whisper_model, Settings(whisper_compute_type="float32"))
    yield engine
    engine.close()


def _app(engine: WhisperEngine, model: ResolvedModel, **settings: object):
    return create_app(Settings(**settings), ModelManager(engine, model))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def whisper_app(whisper_engine: WhisperEngine, whisper_model: ResolvedModel):
    return _app(whisper_engine, whisper_model)


@pytest.fixture
def speech(whisper_app) -> TestClient:
    return TestClient(whisper_app)  # no `with`: the lifespan would close the shared engine


@pytest.fixture(scope="session")
def speech_live(whisper_app) -> Iterator[LiveServer]:
    with LiveServer(whisper_app) as server:
        yield server


@pytest.fixture(scope="session")
def oai(speech_live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=speech_live.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="session")
def three_sentences() -> tuple[bytes, str, float]:
    return joined(["s1.wav", "s3.wav", "s5.wav"])


def post(client: Any, content: bytes, *, name: str = "clip.wav", path: str = "transcriptions",
         params: dict | None = None, data: dict | None = None) -> Any:
    """POST a file through a TestClient or an httpx.Client (their response types differ)."""
    extra = {} if isinstance(client, TestClient) else {"timeout": TIMEOUT}  # TestClient has no timeouts
    return client.post(f"/v1/audio/{path}", params=params, data=data, files={"file": (name, content)}, **extra)


def test_queue_past_max_queue_is_503(speech: TestClient, whisper_engine: WhisperEngine) -> None:
    # One transcription holds the model and --max-queue 0 lets nobody wait: the next is a 503
    # at once (with Retry-After), not a thread and an upload held until the model is free.
    with model_busy(whisper_engine._turns):
        r = post(speech, (AUDIO / "s1.wav").read_bytes())
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "--max-queue" in r.json()["error"]["message"]
    assert post(speech, (AUDIO / "s1.wav").read_bytes()).status_code == 200  # served again


# -- the engine and its model ----------------------------------------------------------------

def test_engine_loads_english_only_tiny(whisper_engine: WhisperEngine) -> None:
    assert whisper_engine.multilingual is False
    assert {t.value for t in whisper_engine.tasks} == {"transcribe"}
    assert whisper_engine.device == "cpu" and whisper_engine.compute_type == "float32"  # as asked


@pytest.mark.parametrize(
    ("settings", "compute_type"),
    [({}, "float32"), ({"whisper_compute_type": "int8"}, "int8")],
    ids=["default-on-cpu-is-float32-for-tiny", "int8"],
)
def test_compute_type_and_transcribes(whisper_model: ResolvedModel, settings: dict, compute_type: str) -> None:
    engine = load_engine(whisper_model, Settings(**settings))
    try:
        assert engine.compute_type == compute_type
        items = engine.transcribe(engine.decode(AUDIO / "s3.wav"), SpeechOptions(beam_size=1), threading.Event())
        text = " ".join(i.text for i in items if not isinstance(i, TranscriptInfo))
        assert wer(TRANSCRIPTS["s3.wav"], text) <= 0.2
    finally:
        engine.close()


@pytest.mark.parametrize("ext", FORMATS)
def test_every_format_decodes_to_the_same_speech(whisper_engine: WhisperEngine, ext: str) -> None:
    reference = whisper_engine.decode(AUDIO / "s2.wav")
    audio = whisper_engine.decode(AUDIO / f"s2.{ext}")
    assert audio.dtype == np.float32
    # Lossy codecs pad a little (AAC's priming frame is 64 ms): same length within 0.15 s.
    assert abs(len(audio) - len(reference)) / RATE < 0.15
    assert 0.1 < float(np.abs(audio).max()) <= 1.0


def test_long_audio_takes_the_batched_path(whisper_engine: WhisperEngine) -> None:
    pcm = np.concatenate([samples(n) for n in SENTENCES * 2])
    audio = pcm.astype(np.float32) / 32768.0
    assert len(audio) / RATE >= 30

    def first(opts: SpeechOptions) -> TranscriptInfo:
        # The info comes before any window is decoded; closing the generator frees the model.
        return first_of(whisper_engine, audio, opts)

    assert first(SpeechOptions()).batched is True
    assert first(SpeechOptions(vad_filter=False)).batched is False  # batching cuts at VAD pauses
    assert first(SpeechOptions(vad_filter=True)).batched is True
    assert first(SpeechOptions(beam_size=1, temperature=0.4)).batched is True
    short = whisper_engine.decode(AUDIO / "s1.wav")
    assert first_of(whisper_engine, short, SpeechOptions()).batched is False


def first_of(engine: WhisperEngine, audio: np.ndarray, opts: SpeechOptions) -> TranscriptInfo:
    items = engine.transcribe(audio, opts)
    info = next(items)
    items.close()
    assert isinstance(info, TranscriptInfo)
    return info


# -- accuracy --------------------------------------------------------------------------------

def test_word_error_rate_on_six_sentences(speech: TestClient) -> None:
    errors, total = 0.0, 0
    for name in SENTENCES:
        r = post(speech, (AUDIO / name).read_bytes(), name=name)
        assert r.status_code == 200, r.text
        text = r.json()["text"]
        n = len(words(TRANSCRIPTS[name]))
        errors += wer(TRANSCRIPTS[name], text) * n
        total += n
        log.info("%s: %r", name, text)
    assert errors / total <= 0.10, f"WER {errors / total:.1%}"


def test_long_audio_over_http_while_the_server_keeps_answering(
    speech_live: LiveServer, whisper_engine: WhisperEngine
) -> None:
    content, reference, seconds = joined(SENTENCES + SENTENCES[:3])
    assert seconds > 30  # the batched path
    result: dict[str, httpx.Response] = {}

    def transcribe() -> None:
        with httpx.Client(base_url=speech_live.url) as c:
            result["long"] = post(c, content, data={"response_format": "verbose_json"})

    worker = threading.Thread(target=transcribe)
    worker.start()
    while not whisper_engine.busy and worker.is_alive():
        time.sleep(0.01)
    # The event loop is free while the model works: other requests get answered, and another
    # transcription waits for the model without holding up the server.
    health = httpx.get(speech_live.url + "/health", timeout=TIMEOUT)
    answered_during = whisper_engine.busy
    with httpx.Client(base_url=speech_live.url) as c:
        short = post(c, (AUDIO / "s4.wav").read_bytes())
    worker.join(TIMEOUT)
    assert health.status_code == 200 and answered_during
    assert short.status_code == 200 and wer(TRANSCRIPTS["s4.wav"], short.json()["text"]) <= 0.2
    body = result["long"].json()
    assert result["long"].status_code == 200, body
    assert wer(reference, body["text"]) <= 0.15, body["text"]
    assert body["duration"] == pytest.approx(seconds, abs=0.05)
    starts = [s["start"] for s in body["segments"]]
    assert len(starts) >= 3 and starts == sorted(starts)
    assert body["segments"][-1]["end"] <= seconds + 0.5


def test_client_that_goes_away_stops_the_transcription(
    speech_live: LiveServer, whisper_engine: WhisperEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # 100 s decoded window by window (VAD off: no batching), abandoned by the client after 1 s.
    content, _, seconds = joined(SENTENCES * 4, gap_s=0.8)
    assert seconds > 90
    caplog.set_level(logging.DEBUG, logger="nexa.engine.whisper")  # the engine logs how each call ended
    with pytest.raises(httpx.TimeoutException):
        httpx.post(speech_live.url + "/v1/audio/transcriptions", params={"vad_filter": "false"},
                   files={"file": ("long.wav", content)}, timeout=httpx.Timeout(TIMEOUT, read=1.0))

    def ended() -> list[str]:
        return [r.getMessage() for r in caplog.records if "stopped early" in r.getMessage()
                or "of audio in" in r.getMessage()]

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not ended():
        time.sleep(0.05)
    stopped = [m for m in ended() if "stopped early" in m]
    assert stopped, f"the transcription ran on after the client left: {ended()}"
    got_to = float(re.search(r"at ([0-9.]+)s of", stopped[0]).group(1))  # type: ignore[union-attr]
    assert got_to < seconds - 30  # at least one 30-second window was never decoded
    while whisper_engine.busy:
        time.sleep(0.05)


# -- response formats ------------------------------------------------------------------------

_SRT_CUE = re.compile(r"^(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)$")
_VTT_CUE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)$")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _check_cues(cues: list[tuple[float, float, str]], duration: float) -> None:
    assert len(cues) >= 2, cues  # three sentences with pauses: more than one cue
    previous_end = 0.0
    for start, end, text in cues:
        assert text.strip()
        assert start < end <= duration + 0.5
        assert start >= previous_end - 0.01  # cues follow each other in time
        previous_end = end


def test_srt(speech: TestClient, three_sentences: tuple[bytes, str, float]) -> None:
    content, reference, seconds = three_sentences
    r = post(speech, content, data={"response_format": "srt", "beam_size": "1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    blocks = r.text.strip().split("\n\n")
    cues = []
    for i, block in enumerate(blocks, start=1):
        m = _SRT_CUE.match(block)
        assert m, block
        assert int(m.group(1)) == i
        cues.append((_seconds(*m.group(2, 3, 4, 5)), _seconds(*m.group(6, 7, 8, 9)), m.group(10)))
    _check_cues(cues, seconds)
    assert wer(reference, " ".join(c[2] for c in cues)) <= 0.15


def test_vtt(speech: TestClient, three_sentences: tuple[bytes, str, float]) -> None:
    content, reference, seconds = three_sentences
    r = post(speech, content, data={"response_format": "vtt", "beam_size": "1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/vtt")
    assert r.text.startswith("WEBVTT\n\n")
    cues = []
    for block in r.text.removeprefix("WEBVTT\n\n").strip().split("\n\n"):
        m = _VTT_CUE.match(block)
        assert m, block
        cues.append((_seconds(*m.group(1, 2, 3, 4)), _seconds(*m.group(5, 6, 7, 8)), m.group(9)))
    _check_cues(cues, seconds)
    assert wer(reference, " ".join(c[2] for c in cues)) <= 0.15


def test_text_and_json(speech: TestClient) -> None:
    content = (AUDIO / "s6.wav").read_bytes()
    text = post(speech, content, data={"response_format": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    js = post(speech, content)  # json is the default
    assert js.status_code == 200 and js.headers["content-type"] == "application/json"
    body = js.json()
    assert body["text"] == text.text == text.text.strip()
    assert wer(TRANSCRIPTS["s6.wav"], body["text"]) <= 0.2
    assert body["usage"] == {"type": "duration", "seconds": math.ceil(len(samples("s6.wav")) / RATE)}
    assert Transcription.model_validate(body).model_dump(mode="json") == body  # the documented shape, exactly


def test_verbose_json_with_word_timestamps(speech: TestClient, three_sentences: tuple[bytes, str, float]) -> None:
    content, reference, seconds = three_sentences
    r = post(speech, content, data={"response_format": "verbose_json", "beam_size": "1",
                                    "timestamp_granularities[]": ["segment", "word"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert VerboseTranscription.model_validate(body).model_dump(mode="json") == body
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == pytest.approx(seconds, abs=0.01)
    assert wer(reference, body["text"]) <= 0.15
    segments, all_words = body["segments"], body["words"]
    _check_cues([(s["start"], s["end"], s["text"]) for s in segments], seconds)
    for key in ("id", "seek", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
        assert all(key in s for s in segments)
    assert [w["word"] for w in all_words] == body["text"].split()
    previous = 0.0
    for w in all_words:
        assert previous - 0.01 <= w["start"] <= w["end"]
        previous = w["end"]
        owner = [s for s in segments if s["start"] - 0.01 <= w["start"] and w["end"] <= s["end"] + 0.01]
        assert owner, f"word {w} outside every segment"


def test_verbose_json_words_only(speech: TestClient) -> None:
    r = post(speech, (AUDIO / "s3.wav").read_bytes(),
             data={"response_format": "verbose_json", "timestamp_granularities[]": "word"})
    body = r.json()
    assert r.status_code == 200 and "segments" not in body
    assert VerboseTranscription.model_validate(body).model_dump(mode="json") == body
    assert wer(TRANSCRIPTS["s3.wav"], " ".join(w["word"] for w in body["words"])) <= 0.2


def test_vad_filter_skips_silence_and_keeps_absolute_times(speech: TestClient) -> None:
    pcm = np.concatenate([np.zeros(8 * RATE, dtype=np.int16), samples("s4.wav")])
    r = post(speech, wav_bytes(pcm), data={"vad_filter": "true", "response_format": "verbose_json", "beam_size": "1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert wer(TRANSCRIPTS["s4.wav"], body["text"]) <= 0.2
    assert body["segments"][0]["start"] >= 7.5  # the speech starts after 8 s of silence


# -- request styles --------------------------------------------------------------------------

def test_seed_query_parameters(speech: TestClient) -> None:
    content = (AUDIO / "s5.wav").read_bytes()
    r = post(speech, content, params={"beam_size": 1, "language": "en", "temperature": 0, "response_format": "srt"})
    assert r.status_code == 200 and r.text.startswith("1\n00:00:0")  # the query's response_format applied
    assert post(speech, content, params={"beam_size": 0}).status_code == 422
    assert post(speech, content, params={"temperature": 1.5}).status_code == 422
    r = post(speech, content, params={"language": "klingon"})
    assert r.status_code == 422 and "language" in r.json()["error"]["message"]


def test_openai_form_fields(speech: TestClient) -> None:
    content = (AUDIO / "s5.wav").read_bytes()
    r = post(speech, content, data={"model": "whisper-1", "beam_size": "1", "language": "english",
                                    "temperature": "0", "prompt": "Thanks.", "response_format": "text"})
    assert r.status_code == 200 and wer(TRANSCRIPTS["s5.wav"], r.text) <= 0.2
    assert post(speech, content, data={"beam_size": "0"}).status_code == 422
    assert post(speech, content, data={"response_format": "mp3"}).status_code == 422
    # A form field wins over the same query parameter.
    r = post(speech, content, params={"response_format": "srt"}, data={"response_format": "json", "beam_size": "1"})
    assert r.status_code == 200 and "text" in r.json()


def test_openai_client_every_format(oai: openai.OpenAI) -> None:
    for ext in FORMATS:
        with open(AUDIO / f"s2.{ext}", "rb") as f:
            result = oai.audio.transcriptions.create(model="whisper-1", file=f)
        assert wer(TRANSCRIPTS[f"s2.{ext}"], result.text) <= 0.2, (ext, result.text)


def test_openai_client_verbose_and_subtitles(oai: openai.OpenAI) -> None:
    with open(AUDIO / "s4.wav", "rb") as f:
        verbose = oai.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"],
        )
    assert verbose.language == "english" and verbose.duration > 2
    assert verbose.words and verbose.segments and verbose.words[-1].end <= verbose.segments[-1].end + 0.01
    with open(AUDIO / "s4.wav", "rb") as f:
        subtitles = oai.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert isinstance(subtitles, str) and subtitles.startswith("1\n00:00:00,")


def test_openai_client_translation_needs_a_multilingual_model(oai: openai.OpenAI) -> None:
    with open(AUDIO / "s1.wav", "rb") as f, pytest.raises(openai.BadRequestError) as err:
        oai.audio.translations.create(model="whisper-1", file=f)
    assert err.value.status_code == 400 and "English-only" in str(err.value)


# -- bad uploads -----------------------------------------------------------------------------

def _error(r: Any, status: int, *needles: str) -> None:
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert r.json()["detail"] == message
    for needle in needles:
        assert needle in message, message


def test_bad_uploads(speech: TestClient) -> None:
    _error(post(speech, b"this is plain text, not a recording " * 20, name="notes.wav"), 400, "could not be decoded")
    _error(post(speech, b"\x89PNG\r\n\x1a\n" + bytes(300), name="x.png"), 400, "no audio stream")
    _error(post(speech, b"", name="empty.wav"), 400, "empty")
    header_only = wav_bytes(np.zeros(0, dtype=np.int16))
    _error(post(speech, header_only), 400, "no audio samples")
    _error(speech.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"other": ("a", b"x")}),
           400, "`file`")
    _error(speech.post("/v1/audio/transcriptions", json={"file": "s1.wav"}), 400, "multipart")
    _error(post(speech, (AUDIO / "s1.wav").read_bytes(), path="translations"), 400, "English-only", "translate")
    _error(post(speech, (AUDIO / "s1.wav").read_bytes(), data={"language": "fr"}), 400, "English-only")
    _error(post(speech, (AUDIO / "s1.wav").read_bytes(), data={"timestamp_granularities[]": "word"}),
           400, "verbose_json")
    # ...and the server is still serving.
    r = post(speech, (AUDIO / "s1.wav").read_bytes())
    assert r.status_code == 200 and wer(TRANSCRIPTS["s1.wav"], r.json()["text"]) <= 0.2


def test_upload_size_limit(whisper_engine: WhisperEngine, whisper_model: ResolvedModel) -> None:
    client = TestClient(_app(whisper_engine, whisper_model, max_upload_mb=0.05))  # 51 KiB
    big = (AUDIO / "s1.wav").read_bytes()  # about 110 KiB
    _error(post(client, big), 413, "0.05 MiB", "--max-upload-mb")  # refused from Content-Length

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies to the file itself
        boundary = b"nexa-test-boundary"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for i in range(0, len(big), 16384):
            yield big[i:i + 16384]
        yield b"\r\n--" + boundary + b"--\r\n"

    r = client.post("/v1/audio/transcriptions", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=nexa-test-boundary"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    _error(r, 413, "MiB")
    small = (AUDIO / "s2.ogg").read_bytes()  # 8 KiB of Opus is well inside the limit
    assert post(client, small, name="s2.ogg").status_code == 200


def silent_flac(seconds: int, rate: int = 8000) -> bytes:
    """Silence as FLAC: 10 minutes are about 110 KB, so a long recording is a small upload."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        block = np.zeros((1, rate * 10), dtype=np.int16)
        for _ in range(seconds // 10):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def test_audio_duration_limit(whisper_engine: WhisperEngine, whisper_model: ResolvedModel) -> None:
    client = TestClient(_app(whisper_engine, whisper_model, max_audio_seconds=60))
    flac = silent_flac(600)
    r = post(client, flac, name="long.flac")  # the container says 600 s: refused before decoding
    _error(r, 413, "600 seconds", "--max-audio-seconds")
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("file", "audio_too_long")
    # The same stream with its total length zeroed (unknown, as a streamed FLAC writes it):
    # refused while decoding, once the samples pass the limit.
    unknown = bytearray(flac)
    assert unknown[:4] == b"fLaC"
    unknown[8 + 13] &= 0xF0  # STREAMINFO's 36-bit sample count: the low 4 bits of byte 13...
    unknown[8 + 14:8 + 18] = bytes(4)  # ...and the next four bytes
    _error(post(client, bytes(unknown), name="long.flac"), 413, "runs past", "--max-audio-seconds")
    r = post(client, (AUDIO / "s1.wav").read_bytes())  # still serving, and short audio is heard
    assert r.status_code == 200 and wer(TRANSCRIPTS["s1.wav"], r.json()["text"]) <= 0.2


def test_no_temporary_files_left(speech: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Uploads over 1 MiB are spooled to disk: whatever the outcome, nothing stays behind.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _error(post(speech, b"not audio at all " * 80_000), 400, "could not be decoded")
    pcm = np.concatenate([samples("s3.wav"), np.zeros(20 * RATE, dtype=np.int16)])  # 1.4 MB of wav
    r = post(speech, wav_bytes(pcm), data={"beam_size": "1"})
    # 20 s of silence after the sentence trips tiny.en up on some CPUs ("plating foot boiling"):
    # this test is about the spooled file, so it only checks that the speech was heard.
    text = r.json()["text"].lower()
    assert r.status_code == 200 and "children" in text and "garden" in text
    assert list(tmp_path.iterdir()) == []


# -- command line ----------------------------------------------------------------------------


def test_cli_serves_a_whisper_folder(whisper_model: ResolvedModel) -> None:
    """`nexa server DIR -lp -mt AUDIO` with the speech flags, as a user starts it."""
    with ServerProcess.nexa(
        str(whisper_model.path), "-lp", "-mt", "AUDIO", "--max-upload-mb", "1", "--compute-type", "int8",
    ) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:  # fmt: skip
        r = post(c, (AUDIO / "s2.mp3").read_bytes(), name="s2.mp3")
        assert r.status_code == 200, r.text
        assert wer(TRANSCRIPTS["s2.mp3"], r.json()["text"]) <= 0.2
        entry = c.get("/v1/models").json()["data"][0]
        assert entry["tasks"] == ["transcribe"] and entry["compute_type"] == "int8"
        pcm = np.zeros(40 * RATE, dtype=np.int16)  # 1.2 MiB of silence: over the 1 MiB flag
        _error(post(c, wav_bytes(pcm)), 413, "1 MiB")
