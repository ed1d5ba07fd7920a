"""`nexa server onnx`: the ONNX Runtime engines behind the same HTTP layer as the GGUF ones.

Real models, built in the test setup by tests/onnx_models.py from the real weights of MODELS.md
(cached under <cache root>/test-models): SmolLM2-135M-Instruct as an onnxruntime-genai int4
folder (from its Q4_1 GGUF) and all-MiniLM-L6-v2 as a sentence-transformers ONNX export. The
GGUF engines on the same weights are the references: same tokens, same chat prompt, embeddings
within tolerance.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import fakehub
from fakehub import FakeHub
from minilm_gguf import minilm_gguf
from nexa.config import Settings
from nexa.engines.base import Finish, SamplingParams, Task, TextDelta
from nexa.engines.llama.embedder import EmbeddingEngine
from nexa.engines.onnx.embeddings import OnnxEmbeddingEngine
from nexa.engines.onnx.text import OnnxTextEngine
from nexa.errors import StartupError
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.server.app import create_app
from onnx_models import minilm_onnx, smollm2_onnx
from support.servers import LiveServer

fake_hub = fakehub.fake_hub  # the fixture: a local stand-in for the Hugging Face hub

ONNX = Settings(onnx=True, n_ctx=2048, n_threads=2)
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
CAT, KITTEN, STOCKS = "The cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    return smollm2_onnx()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_onnx()


def load_local(folder: Path, model_type: ModelType | None = None) -> ModelManager:
    """The `nexa server onnx -lp FOLDER [-mt TYPE]` path: the ONNX store, then the manager's ONNX loader."""
    return ModelManager.load(ModelStore(onnx=True).resolve(str(folder), source="local", model_type=model_type), ONNX)


@pytest.fixture(scope="session")
def text_manager(smol_dir: Path) -> Iterator[ModelManager]:
    manager = load_local(smol_dir)
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def text_app(text_manager: ModelManager):
    return create_app(ONNX, text_manager)


@pytest.fixture
def onnx_client(text_app) -> TestClient:
    return TestClient(text_app)  # no `with`: the lifespan would close the shared model


@pytest.fixture(scope="session")
def onnx_live(text_app) -> Iterator[LiveServer]:
    with LiveServer(text_app) as server:
        yield server


@pytest.fixture(scope="session")
def emb_manager(minilm_dir: Path) -> Iterator[ModelManager]:
    manager = load_local(minilm_dir, ModelType.TEXT_EMBEDDING)
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def emb_app(emb_manager: ModelManager):
    return create_app(ONNX, emb_manager)


@pytest.fixture
def emb_client(emb_app) -> TestClient:
    return TestClient(emb_app)


@pytest.fixture(scope="session")
def gguf_minilm() -> Iterator[EmbeddingEngine]:
    engine = EmbeddingEngine(minilm_gguf(), name="all-MiniLM-L6-v2.gguf", n_threads=2)
    yield engine
    engine.close()


def complete(client: TestClient, **body) -> dict:
    r = client.post("/v1/completions", json={"temperature": 0, "max_tokens": 24, **body})
    assert r.status_code == 200, r.text
    return r.json()


def chat(client: TestClient, **body) -> dict:
    r = client.post("/v1/chat/completions", json={"messages": FRANCE, "temperature": 0, "max_tokens": 24, **body})
    assert r.status_code == 200, r.text
    return r.json()


# -- text: the engine against the GGUF one on the same weights ---------------------------------


def test_loader_serves_a_genai_folder_with_the_text_engine(text_manager: ModelManager, onnx_client) -> None:
    assert isinstance(text_manager.engine, OnnxTextEngine)
    (entry,) = onnx_client.get("/v1/models").json()["data"]
    assert entry["tasks"] == ["chat", "completion"] and entry["runtime"] == "onnxruntime-genai"
    assert entry["n_ctx"] == 2048 and entry["chat_template"] == "the model's own template"


def test_tokens_and_chat_prompt_match_the_gguf(text_manager: ModelManager, engine) -> None:
    onnx = text_manager.engine
    prompt, stops, special = onnx.render_chat(FRANCE)
    gguf_prompt, _, _ = engine.render_chat(FRANCE)
    assert prompt == gguf_prompt and special and stops == ["<|im_end|>"]
    for text in (prompt, "Hello world, 12345 tokens!", "  naïve café 東京 🎉\n\ttabs", "don't I'll we've"):
        assert onnx.tokenize(text, special=True) == engine.tokenize(text, special=True), text


def test_greedy_completion_is_repeatable_and_carries_both_apis(onnx_client) -> None:
    first = complete(onnx_client, prompt="The capital of France is")
    again = complete(onnx_client, prompt="The capital of France is")
    text = first["choices"][0]["text"]
    assert text.strip() and text == again["choices"][0]["text"] == first["result"]
    assert first["object"] == "text_completion"
    assert first["usage"]["prompt_tokens"] == 5 and 0 < first["usage"]["completion_tokens"] <= 24


def test_chat_answers_through_the_openai_client(onnx_live: LiveServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=onnx_live.url + "/v1", api_key="unused")
    res = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0, max_tokens=24)
    answer = res.choices[0].message.content or ""
    assert "paris" in answer.lower(), answer
    assert res.choices[0].finish_reason in ("stop", "length") and res.usage.completion_tokens > 0


def test_streaming_through_the_openai_client_equals_the_whole_answer(onnx_live: LiveServer, onnx_client) -> None:
    from openai import OpenAI

    whole = chat(onnx_client)["choices"][0]["message"]["content"]
    client = OpenAI(base_url=onnx_live.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="smollm2", messages=FRANCE, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in parts if p]) > 3  # token by token, not one lump
    assert "".join(parts) == whole and finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_stop_words_end_the_answer_before_them(onnx_client) -> None:
    whole = complete(onnx_client, prompt="The capital of France is", max_tokens=40)["choices"][0]["text"]
    word = whole.strip().split()[1]  # a word the greedy answer is known to contain
    cut = complete(onnx_client, prompt="The capital of France is", max_tokens=40, stop_words=[word])
    text = cut["choices"][0]["text"]
    assert word not in text and whole.startswith(text) and cut["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_repeatable(onnx_client) -> None:
    def sample(seed: int) -> str:
        return complete(onnx_client, prompt="Once upon a time", temperature=1.0, top_k=0, top_p=1.0, seed=seed,
                        max_tokens=24)["choices"][0]["text"]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_max_tokens_and_logprobs(onnx_client) -> None:
    body = chat(onnx_client, max_tokens=3, logprobs=True, top_logprobs=2)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    content = choice["logprobs"]["content"]
    assert len(content) == 3
    for item in content:
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert len(tops) == 2 and tops == sorted(tops, reverse=True) and item["logprob"] <= 0
        assert item["logprob"] == pytest.approx(tops[0])  # greedy picks the most likely token
    assert "".join(i["token"] for i in content) == choice["message"]["content"]


def test_cancel_stops_generation(text_manager: ModelManager) -> None:
    onnx = text_manager.engine
    cancel = threading.Event()
    items = []
    for item in onnx.generate(onnx.tokenize("Once upon a time"), SamplingParams(max_tokens=200, temperature=0), cancel):
        items.append(item)
        cancel.set()
    assert len(items) == 1 and isinstance(items[0], TextDelta)
    done = list(onnx.generate(onnx.tokenize("Hi"), SamplingParams(max_tokens=2, temperature=0), threading.Event()))
    assert isinstance(done[-1], Finish)  # the lock was released and the engine still works


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/completions", {"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
        ("/v1/completions", {"prompt": "word " * 2100}, "context"),
        ("/v1/embeddings", {"input": "hi"}, "cannot serve /v1/embeddings"),
    ],
)
def test_what_the_engine_cannot_do_is_a_400(onnx_client, path: str, body: dict, needle: str) -> None:
    r = onnx_client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


# -- embeddings: the ONNX encoder against the GGUF path -----------------------------------------


def vectors(client: TestClient, inputs, **extra) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": inputs, **extra})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)


def test_embeddings_match_the_gguf_engine(emb_client, gguf_minilm: EmbeddingEngine) -> None:
    texts = [CAT, KITTEN, STOCKS, "Naïve café résumé — 東京 in 2024: ¿qué tal?", "word " * 100]
    onnx = vectors(emb_client, texts)
    gguf = gguf_minilm.embed(texts).vectors.astype(np.float64)
    assert onnx.shape == gguf.shape == (5, 384)
    assert np.abs(onnx - gguf).max() < 1e-2
    for a, b in zip(onnx, gguf):
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.9999
    sims = onnx @ onnx.T / np.outer(np.linalg.norm(onnx, axis=1), np.linalg.norm(onnx, axis=1))
    assert sims[0, 1] > sims[0, 2]  # meaning, not just numbers


def test_batching_does_not_change_vectors(emb_client) -> None:
    texts = [CAT, "short", STOCKS * 5, KITTEN]
    together = vectors(emb_client, texts)
    for i, text in enumerate(texts):
        assert np.abs(vectors(emb_client, text)[0] - together[i]).max() < 1e-4


def test_embedding_options_and_the_openai_client(emb_app, emb_client, emb_manager: ModelManager) -> None:
    from openai import OpenAI

    (entry,) = emb_client.get("/v1/models").json()["data"]
    assert entry["tasks"] == ["embedding", "rerank"] and entry["pooling"] == "mean" and entry["max_input_tokens"] == 256
    unit = vectors(emb_client, CAT, normalize=True)[0]
    assert abs(np.linalg.norm(unit) - 1) < 1e-5
    ids = emb_manager.engine.tokenize(CAT)  # type: ignore[attr-defined]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    assert np.abs(vectors(emb_client, [ids])[0] - vectors(emb_client, CAT)[0]).max() < 1e-5
    long_text = "word " * 400
    r = emb_client.post("/v1/embeddings", json={"input": long_text, "truncate": False})
    assert r.status_code == 400 and "256" in r.json()["error"]["message"]
    assert vectors(emb_client, long_text).shape == (1, 384)  # truncated to 256 tokens by default
    with LiveServer(emb_app) as live:
        client = OpenAI(base_url=live.url + "/v1", api_key="unused")
        res = client.embeddings.create(model="minilm", input=[CAT, STOCKS], dimensions=128)
        assert [len(d.embedding) for d in res.data] == [128, 128] and res.usage.prompt_tokens > 0


def test_an_encoder_without_type_is_served_for_embeddings(minilm_dir: Path) -> None:
    # -lp with no -mt defaults to NLP; the folder's layout says what it is.
    manager = load_local(minilm_dir)
    try:
        assert isinstance(manager.engine, OnnxEmbeddingEngine) and manager.engine.supports(Task.EMBEDDING)
    finally:
        manager.close()


# -- start-up errors (those that need no built model: tests/unit/test_onnx_layout.py) ----------


def _load(path: Path, model_type: ModelType = ModelType.NLP) -> None:
    ModelManager.load(ResolvedModel(name=path.name, path=path, model_type=model_type), ONNX)


def test_other_layouts_are_refused_with_the_reason(tmp_path: Path, smol_dir: Path, minilm_dir: Path) -> None:
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    (tmp_path / "sd" / "unet" / "model.onnx").write_bytes(b"x")
    with pytest.raises(StartupError, match="diffusion pipeline"):
        _load(tmp_path / "sd")
    (tmp_path / "seq2seq").mkdir()  # Whisper is served (test_onnx_whisper.py); other seq2seq exports are not
    for name in ("encoder_model.onnx", "decoder_model_merged.onnx", "tokenizer.json"):
        (tmp_path / "seq2seq" / name).write_bytes(b"x")
    (tmp_path / "seq2seq" / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(StartupError, match="sequence-to-sequence export .* of a t5"):
        _load(tmp_path / "seq2seq")
    with pytest.raises(StartupError, match="is a file"):
        _load(smol_dir / "model.onnx")
    with pytest.raises(StartupError, match="not an embedding model"):
        _load(smol_dir, ModelType.TEXT_EMBEDDING)
    with pytest.raises(StartupError, match="not a Whisper speech model .a sentence encoder"):
        _load(minilm_dir, ModelType.AUDIO)
    with pytest.raises(StartupError, match="not MULTIMODAL models"):
        _load(minilm_dir, ModelType.MULTIMODAL)


# -- the store: ONNX catalogue names and whole-folder downloads ---------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_catalogue_name_downloads_only_the_encoder_and_serves_it(
    minilm_dir: Path, fake_hub: FakeHub, gguf_minilm: EmbeddingEngine
) -> None:
    files = _files(minilm_dir)
    files.update({"pytorch_model.bin": b"not needed" * 100, "onnx/model_O4.onnx": b"not needed either"})
    fake_hub.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", files)
    model = ModelStore(onnx=True).resolve("all-MiniLM")
    assert model.name == "onnx:all-MiniLM" and model.model_type == ModelType.TEXT_EMBEDDING
    assert not (model.path / "pytorch_model.bin").exists() and not (model.path / "onnx" / "model_O4.onnx").exists()
    assert (model.path / "onnx" / "model.onnx").is_file() and (model.path / "1_Pooling" / "config.json").is_file()
    manager = ModelManager.load(model, ONNX)
    try:
        got = manager.engine.embed([CAT]).vectors  # type: ignore[attr-defined]
        assert np.abs(got - gguf_minilm.embed([CAT]).vectors).max() < 1e-2
    finally:
        manager.close()
    # Registered under its own name: the GGUF catalogue's all-MiniLM is another model.
    names = [e["name"] for e in ModelStore().list()]
    assert "onnx:all-MiniLM" in names
    n = len(fake_hub.requests)
    assert ModelStore(onnx=True).resolve("all-MiniLM").path == model.path and len(fake_hub.requests) == n


def test_hf_repo_with_several_builds_takes_the_cpu_folder(smol_dir: Path, fake_hub: FakeHub) -> None:
    build = _files(smol_dir)
    files = {f"cpu_and_mobile/cpu-int4/{k}": v for k, v in build.items()}
    files.update({"cuda/cuda-fp16/genai_config.json": json.dumps({"model": {}}).encode(), "README.md": b"hi"})
    fake_hub.add_hf_repo("org/SmolLM2-onnx", files)
    model = ModelStore(onnx=True).resolve("org/SmolLM2-onnx", source="hf")
    assert model.path.name == "cpu-int4" and model.name == "onnx:org/SmolLM2-onnx:cpu_and_mobile/cpu-int4"
    assert not (model.path.parent.parent / "cuda").exists()
    manager = ModelManager.load(model, ONNX)
    try:
        onnx = manager.engine
        out = list(onnx.generate(onnx.tokenize("Hi"), SamplingParams(max_tokens=2, temperature=0),  # type: ignore[attr-defined]
                                 threading.Event()))
        assert isinstance(out[-1], Finish) and out[-1].completion_tokens >= 1
    finally:
        manager.close()
    shutil.rmtree(model.path)  # 90 MB in tmp_path; pytest keeps a few runs' worth
