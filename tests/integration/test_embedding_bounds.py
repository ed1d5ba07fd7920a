"""/v1/embeddings bounds its work before any tokenizing, on the real all-MiniLM-L6-v2 GGUF (512
tokens per input): inputs per request (--max-embedding-inputs), characters per text input
against the tokens the model embeds, token ids per input."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from minilm_gguf import minilm_gguf
from nexa.config import Settings
from nexa.engines.base import CHARS_PER_TOKEN
from nexa.models.manager import ModelManager
from nexa.models.store import ModelStore
from nexa.models.types import ModelType
from nexa.server.app import create_app

MAX_TOKENS = 512  # all-MiniLM-L6-v2's tokens per input
FLOOD = "word " * 1_000_000  # 5 MB of text: about a million tokens


@pytest.fixture(scope="module")
def manager() -> Iterator[ModelManager]:
    model = ModelStore().resolve(str(minilm_gguf()), source="local", model_type=ModelType.TEXT_EMBEDDING)
    manager = ModelManager.load(model, Settings(n_ctx=2048, n_threads=1))
    yield manager
    manager.close()


@pytest.fixture(scope="module")
def emb(manager: ModelManager) -> TestClient:
    return TestClient(create_app(Settings(max_embedding_inputs=3), manager))  # no `with`: it would close the model


@pytest.fixture
def tokenized(manager: ModelManager, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every text the model's tokenizer is given."""
    embedder: Any = manager.engine._embedder  # type: ignore[attr-defined]
    seen: list[int] = []
    real = embedder.tokenize

    def tokenize(text: str) -> list[int]:
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(embedder, "tokenize", tokenize)
    return seen


def error(r: Any, code: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["param"] == "input" and err["type"] == "invalid_request_error"
    return err


def test_inputs_per_request_follow_the_flag(emb: TestClient) -> None:
    assert emb.post("/v1/embeddings", json={"input": ["a", "b", "c"]}).status_code == 200
    err = error(emb.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]}), "too_many_inputs")
    assert "at most 3" in err["message"] and "--max-embedding-inputs" in err["message"]
    error(emb.post("/v1/embeddings", json={"input": [[7592]] * 4}), "too_many_inputs")


def test_a_text_far_past_the_model_is_refused_untokenized(emb: TestClient, tokenized: list[int]) -> None:
    started = time.perf_counter()
    r = emb.post("/v1/embeddings", json={"input": ["fine", FLOOD], "truncate": False})
    err = error(r, "context_length_exceeded")
    assert f"input[1] is {len(FLOOD)} characters" in err["message"] and str(MAX_TOKENS) in err["message"]
    assert tokenized == [] and time.perf_counter() - started < 5


def test_truncate_cuts_a_long_text_before_tokenizing_it(emb: TestClient, tokenized: list[int]) -> None:
    cut = emb.post("/v1/embeddings", json={"input": FLOOD})
    assert cut.status_code == 200, cut.text
    assert cut.json()["usage"]["prompt_tokens"] == MAX_TOKENS
    assert max(tokenized) <= MAX_TOKENS * CHARS_PER_TOKEN
    # the same first 512 tokens as a text just long enough to need cutting
    shorter = emb.post("/v1/embeddings", json={"input": FLOOD[: 3 * MAX_TOKENS * 5]}).json()
    assert cut.json()["data"][0]["embedding"] == pytest.approx(shorter["data"][0]["embedding"], abs=1e-5)


def test_token_ids_past_the_model(emb: TestClient) -> None:
    ids = [7592] * 100_000
    err = error(emb.post("/v1/embeddings", json={"input": [ids], "truncate": False}), "context_length_exceeded")
    assert "100000 token ids" in err["message"] and str(MAX_TOKENS) in err["message"]
    r = emb.post("/v1/embeddings", json={"input": [ids]})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == MAX_TOKENS
