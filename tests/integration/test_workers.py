"""Model workers (nexa/workers): each model in a process of its own, used through RemoteEngine.

The same requests answered through a worker and in-process must be the same answers (the
proxy is transparent: errors keep their status, streams stream, values that cannot travel stay
in the worker); a worker that dies mid-request fails only that request, with a clear error;
closing a worker returns its memory.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from minilm_gguf import minilm_gguf
from nexa.config import Settings
from nexa.engines.base import Finish, SamplingParams, TextDelta
from nexa.errors import ContextLengthExceeded, InvalidRequest, ModelCrashed, StartupError
from nexa.models.manager import ModelManager
from nexa.models.startup import model_factory
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from nexa.workers.protocol import KEEP_ARRAYS_OVER_BYTES, RemoteError
from nexa.workers.remote import Kept, RemoteEngine
from projector import ensure_projector
from sdxs_checkpoint import ensure_checkpoint
from support.images import encode, picture

AUDIO = Path(__file__).resolve().parent.parent / "audio"
CHAT = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24, "temperature": 0}


@pytest.fixture(scope="module")
def worker(smollm2: ResolvedModel) -> Iterator[RemoteEngine]:
    engine = RemoteEngine.start(smollm2, Settings(n_ctx=2048))
    yield engine
    engine.close()


def _client(engine: object, model: ResolvedModel) -> TestClient:
    return TestClient(create_app(Settings(), ModelManager(engine, model)))  # type: ignore[arg-type]


def test_worker_answers_as_the_engine_does(worker: RemoteEngine, client: TestClient, smollm2: ResolvedModel) -> None:
    remote = _client(worker, smollm2)
    body = {**CHAT, "logprobs": True, "top_logprobs": 2}
    here, there = client.post("/v1/chat/completions", json=body), remote.post("/v1/chat/completions", json=body)
    assert here.status_code == there.status_code == 200, there.text
    assert there.json()["choices"] == here.json()["choices"]  # same text, same logprobs, same finish
    assert there.json()["model"] == here.json()["model"]
    # Attributes and the common checks are answered in the server; the rest in the worker.
    assert worker.n_ctx == 2048 and worker.describe()["n_ctx"] == 2048
    assert worker.pid != os.getpid() and worker.alive


def test_stream_through_the_worker(worker: RemoteEngine, smollm2: ResolvedModel) -> None:
    remote = _client(worker, smollm2)
    with remote.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    whole = remote.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
    assert text == whole and text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_whole_answer_comes_as_one_text_item(worker: RemoteEngine) -> None:
    # A request without `stream` reads the whole answer anyway: the worker joins the text.
    prompt = worker.tokenize("Once upon a time")
    params = SamplingParams(max_tokens=24, temperature=0, logprobs=1)
    streamed = list(worker.generate(prompt, params, threading.Event()))
    gathered = list(worker.gathered("generate", prompt, params, threading.Event()))
    texts = [item for item in streamed if isinstance(item, TextDelta)]
    assert len(texts) > 1 and [type(item) for item in gathered] == [TextDelta, Finish]
    assert gathered[0].text == "".join(t.text for t in texts)
    assert [lp.token for lp in gathered[0].logprobs] == [lp.token for t in texts for lp in t.logprobs]
    assert len(gathered[0].logprobs) == gathered[1].completion_tokens == streamed[-1].completion_tokens


def test_errors_raised_in_the_worker_keep_their_type(worker: RemoteEngine, smollm2: ResolvedModel) -> None:
    # The embedder runs in the worker and refuses a text longer than the context: still a 400.
    r = _client(worker, smollm2).post("/v1/embeddings", json={"input": "word " * 3000, "truncate": False})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(ContextLengthExceeded):
        worker.embed(["word " * 3000], truncate=False)


def test_remote_error_rebuilds_type_and_fields() -> None:
    exc = RemoteError.of(InvalidRequest("bad value", param="x", code="c")).rebuild()
    assert isinstance(exc, InvalidRequest)
    assert (exc.message, exc.param, exc.code, exc.status) == ("bad value", "x", "c", 400)
    unknown = RemoteError("nowhere.module:Nope", ("boom",), {}, "Nope: boom").rebuild()
    assert isinstance(unknown, RuntimeError) and "boom" in str(unknown)


def test_cancel_reaches_the_worker(worker: RemoteEngine) -> None:
    prompt = worker.tokenize("Once upon a time")
    cancel = threading.Event()
    items = worker.generate(prompt, SamplingParams(max_tokens=400, temperature=0), cancel)
    next(items)
    cancel.set()
    rest = list(items)  # the worker stops at its next token and ends the stream
    assert len(rest) < 390
    assert worker.stats().running == 0


def test_replies_are_read_on_the_servers_loop(smollm2: ResolvedModel) -> None:
    engine = RemoteEngine.start(smollm2, Settings(n_ctx=1024))
    assert engine._thread is not None  # outside a server, a reader thread
    with TestClient(create_app(Settings(), ModelManager(engine, smollm2))) as served:  # the lifespan runs
        assert engine._loop is not None and engine._thread is None
        with served.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == served.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
        # A blocking call made on the loop itself reads its own reply there instead of waiting forever.
        assert served.portal.call(engine.tokenize, "Once upon a time") == engine.tokenize("Once upon a time")
        assert engine._loop is not None  # still the loop's to read
    assert engine._loop is None  # handed back before the workers closed
    assert not engine.alive


@pytest.mark.parametrize("on_loop", [False, True], ids=["reader-thread", "servers-loop"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_crash_mid_stream_fails_only_that_request(
    smollm2: ResolvedModel, client: TestClient, sig: signal.Signals, on_loop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    engine = RemoteEngine.start(smollm2, Settings(n_ctx=1024))
    remote = _client(engine, smollm2)
    if on_loop:  # the lifespan runs: the server's loop reads the worker's replies
        remote.__enter__()
        assert engine._loop is not None
    caplog.set_level(logging.ERROR, logger="nexa.workers")
    try:
        with remote.stream("POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 300, "stream": True}) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
            os.kill(engine.pid, sig)
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][6:])["error"]
        assert error["code"] == "model_crashed" and signal.Signals(sig).name in error["message"], error
        assert not engine.alive
        # Later calls on the dead worker fail at once, not hang (the manager starts a new worker
        # for the next request instead: see the tests further down).
        with pytest.raises(ModelCrashed):
            engine.tokenize("anyone there?")
        # The server logged the signal and the worker's last lines (faulthandler's, for a segfault).
        logged = "\n".join(rec.getMessage() for rec in caplog.records)
        assert f"killed by {signal.Signals(sig).name}" in logged and "model ready" in logged
        if sig == signal.SIGSEGV:
            assert "Segmentation fault" in logged
        # Everything else in this process still answers.
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        if on_loop:
            remote.__exit__(None, None, None)
        engine.close()


def test_load_failure_is_the_workers_own_words(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(StartupError, match="Could not load .*broken.gguf"):
        RemoteEngine.start(ResolvedModel("broken", broken, ModelType.NLP), Settings(n_ctx=256))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_close_returns_the_memory(smollm2: ResolvedModel) -> None:
    before = _rss(os.getpid())
    engine = RemoteEngine.start(smollm2, Settings(n_ctx=2048))
    list(engine.generate(engine.tokenize("Hello"), SamplingParams(max_tokens=8), threading.Event()))
    assert engine.rss_bytes() > 100 << 20  # the weights and KV cache live in the worker...
    pid = engine.pid
    engine.close()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert _rss(os.getpid()) - before < 40 << 20  # ...and none of it in the server
    with pytest.raises(ModelCrashed):
        engine.tokenize("after close")


def _speech(names: list[str]) -> bytes:
    """The committed clips one after another: long enough that the decoded audio stays in the worker."""
    frames = []
    for name in names:
        with wave.open(str(AUDIO / name)) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 1)
            frames.append(w.readframes(w.getnframes()) + b"\0\0" * 8000)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"".join(frames))
    return out.getvalue()


def test_whisper_in_a_worker(whisper_model: ResolvedModel) -> None:
    engine = RemoteEngine.start(whisper_model, Settings(whisper_compute_type="float32"))
    try:
        audio = _speech(["s1.wav", "s3.wav", "s5.wav", "s4.wav", "s6.wav", "s1.wav"])
        decoded = engine.decode(io.BytesIO(audio))
        assert isinstance(decoded, Kept)  # over KEEP_ARRAYS_OVER_BYTES: it stayed in the worker
        assert len(audio) * 2 > KEEP_ARRAYS_OVER_BYTES
        r = _client(engine, whisper_model).post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)})
        assert r.status_code == 200, r.text
        transcripts = json.loads((AUDIO / "transcripts.json").read_text())
        words = set(r.json()["text"].lower().replace(",", " ").replace(".", " ").split())
        expected = set(transcripts["s3.wav"].lower().replace(",", " ").replace(".", " ").split())
        assert len(words & expected) >= len(expected) // 2, r.json()["text"]
    finally:
        engine.close()


def test_embeddings_in_a_worker() -> None:
    model = ResolvedModel("minilm", minilm_gguf(), ModelType.TEXT_EMBEDDING)
    engine = RemoteEngine.start(model, Settings(n_ctx=512, n_threads=1))
    try:
        r = _client(engine, model).post("/v1/embeddings", json={"input": ["a cat", "a kitten", "tax law"]})
        assert r.status_code == 200, r.text
        v = np.array([d["embedding"] for d in r.json()["data"]])
        assert v.shape == (3, 384)
        assert v[0] @ v[1] > v[0] @ v[2]
    finally:
        engine.close()


def test_dropped_results_are_released_in_the_worker(whisper_model: ResolvedModel) -> None:
    engine = RemoteEngine.start(whisper_model, Settings(whisper_compute_type="float32"))
    try:
        kept = engine.decode(io.BytesIO(_speech(["s1.wav"] * 12)))
        assert isinstance(kept, Kept)
        ref = kept.ref
        del kept  # the worker is told to drop it: using the ref again is an error there
        time.sleep(0.5)
        with pytest.raises(KeyError):
            engine.transcribe(Kept(ref, engine), None, threading.Event())
    finally:
        engine.close()


def test_images_in_a_worker(tmp_path: Path) -> None:
    # PIL images travel both ways: the init image there, the made images back.
    model = ResolvedModel("sdxs-random", ensure_checkpoint(_test_models()), ModelType.COMPUTER_VISION)
    engine = RemoteEngine.start(model, Settings(n_threads=2))
    settings = Settings(image_output_dir=str(tmp_path), max_image_size=256, max_image_steps=4)
    client = TestClient(create_app(settings, ModelManager(engine, model)))  # type: ignore[arg-type]
    try:
        small = {"width": 128, "height": 128, "sample_steps": 1, "cfg_scale": 1.0, "seed": 5}
        made = client.post("/v1/txt2img", json={"prompt": "a red square", **small})
        assert made.status_code == 200, made.text
        png = base64.b64decode(made.json()["data"][0]["base64"])
        assert Image.open(io.BytesIO(png)).size == (128, 128)
        red = base64.b64encode(encode(picture("red"))).decode()
        edit = client.post("/v1/img2img", json={"prompt": "blue", "image": red, "strength": 0.5, **small})
        assert edit.status_code == 200, edit.text
        assert edit.json()["data"][0]["base64"] != made.json()["data"][0]["base64"]
    finally:
        engine.close()


def test_vision_prompt_stays_in_the_worker(smollm2: ResolvedModel) -> None:
    # The image prompt holds native pointers: it stays in the worker and comes back as a Ref.
    model = ResolvedModel("smollm2-vision", smollm2.path, ModelType.MULTIMODAL, projector=ensure_projector())
    engine = RemoteEngine.start(model, Settings(n_ctx=1024, n_threads=2))
    try:
        url = "data:image/png;base64," + base64.b64encode(encode(picture("red"))).decode()
        parts = [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": url}}]
        body = {"messages": [{"role": "user", "content": parts}], "temperature": 0, "max_tokens": 8}
        client = _client(engine, model)
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        words_only = {**body, "messages": [{"role": "user", "content": parts[:1]}]}
        text_only = client.post("/v1/chat/completions", json=words_only)
        # The picture's tokens were in the prompt.
        assert r.json()["usage"]["prompt_tokens"] > text_only.json()["usage"]["prompt_tokens"] + 8
    finally:
        engine.close()


def _test_models() -> Path:
    return Path(os.environ.get("NEXA_TEST_MODELS", Path.home() / ".cache" / "nexa" / "test-models"))


# -- workers behind the model manager: what the server does when one dies ----------------------


@pytest.fixture(scope="module")
def pair(smollm2: ResolvedModel) -> Iterator[ModelManager]:
    """Chat and embeddings, each in a worker, behind one manager (as `nexa server A B`)."""
    embedder = ResolvedModel("minilm", minilm_gguf(), ModelType.TEXT_EMBEDDING)
    settings = Settings(n_ctx=512, n_threads=1, parallel=2)
    manager = ModelManager.load(smollm2, settings, factory=model_factory(settings), more=[embedder])
    manager.preload()
    yield manager
    manager.close()


def _pids(client: TestClient) -> dict[str, int]:
    return {m["id"]: m["pid"] for m in client.get("/health").json()["models"] if m.get("pid")}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_the_other_model_answers_and_the_next_request_restarts(pair: ModelManager, sig: signal.Signals) -> None:
    client = TestClient(create_app(Settings(), pair))
    pids = _pids(client)
    assert set(pids) == {"smollm2-135m", "minilm"} and os.getpid() not in pids.values()
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 200, "stream": True}) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        os.kill(pids["smollm2-135m"], sig)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["error"]["code"] == "model_crashed"
    # The embedding model never noticed.
    e = client.post("/v1/embeddings", json={"model": "minilm", "input": "still here"})
    assert e.status_code == 200 and len(e.json()["data"][0]["embedding"]) == 384
    # The next chat starts a new worker and answers.
    again = client.post("/v1/chat/completions", json=CHAT)
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"]
    new = _pids(client)
    assert new["smollm2-135m"] != pids["smollm2-135m"] and new["minilm"] == pids["minilm"]


def test_unloading_ends_the_worker_and_returns_memory(pair: ModelManager) -> None:
    client = TestClient(create_app(Settings(), pair))
    server_rss = _rss(os.getpid())
    pid = _pids(client)["minilm"]
    worker_rss = _rss(pid)
    assert client.post("/v1/models/minilm/unload").status_code == 200
    states = {m["id"]: m["state"] for m in client.get("/v1/models").json()["data"]}
    assert states["minilm"] == "not_loaded"
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    # The worker's memory was its own: the server's is where it was.
    assert worker_rss > 20 << 20 and abs(_rss(os.getpid()) - server_rss) < 30 << 20
    # Loaded again on demand, in a new worker.
    assert client.post("/v1/embeddings", json={"model": "minilm", "input": "back"}).status_code == 200
    assert _pids(client)["minilm"] != pid
