"""POST /v1/rerank on real models, each in a worker process as `nexa server` runs them:
all-MiniLM-L6-v2 as GGUF and as ONNX (cosine similarity of embeddings), and a reranker GGUF of
the same BERT with rank pooling and a random classification head (tests/reranker_gguf.py),
whose scores are checked against a numpy BERT over the same weights. SmolLM2 and Whisper are
named too, to be refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_embeddings import ReferenceBert

from minilm_gguf import minilm_folder, minilm_gguf
from nexa.config import Settings
from nexa.models.manager import ModelManager
from nexa.models.startup import model_factory
from nexa.models.store import ModelStore
from nexa.models.types import ModelType, ResolvedModel
from nexa.schemas.rerank import RerankResponse
from nexa.server.app import create_app
from onnx_models import minilm_onnx
from reranker_gguf import reranker_gguf, reranker_head

CAT = "The cat sits on the mat."
KITTEN = "A kitten is sitting on a rug."  # CAT's paraphrase
UNRELATED = [
    "Stock markets fell sharply today.",
    "The recipe needs two cups of flour.",
    "Quarterly tax filings are due in April.",
    "The train to Berlin leaves at noon.",
]
DOCUMENTS = [UNRELATED[0], UNRELATED[1], KITTEN, UNRELATED[2], UNRELATED[3]]
MAX_DOCUMENTS = 8  # the app's --max-embedding-inputs


@pytest.fixture(scope="module")
def rerank_manager(smollm2: ResolvedModel, whisper_model: ResolvedModel) -> Iterator[ModelManager]:
    settings = Settings(n_ctx=2048, n_threads=1)  # one thread: see test_embeddings.py's minilm_manager
    minilm = ResolvedModel("minilm", minilm_gguf(), ModelType.TEXT_EMBEDDING)
    reranker = ResolvedModel("reranker", reranker_gguf(), ModelType.TEXT_EMBEDDING)
    manager = ModelManager.load(
        minilm, settings, factory=model_factory(settings), more=[reranker, smollm2, whisper_model]
    )
    yield manager
    manager.close()


@pytest.fixture(scope="module")
def rr(rerank_manager: ModelManager) -> TestClient:
    # No `with`: the lifespan would close the models.
    return TestClient(create_app(Settings(max_embedding_inputs=MAX_DOCUMENTS), rerank_manager))


def ranked(client: TestClient, path: str = "/v1/rerank", **body) -> dict:
    r = client.post(path, json={"query": CAT, "documents": DOCUMENTS, **body})
    assert r.status_code == 200, r.text
    out = r.json()
    assert RerankResponse.model_validate(out).model_dump(mode="json") == out  # the documented shape, exactly
    scores = [x["relevance_score"] for x in out["results"]]
    assert scores == sorted(scores, reverse=True)
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
    return out


def unit(v: list[float]) -> np.ndarray:
    a = np.array(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# -- cosine similarity on embedding models --------------------------------------------------


def test_a_paraphrase_ranks_first_by_cosine(rr: TestClient) -> None:
    out = ranked(rr)
    assert out["model"] == "minilm" and out["method"] == "cosine" and out["object"] == "list"
    assert sorted(x["index"] for x in out["results"]) == list(range(len(DOCUMENTS)))
    best, *rest = out["results"]
    assert best["index"] == DOCUMENTS.index(KITTEN) and "document" not in best
    assert best["relevance_score"] > rest[0]["relevance_score"] + 0.2, out
    # The scores are the cosines of the model's own embeddings, unscaled.
    e = rr.post("/v1/embeddings", json={"model": "minilm", "input": [CAT, *DOCUMENTS]}).json()["data"]
    query = unit(e[0]["embedding"])
    for x in out["results"]:
        assert x["relevance_score"] == pytest.approx(float(query @ unit(e[1 + x["index"]]["embedding"])), abs=1e-5)


def test_top_n_and_return_documents(rr: TestClient) -> None:
    full = ranked(rr)["results"]
    top = ranked(rr, top_n=2, return_documents=True)["results"]
    assert [x["index"] for x in top] == [x["index"] for x in full[:2]]
    assert [x["document"]["text"] for x in top] == [DOCUMENTS[x["index"]] for x in top]
    assert len(ranked(rr, top_n=50)["results"]) == len(DOCUMENTS)  # more than there are: all of them


def test_document_objects_texts_and_the_other_paths(rr: TestClient) -> None:
    plain = ranked(rr)["results"]
    as_objects = ranked(rr, documents=[{"text": d} for d in DOCUMENTS])["results"]
    for path in ("/rerank", "/v1/reranking"):
        assert ranked(rr, path)["results"] == plain
    r = rr.post("/rerank", json={"query": CAT, "texts": DOCUMENTS})  # llama-server's name for them
    assert r.status_code == 200 and r.json()["results"] == plain
    assert as_objects == plain


def test_onnx_embedding_model_ranks_by_cosine_too() -> None:
    settings = Settings(onnx=True, n_ctx=2048, n_threads=1)
    model = ModelStore(onnx=True).resolve(str(minilm_onnx()), source="local", model_type=ModelType.TEXT_EMBEDDING)
    manager = ModelManager.load(model, settings, factory=model_factory(settings))
    try:
        client = TestClient(create_app(settings, manager))
        out = ranked(client)
        assert out["method"] == "cosine" and out["results"][0]["index"] == DOCUMENTS.index(KITTEN)
        r = client.get("/v1/models").json()["data"][0]
        assert r["tasks"] == ["embedding", "rerank"] and r["pid"] != os.getpid()  # in a worker
    finally:
        manager.close()


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"query": CAT, "documents": []}, "documents", "empty"),
        ({"query": CAT}, "documents", "required"),
        ({"documents": DOCUMENTS}, "query", "required"),
        ({"query": "  ", "documents": DOCUMENTS}, "query", "required"),
        ({"query": CAT, "documents": ["x"] * (MAX_DOCUMENTS + 1)}, "documents", "at most 8"),
        ({"query": CAT, "documents": [KITTEN, ""]}, "documents", "documents[1]"),
        ({"query": CAT, "documents": DOCUMENTS, "top_n": 0}, "top_n", "at least 1"),
        ({"query": CAT, "documents": ["word " * 2000], "truncate": False}, "documents", "documents[0]"),
        ({"query": CAT, "documents": ["word " * 600], "truncate": False}, "documents", "documents[0]"),
        ({"query": "word " * 2000, "documents": DOCUMENTS}, "query", "query"),
        ({"query": "word " * 600, "documents": DOCUMENTS}, "query", "query is 602 tokens"),
    ],
)
def test_bad_requests_are_400_naming_the_field(rr: TestClient, body: dict, param: str, needle: str) -> None:
    r = rr.post("/v1/rerank", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and needle in error["message"], error


def test_long_documents_are_cut_by_default(rr: TestClient) -> None:
    for long in ("word " * 2000, "word " * 600):  # past the character bound, and past 512 tokens only
        out = ranked(rr, documents=[long, KITTEN])
        assert out["results"][0]["index"] == 1


def test_wrong_types_are_refused_in_the_envelope(rr: TestClient) -> None:
    r = rr.post("/v1/rerank", json={"query": CAT, "documents": [1, 2]})
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("documents")


def test_chat_and_speech_models_cannot_rerank(
    rr: TestClient, smollm2: ResolvedModel, whisper_model: ResolvedModel
) -> None:
    for name in (smollm2.name, whisper_model.name):
        r = rr.post("/v1/rerank", json={"model": name, "query": CAT, "documents": DOCUMENTS})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task", r.text
        assert "/v1/rerank" in r.json()["error"]["message"]


def test_openapi_shows_the_endpoint(rr: TestClient) -> None:
    spec = rr.get("/openapi.json").json()
    op = spec["paths"]["/v1/rerank"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RerankRequest")
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RerankResponse")
    fields = spec["components"]["schemas"]["RerankRequest"]["properties"]
    assert {"model", "query", "documents", "top_n", "return_documents"} <= set(fields)
    assert "/rerank" not in spec["paths"] and "/v1/reranking" not in spec["paths"]  # served, not listed twice


# -- a reranker model: llama.cpp's rank pooling ---------------------------------------------


def test_reranker_scores_are_its_head_on_each_pair(rr: TestClient) -> None:
    out = ranked(rr, model="reranker", return_documents=True)
    assert out["model"] == "reranker" and out["method"] == "rank"
    folder = minilm_folder()
    bert, head = ReferenceBert(folder), reranker_head(folder)
    query = bert.ids(CAT)  # [CLS] query [SEP]
    for x in out["results"]:
        pair = query + bert.ids(DOCUMENTS[x["index"]])[1:]  # ... document [SEP], as llama-server lays it out
        pooled = np.tanh(head["cls.weight"] @ bert.states(pair)[0] + head["cls.bias"])
        expected = float(head["cls.output.weight"][0] @ pooled + head["cls.output.bias"][0])
        assert x["relevance_score"] == pytest.approx(expected, abs=1e-3), x
    assert len({round(x["relevance_score"], 6) for x in out["results"]}) == len(DOCUMENTS)
    assert all(math.isfinite(x["relevance_score"]) for x in out["results"])


def test_reranker_is_deterministic_and_batching_changes_nothing(rr: TestClient) -> None:
    first = ranked(rr, model="reranker")["results"]
    assert ranked(rr, model="reranker")["results"] == first
    for x in first[:2]:
        alone = ranked(rr, model="reranker", documents=[DOCUMENTS[x["index"]]])["results"][0]
        assert alone["relevance_score"] == pytest.approx(x["relevance_score"], abs=1e-4)
    other = ranked(rr, model="reranker", query="Where does the train go?")["results"]
    assert {x["index"]: x["relevance_score"] for x in other} != {x["index"]: x["relevance_score"] for x in first}


def test_reranker_bounds_and_its_one_task(rr: TestClient) -> None:
    cut = ranked(rr, model="reranker", documents=["word " * 600, KITTEN])
    assert cut["usage"]["prompt_tokens"] <= 512 + 64
    r = rr.post("/v1/rerank", json={"model": "reranker", "query": CAT, "documents": ["word " * 600], "truncate": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "documents", r.text
    r = rr.post("/v1/rerank", json={"model": "reranker", "query": "word " * 510, "documents": [KITTEN]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "query", r.text
    r = rr.post("/v1/embeddings", json={"model": "reranker", "input": CAT})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task"
    entry = rr.get("/v1/models/reranker").json()
    assert entry["tasks"] == ["rerank"] and entry["pooling"] == "rank" and entry["max_input_tokens"] == 512


def test_loader_tells_a_reranker_from_an_embedding_model() -> None:
    from nexa.engines.loader import engine_call
    from nexa.models.gguf_header import gguf_pooling_type

    assert gguf_pooling_type(reranker_gguf()) == 4 and gguf_pooling_type(minilm_gguf()) == 1
    assert gguf_pooling_type(Path(__file__)) is None
    settings = Settings()
    for path, engine in ((reranker_gguf(), "RerankerEngine"), (minilm_gguf(), "EmbeddingEngine")):
        call = engine_call(ResolvedModel("m", path, ModelType.TEXT_EMBEDDING), settings)
        assert call.target.endswith(":" + engine)


def test_nexa_server_serves_both_kinds_from_the_command_line() -> None:
    import httpx

    from support.servers import ServerProcess

    reranker = reranker_gguf()
    with ServerProcess.nexa(str(minilm_gguf()), str(reranker), "-lp", "-mt", "TEXT_EMBEDDING", "-t", "1") as s:
        body = {"query": CAT, "documents": DOCUMENTS, "top_n": 1}
        cosine = httpx.post(s.url + "/v1/rerank", json=body, timeout=60).json()
        assert cosine["method"] == "cosine" and cosine["results"][0]["index"] == DOCUMENTS.index(KITTEN)
        rank = httpx.post(s.url + "/v1/reranking", json={**body, "model": reranker.stem}, timeout=60).json()
        assert rank["method"] == "rank" and rank["model"] == reranker.name and len(rank["results"]) == 1
