"""/v1/embeddings on a real embedding model (all-MiniLM-L6-v2, converted to GGUF in the test
setup by tests/minilm_gguf.py) and on SmolLM2 in embedding mode.

The vectors are checked against our own numpy BERT over the same safetensors weights, with
Hugging Face's `tokenizers` giving the token ids, so a wrong converter, tokenizer, pooling or
batching shows up as a wrong number, not just a wrong shape.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from minilm_gguf import minilm_folder, minilm_gguf, read_safetensors
from nexa.config import Settings
from nexa.engines.loader import load_engine
from nexa.errors import StartupError
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.schemas.embeddings import EmbeddingList
from nexa.server.app import create_app
from support.servers import LiveServer

CAT, KITTEN, STOCKS = "The cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_folder()


@pytest.fixture(scope="session")
def minilm_manager(minilm_dir: Path) -> Iterator[ModelManager]:
    # The `-lp FILE -mt TEXT_EMBEDDING` path: the store resolves the file, the manager picks the engine.
    model = ModelStore().resolve(str(minilm_gguf()), source="local", model_type=ModelType.TEXT_EMBEDDING)
    # One thread: llama.cpp's threads busy-wait on each other, and on a machine shared with other
    # test runs two threads can make a 20 ms call take seconds; one thread keeps the suite quick.
    manager = ModelManager.load(model, Settings(n_ctx=2048, n_threads=1))
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def emb_app(minilm_manager: ModelManager):
    return create_app(Settings(), minilm_manager)


@pytest.fixture
def emb(emb_app) -> TestClient:
    return TestClient(emb_app)  # no `with`: the lifespan would close the shared model


@pytest.fixture(scope="session")
def emb_live(emb_app) -> Iterator[LiveServer]:
    with LiveServer(emb_app) as server:
        yield server


def vectors(client: TestClient, inputs, **extra) -> tuple[np.ndarray, dict]:
    r = client.post("/v1/embeddings", json={"input": inputs, **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    assert all(d["object"] == "embedding" for d in body["data"])
    assert EmbeddingList.model_validate(body).model_dump(mode="json") == body  # the documented shape, exactly
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float64), body


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# -- a numpy BERT: the reference ----------------------------------------------------------


class ReferenceBert:
    """sentence-transformers' all-MiniLM-L6-v2 forward pass + mean pooling, in float64 numpy."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.w = {k: v.astype(np.float64) for k, v in read_safetensors(folder / "model.safetensors").items()}
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.erf = np.vectorize(math.erf)

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def _ln(self, x: np.ndarray, p: str) -> np.ndarray:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * self.w[p + ".weight"] + self.w[p + ".bias"]

    def _lin(self, x: np.ndarray, p: str) -> np.ndarray:
        return x @ self.w[p + ".weight"].T + self.w[p + ".bias"]

    def embed(self, text: str) -> np.ndarray:
        return self.states(self.ids(text)).mean(0)

    def states(self, ids: list[int]) -> np.ndarray:
        """The last layer's output for each token (test_rerank.py reads the [CLS] one)."""
        w = self.w
        n, heads, dim = len(ids), 12, 32
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        for layer in range(6):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._lin(x, p + f"attention.self.{m}").reshape(n, heads, dim).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(dim)
            s = np.exp(s - s.max(-1, keepdims=True))
            a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, heads * dim)
            x = self._ln(self._lin(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self._lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + self.erf(h / math.sqrt(2)))  # BERT's exact GELU
            x = self._ln(self._lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        return x


@pytest.fixture(scope="session")
def reference(minilm_dir: Path) -> ReferenceBert:
    return ReferenceBert(minilm_dir)


# -- the embedding model ------------------------------------------------------------------


TRICKY = [
    "Hello world, embeddings are fun!",
    "Naïve café résumé — 東京 in 2024: ¿qué tal?",
    "unbelievably hyperparameterised tokenisation, e.g. GGUF/llama.cpp's WordPiece",
]


def test_tokens_match_hugging_face(minilm_manager: ModelManager, reference: ReferenceBert) -> None:
    embedder = minilm_manager.engine._embedder  # type: ignore[attr-defined]
    for text in TRICKY:
        assert embedder.tokenize(text) == reference.ids(text), text


def test_vectors_match_reference(emb: TestClient, reference: ReferenceBert) -> None:
    got, body = vectors(emb, TRICKY)
    assert got.shape == (3, 384)
    for text, vec in zip(TRICKY, got):
        ref = reference.embed(text)
        assert np.abs(vec - ref).max() < 5e-3, text
        assert cos(vec, ref) > 0.9999, text
    assert body["usage"] == {"prompt_tokens": sum(len(reference.ids(t)) for t in TRICKY),
                             "total_tokens": sum(len(reference.ids(t)) for t in TRICKY)}
    assert body["model"] == "all-MiniLM-L6-v2-f32-v1.gguf"


def test_similar_sentences_score_higher(emb: TestClient) -> None:
    pairs = [
        (CAT, KITTEN, STOCKS),
        ("How do I bake bread at home?", "A simple recipe for homemade bread.", "The train leaves at noon."),
        ("The patient has a high fever.", "The sick man's temperature is elevated.", "I like painting walls blue."),
    ]
    for anchor, close, far in pairs:
        v, _ = vectors(emb, [anchor, close, far])
        assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2, (anchor, cos(v[0], v[1]), cos(v[0], v[2]))


def test_normalize(emb: TestClient) -> None:
    raw, _ = vectors(emb, [CAT, STOCKS])
    unit, _ = vectors(emb, [CAT, STOCKS], normalize=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert all(abs(n - 1.0) > 0.1 for n in np.linalg.norm(raw, axis=1))  # the original's default: raw vectors
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_base64_decodes_to_the_same_floats(emb: TestClient) -> None:
    floats, _ = vectors(emb, [CAT, KITTEN])
    r = emb.post("/v1/embeddings", json={"input": [CAT, KITTEN], "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    assert EmbeddingList.model_validate(r.json()).model_dump(mode="json") == r.json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    assert decoded.shape == (2, 384)
    assert np.array_equal(decoded, floats.astype(np.float32))


def test_dimensions_truncate_and_renormalise(emb: TestClient) -> None:
    full, _ = vectors(emb, CAT)
    small, _ = vectors(emb, CAT, dimensions=64)
    assert small.shape == (1, 64)
    assert np.allclose(small[0], full[0, :64] / np.linalg.norm(full[0, :64]), atol=1e-6)
    same, _ = vectors(emb, CAT, dimensions=384)
    assert np.allclose(same, full)


def test_a_list_equals_single_calls_and_is_batched(emb: TestClient, minilm_manager: ModelManager) -> None:
    texts = [f"Sentence {i}: " + " ".join(["cats", "markets", "bread", "rain"][i % 4] for _ in range(1 + i % 9))
             for i in range(70)]
    texts[5] = "a much longer input " * 60  # ~240 tokens: batches of uneven size
    embedder = minilm_manager.engine._embedder  # type: ignore[attr-defined]
    decodes: list[int] = []
    original = embedder._decode

    def counting(seqs, out):
        decodes.append(len(seqs))
        return original(seqs, out)

    embedder._decode = counting
    try:
        batch, body = vectors(emb, texts)
        # Many sequences per llama_decode, as many as fit in the engine's token budget.
        assert sum(decodes) == len(texts) and len(decodes) <= len(texts) // 5 and max(decodes) >= 10, decodes
        decodes.clear()
        singles = [vectors(emb, t) for t in texts]
        assert decodes == [1] * len(texts)
    finally:
        del embedder._decode
    single = np.concatenate([v for v, _ in singles])
    assert body["usage"]["prompt_tokens"] == sum(b["usage"]["prompt_tokens"] for _, b in singles)
    assert np.abs(batch - single).max() < 2e-3
    assert min(cos(a, b) for a, b in zip(batch, single)) > 0.99999


def test_concurrent_requests_get_their_own_vectors(emb: TestClient) -> None:
    texts = [CAT, KITTEN, STOCKS, "Rain is expected tomorrow.", "She plays the violin."]
    alone = {t: vectors(emb, t)[0][0] for t in texts}
    with ThreadPoolExecutor(5) as pool:
        got = list(pool.map(lambda t: vectors(TestClient(emb.app), [t, t])[0], texts * 2))
    for t, v in zip(texts * 2, got):
        assert np.abs(v - alone[t]).max() < 2e-3


def test_token_id_input(emb: TestClient, reference: ReferenceBert) -> None:
    text_vec, _ = vectors(emb, [CAT, STOCKS])
    ids = [reference.ids(CAT), reference.ids(STOCKS)]
    one, body = vectors(emb, ids[0])
    assert body["usage"]["prompt_tokens"] == len(ids[0])
    many, _ = vectors(emb, ids)
    assert np.allclose(one[0], text_vec[0], atol=1e-5)
    assert np.allclose(many, text_vec, atol=1e-5)


def test_truncate(emb: TestClient, reference: ReferenceBert) -> None:
    long = "the quick brown fox jumps over the lazy dog " * 70  # 632 tokens with [CLS] and [SEP]
    ids = reference.ids(long)
    assert len(ids) > 512
    cut, body = vectors(emb, long)  # truncate defaults to true
    assert body["usage"]["prompt_tokens"] == 512
    # Cut like Hugging Face does: the first 510 word pieces between [CLS] and [SEP].
    same, _ = vectors(emb, ids[:511] + ids[-1:])
    assert np.allclose(cut, same, atol=1e-5)
    r = emb.post("/v1/embeddings", json={"input": ["fine", long], "truncate": False})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "input" and err["code"] == "context_length_exceeded"
    assert "input[1] is 632 tokens" in err["message"] and "512" in err["message"] and "truncate" in err["message"]
    r = emb.post("/v1/embeddings", json={"input": [ids + ids], "truncate": False})
    assert r.status_code == 400 and "512" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"input": ""}, "empty string"),
        ({"input": []}, "empty"),
        ({"input": ["ok", ""]}, "input[1] is an empty string"),
        ({"input": [[]]}, "empty list"),
        ({}, "'input' is required"),
        ({"input": None}, "'input' is required"),
        ({"input": 42}, "not int"),
        ({"input": {"text": "hi"}}, "not dict"),
        ({"input": [1.5]}, "input[0] is a float"),
        ({"input": ["a", [1, 2]]}, "mixes strings and token ids"),
        ({"input": [[1, "x"]]}, "token ids"),
        ({"input": [-3, 5]}, "non-negative"),
        ({"input": [[7592, 10**9]]}, "outside this model's vocabulary"),
        ({"input": ["x"] * 2049}, "at most 2048"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": 385}, "between 1 and 384"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "normalize": "maybe"}, "normalize"),
        ({"input": "x", "truncate": [1]}, "truncate"),
    ],
)
def test_bad_requests_are_400(emb: TestClient, body: dict, needle: str) -> None:
    r = emb.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert needle in err["message"], err["message"]
    assert r.json()["detail"] == err["message"]


def test_body_that_is_not_json_is_400(emb: TestClient) -> None:
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = emb.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text


def test_models_and_other_endpoints(emb: TestClient) -> None:
    (entry,) = emb.get("/v1/models").json()["data"]
    assert entry["tasks"] == ["embedding", "rerank"] and entry["model_type"] == "TEXT_EMBEDDING"
    assert entry["embedding_dim"] == 384 and entry["pooling"] == "mean" and entry["max_input_tokens"] == 512
    r = emb.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task"


def test_openai_client(emb_live: LiveServer, emb: TestClient) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=emb_live.url + "/v1", api_key="unused", timeout=120)
    expected, _ = vectors(emb, [CAT, STOCKS])
    res = client.embeddings.create(model="all-MiniLM-L6-v2", input=[CAT, STOCKS])  # base64 on the wire
    assert [d.index for d in res.data] == [0, 1]
    assert np.allclose(np.array([d.embedding for d in res.data]), expected, atol=1e-6)
    assert res.usage.prompt_tokens == res.usage.total_tokens > 0
    res = client.embeddings.create(model="x", input=CAT, encoding_format="float", dimensions=128)
    assert len(res.data[0].embedding) == 128
    assert abs(np.linalg.norm(res.data[0].embedding) - 1) < 1e-5
    res = client.embeddings.create(model="x", input=[[101, 4937, 102]])
    assert len(res.data[0].embedding) == 384 and res.usage.prompt_tokens == 3


def test_hugging_face_folder_is_refused_clearly(minilm_dir: Path) -> None:
    folder = ResolvedModel(name="minilm", path=minilm_dir, model_type=ModelType.TEXT_EMBEDDING)
    with pytest.raises(StartupError, match="GGUF"):
        load_engine(folder, Settings())


# -- a chat model in embedding mode (the shared SmolLM2 app) ----------------------------------


def test_chat_model_gives_mean_pooled_embeddings(client: TestClient) -> None:
    (entry,) = client.get("/v1/models").json()["data"]
    assert "embedding" in entry["tasks"]
    v, body = vectors(client, [CAT, KITTEN, STOCKS])
    assert v.shape == (3, 576)
    assert body["usage"]["prompt_tokens"] > 10
    assert cos(v[0], v[1]) > cos(v[0], v[2])
    alone, _ = vectors(client, KITTEN)
    assert np.abs(alone[0] - v[1]).max() < 1e-3 * np.abs(v[1]).max()
    # Embedding mode uses its own context: chat still answers afterwards.
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say hi"}],
                                                  "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_a_client_that_leaves_stops_its_embeddings(
    minilm_manager: ModelManager, emb_live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    import httpx

    from nexa.engines.base import Cancelled

    embedder = minilm_manager.engine._embedder  # type: ignore[attr-defined]
    with pytest.raises(Cancelled):  # a cancel already set: no batch is decoded
        stopped = threading.Event()
        stopped.set()
        embedder.embed(["one", "two"], cancel=stopped)

    decodes: list[float] = []
    real = embedder._decode

    def slow(seqs, out):  # each batch takes a while, so the client can leave half-way
        decodes.append(time.monotonic())
        time.sleep(0.1)
        real(seqs, out)

    monkeypatch.setattr(embedder, "_decode", slow)
    texts = [f"sentence number {i} about the weather and the sea" for i in range(2000)]  # ~70 batches
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(emb_live.url + "/v1/embeddings", json={"input": texts}, timeout=1.0)
    time.sleep(1.0)  # the server notices within its poll interval and stops at the next batch
    seen = len(decodes)
    time.sleep(0.5)
    assert len(decodes) == seen < 40, "embedding went on after the client left"
    monkeypatch.setattr(embedder, "_decode", real)
    assert httpx.post(emb_live.url + "/v1/embeddings", json={"input": "still here"}, timeout=30).status_code == 200
