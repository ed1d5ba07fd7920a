"""`nexa server onnx` serving speech: Whisper tiny.en on ONNX Runtime behind /v1/audio.

The model is the real tiny.en: tests/onnx_whisper.py reads the weights of the CTranslate2 model
faster-whisper serves (MODELS.md) into transformers and exports them in optimum's ONNX layout
(cached under <cache root>/test-models). faster-whisper on the same weights is the reference
for accuracy; the HTTP layer is the same one test_audio.py covers in depth, so here every
response format, the limits and the errors are checked once on the ONNX engine.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_audio import (
    AUDIO,
    RATE,
    SENTENCES,
    TIMEOUT,
    TRANSCRIPTS,
    _check_cues,
    _error,
    joined,
    post,
    samples,
    wav_bytes,
)

from nexa.config import Settings
from nexa.engines.base import Task
from nexa.engines.loader import load_engine
from nexa.engines.onnx.whisper import OnnxWhisperEngine
from nexa.engines.whisper import SpeechOptions, WhisperEngine
from nexa.errors import StartupError
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.schemas.audio import Transcription, VerboseTranscription
from nexa.server.app import create_app
from onnx_whisper import merge_decoders, whisper_onnx
from support.audio import wer, words
from support.servers import ServerProcess

log = logging.getLogger(__name__)
ONNX = Settings(onnx=True, n_threads=2)
_SRT_CUE = re.compile(r"^(\d+)\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n(.+)$")


@pytest.fixture(scope="session")
def onnx_whisper_dir() -> Path:
    return whisper_onnx()


@pytest.fixture(scope="session")
def onnx_speech_manager(onnx_whisper_dir: Path) -> Iterator[ModelManager]:
    # `nexa server onnx -lp FOLDER` without -mt: the folder says it is Whisper.
    model = ModelStore(onnx=True).resolve(str(onnx_whisper_dir), source="local", model_type=None)
    manager = ModelManager.load(model, ONNX)
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def onnx_speech_app(onnx_speech_manager: ModelManager):
    return create_app(ONNX, onnx_speech_manager)


@pytest.fixture
def onnx_speech(onnx_speech_app) -> TestClient:
    return TestClient(onnx_speech_app)  # no `with`: the lifespan would close the shared engine


@pytest.fixture(scope="session")
def faster_whisper(whisper_model: ResolvedModel) -> Iterator[WhisperEngine]:
    # float32, as test_audio.py, for the same reason (int8 kernels differ between CPUs).
    engine = load_engine(whisper_model, Settings(whisper_compute_type="float32"))
    yield engine
    engine.close()


def transcript(engine: WhisperEngine | OnnxWhisperEngine, audio: np.ndarray, **options: object) -> str:
    items = list(engine.transcribe(audio, SpeechOptions(**options)))  # type: ignore[arg-type]
    return "".join(s.text for s in items[1:]).strip()  # type: ignore[union-attr]


# -- the model and its accuracy -------------------------------------------------------------


def test_the_folder_is_served_as_speech(onnx_speech_manager: ModelManager, onnx_speech: TestClient) -> None:
    engine = onnx_speech_manager.engine
    assert isinstance(engine, OnnxWhisperEngine) and engine.graphs == "with_past"
    assert engine.tasks == frozenset({Task.TRANSCRIBE}) and not engine.multilingual  # tiny.en
    card = onnx_speech.get("/v1/models").json()["data"][0]
    assert card["model_type"] == "AUDIO" and card["tasks"] == ["transcribe"] and card["runtime"] == "onnxruntime"


def test_word_error_rate_within_005_of_faster_whisper(
    onnx_speech_manager: ModelManager, faster_whisper: WhisperEngine
) -> None:
    engine = onnx_speech_manager.engine
    assert isinstance(engine, OnnxWhisperEngine)
    totals = {"onnx": 0.0, "faster-whisper": 0.0, "faster-whisper greedy": 0.0}
    n_words = 0
    for name in SENTENCES:
        audio = engine.decode(AUDIO / name)
        assert np.array_equal(audio, faster_whisper.decode(AUDIO / name))  # the same samples in
        reference, n = TRANSCRIPTS[name], len(words(TRANSCRIPTS[name]))
        heard = {
            "onnx": transcript(engine, audio),
            "faster-whisper": transcript(faster_whisper, audio),  # the server's default: beam search
            "faster-whisper greedy": transcript(faster_whisper, audio, beam_size=1),  # the ONNX engine's decoding
        }
        for key, text in heard.items():
            totals[key] += wer(reference, text) * n
        n_words += n
        log.info("%s: %s", name, heard)
    rates = {k: v / n_words for k, v in totals.items()}
    log.info("word error rates: %s", rates)
    assert rates["onnx"] <= rates["faster-whisper"] + 0.05, rates
    assert rates["onnx"] <= rates["faster-whisper greedy"] + 0.05, rates


def test_long_audio_runs_window_after_window(onnx_speech_manager: ModelManager) -> None:
    engine = onnx_speech_manager.engine
    names = [*SENTENCES, *SENTENCES[:4]]
    content, reference, seconds = joined(names)
    assert seconds > 40  # two 30-second windows
    items = list(engine.transcribe(engine.decode(io.BytesIO(content)), SpeechOptions()))
    segments = items[1:]
    assert wer(reference, " ".join(s.text for s in segments)) <= 0.1
    assert segments[-1].seek > 0 and segments[-1].end > 30  # the second window's times follow the first's
    _check_cues([(s.start, s.end, s.text) for s in segments], seconds)


def test_cancel_stops_at_the_next_segment_and_frees_the_model(onnx_speech_manager: ModelManager) -> None:
    engine = onnx_speech_manager.engine
    assert isinstance(engine, OnnxWhisperEngine)
    content, _, _ = joined([*SENTENCES, *SENTENCES[:4]])
    cancel = threading.Event()
    items = engine.transcribe(engine.decode(io.BytesIO(content)), SpeechOptions(), cancel)
    next(items)  # the TranscriptInfo
    next(items)  # the first segment
    assert engine.busy
    cancel.set()
    assert list(items) == [] and not engine.busy


@pytest.mark.parametrize("graphs", ["no_cache", "merged"])
def test_the_other_decoder_layouts_give_the_same_text(onnx_whisper_dir: Path, tmp_path: Path, graphs: str) -> None:
    # decoder_model.onnx alone (re-reading the sequence each token), or optimum's merged decoder
    # (one graph, the cache branch picked by use_cache_branch); both in the hub's onnx/ subfolder.
    (tmp_path / "onnx").mkdir()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json"):
        os.symlink(onnx_whisper_dir / name, tmp_path / name)
    os.symlink(onnx_whisper_dir / "encoder_model.onnx", tmp_path / "onnx" / "encoder_model.onnx")
    if graphs == "merged":
        merge_decoders(onnx_whisper_dir / "decoder_model.onnx", onnx_whisper_dir / "decoder_with_past_model.onnx",
                       tmp_path / "onnx" / "decoder_model_merged.onnx")
    else:
        os.symlink(onnx_whisper_dir / "decoder_model.onnx", tmp_path / "onnx" / "decoder_model.onnx")
    model = ModelStore(onnx=True).resolve(str(tmp_path), source="local", model_type=None)
    assert model.model_type == ModelType.AUDIO
    engine = load_engine(model, ONNX)
    cached = load_engine(ResolvedModel("cached", onnx_whisper_dir, ModelType.AUDIO), ONNX)
    try:
        assert isinstance(engine, OnnxWhisperEngine) and engine.graphs == graphs
        content, _, _ = joined(["s4.wav", "s2.wav"])
        audio = engine.decode(io.BytesIO(content))
        assert transcript(engine, audio) == transcript(cached, audio)
    finally:
        engine.close()
        cached.close()
        (tmp_path / "onnx" / "decoder_model_merged.onnx").unlink(missing_ok=True)  # 200 MB; pytest keeps tmp_path


# -- every response format over HTTP --------------------------------------------------------


def test_json_and_text(onnx_speech: TestClient) -> None:
    content = (AUDIO / "s6.wav").read_bytes()
    js = post(onnx_speech, content)
    assert js.status_code == 200 and js.headers["content-type"] == "application/json", js.text
    body = js.json()
    assert Transcription.model_validate(body).model_dump(mode="json") == body
    assert wer(TRANSCRIPTS["s6.wav"], body["text"]) <= 0.2
    assert body["usage"] == {"type": "duration", "seconds": math.ceil(len(samples("s6.wav")) / RATE)}
    text = post(onnx_speech, content, data={"response_format": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert text.text == body["text"]


def test_srt_and_vtt(onnx_speech: TestClient) -> None:
    content, reference, seconds = joined(["s1.wav", "s3.wav", "s5.wav"])
    r = post(onnx_speech, content, data={"response_format": "srt"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    blocks = [_SRT_CUE.match(b) for b in r.text.strip().split("\n\n")]
    assert all(blocks) and [int(m.group(1)) for m in blocks if m] == list(range(1, len(blocks) + 1))
    assert len(blocks) >= 2 and wer(reference, " ".join(m.group(2) for m in blocks if m)) <= 0.15
    r = post(onnx_speech, content, data={"response_format": "vtt"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/vtt")
    assert r.text.startswith("WEBVTT\n\n") and r.text.count(" --> ") == len(blocks)


def test_verbose_json_with_segments_and_words(onnx_speech: TestClient) -> None:
    content, reference, seconds = joined(["s1.wav", "s3.wav", "s5.wav"])
    r = post(onnx_speech, content, data={"response_format": "verbose_json",
                                         "timestamp_granularities[]": ["segment", "word"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert VerboseTranscription.model_validate(body).model_dump(mode="json") == body
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == pytest.approx(seconds, abs=0.01) and wer(reference, body["text"]) <= 0.15
    segments = body["segments"]
    _check_cues([(s["start"], s["end"], s["text"]) for s in segments], seconds)
    assert all(s["tokens"] and -5 < s["avg_logprob"] <= 0 and 0 <= s["no_speech_prob"] <= 1 for s in segments)
    assert [w["word"] for w in body["words"]] == body["text"].split()
    for w in body["words"]:  # every word inside a segment
        assert any(s["start"] - 0.01 <= w["start"] <= w["end"] <= s["end"] + 0.01 for s in segments), w


def test_prompt_language_and_vad_options(onnx_speech: TestClient) -> None:
    content = (AUDIO / "s5.wav").read_bytes()
    r = post(onnx_speech, content, data={"prompt": "Thanks.", "language": "en", "response_format": "text"})
    assert r.status_code == 200 and wer(TRANSCRIPTS["s5.wav"], r.text) <= 0.2
    pcm = np.concatenate([np.zeros(8 * RATE, dtype=np.int16), samples("s4.wav")])
    r = post(onnx_speech, wav_bytes(pcm), data={"vad_filter": "true", "response_format": "verbose_json"})
    assert r.status_code == 200, r.text
    assert wer(TRANSCRIPTS["s4.wav"], r.json()["text"]) <= 0.2
    assert r.json()["segments"][0]["start"] >= 7.5  # times are the upload's, after 8 s of silence


# -- translations, limits and errors ----------------------------------------------------------


def test_translation_on_english_only_whisper_is_refused_as_on_faster_whisper(onnx_speech: TestClient) -> None:
    r = post(onnx_speech, (AUDIO / "s1.wav").read_bytes(), path="translations")
    _error(r, 400, "English-only", "translate")
    assert r.json()["error"]["code"] == "unsupported_task"


def test_bad_uploads_get_the_error_envelope(onnx_speech: TestClient) -> None:
    r = post(onnx_speech, b"this is plain text, not a recording " * 20, name="notes.wav")
    _error(r, 400, "could not be decoded")
    assert r.json()["error"] == {**r.json()["error"], "type": "invalid_request_error", "param": "file",
                                 "code": "invalid_audio"}
    _error(post(onnx_speech, b"", name="empty.wav"), 400, "empty")
    _error(post(onnx_speech, wav_bytes(np.zeros(0, dtype=np.int16))), 400, "no audio samples")
    _error(post(onnx_speech, (AUDIO / "s1.wav").read_bytes(), data={"language": "fr"}), 400, "English-only")
    _error(post(onnx_speech, (AUDIO / "s1.wav").read_bytes(), data={"timestamp_granularities[]": "word"}),
           400, "verbose_json")
    r = post(onnx_speech, (AUDIO / "s1.wav").read_bytes())  # ...and the server is still serving
    assert r.status_code == 200 and wer(TRANSCRIPTS["s1.wav"], r.json()["text"]) <= 0.2


def test_audio_duration_limit(onnx_speech_manager: ModelManager) -> None:
    client = TestClient(create_app(Settings(onnx=True, max_audio_seconds=2), onnx_speech_manager))
    _error(post(client, (AUDIO / "s1.wav").read_bytes()), 413, "2 seconds")


def test_layouts_a_whisper_folder_is_told_from(onnx_whisper_dir: Path, tmp_path: Path) -> None:
    for name in ("encoder_model.onnx", "decoder_model_merged.onnx", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(StartupError, match="sequence-to-sequence export .* no other"):
        ModelManager.load(ResolvedModel("s2s", tmp_path, ModelType.NLP), ONNX)
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(StartupError, match="optimum Whisper export without"):
        ModelManager.load(ResolvedModel("w", tmp_path, ModelType.AUDIO), ONNX)
    with pytest.raises(StartupError, match="is a Whisper speech model, not a TEXT_EMBEDDING model"):
        ModelManager.load(ResolvedModel("w", onnx_whisper_dir, ModelType.TEXT_EMBEDDING), ONNX)


def test_a_multilingual_folder_detects_the_language_and_translates(onnx_whisper_dir: Path, tmp_path: Path) -> None:
    # No multilingual Whisper weights are reachable here: the tiny.en folder, relabelled multilingual
    # (generation_config.json's is_multilingual and language/task tokens, which its vocabulary holds),
    # runs the multilingual path: language detection, then <|lang|><|task|> after the start token.
    folder = tmp_path / "whisper-tiny-onnx"
    folder.mkdir()
    for f in onnx_whisper_dir.iterdir():
        if f.name != "generation_config.json":
            os.symlink(f, folder / f.name)
    generation = json.loads((onnx_whisper_dir / "generation_config.json").read_text())
    generation |= {"is_multilingual": True, "lang_to_id": {"<|en|>": 50258, "<|de|>": 50261},
                   "task_to_id": {"transcribe": 50358, "translate": 50357}}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    model = ModelStore(onnx=True).resolve(str(folder), source="local", model_type=None)
    manager = ModelManager.load(model, ONNX)
    try:
        assert manager.engine.tasks == frozenset({Task.TRANSCRIBE, Task.TRANSLATE})
        client = TestClient(create_app(ONNX, manager))
        r = post(client, (AUDIO / "s3.wav").read_bytes(), data={"response_format": "verbose_json"})
        assert r.status_code == 200 and r.json()["language"] in ("english", "german"), r.text
        r = post(client, (AUDIO / "s3.wav").read_bytes(), path="translations",
                 data={"language": "en", "response_format": "verbose_json"})
        assert r.status_code == 200 and r.json()["task"] == "translate", r.text
        log.info("translation: %s", r.json())
        r = post(client, (AUDIO / "s3.wav").read_bytes(), data={"language": "de", "response_format": "verbose_json"})
        assert r.status_code == 200 and r.json()["language"] == "german", r.text
    finally:
        manager.close()


# -- the command line -----------------------------------------------------------------------


def test_nexa_server_onnx_serves_a_whisper_folder(onnx_whisper_dir: Path) -> None:
    """`nexa server onnx FOLDER -lp`, as a user starts it: a worker process, the OpenAI request."""
    with ServerProcess.nexa("onnx", str(onnx_whisper_dir), "-lp") as server, \
            httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        r = post(c, (AUDIO / "s2.mp3").read_bytes(), name="s2.mp3", data={"response_format": "verbose_json"})
        assert r.status_code == 200, r.text
        assert wer(TRANSCRIPTS["s2.mp3"], r.json()["text"]) <= 0.2 and r.json()["segments"]
        assert c.get("/v1/models").json()["data"][0]["model_type"] == "AUDIO"
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task", r.text

