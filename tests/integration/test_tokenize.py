"""llama-server's /tokenize and /detokenize on SmolLM2's own tokenizer, and their refusals."""

from __future__ import annotations

from fastapi.testclient import TestClient

from nexa.config import Settings
from nexa.engines.base import Engine
from nexa.models.manager import ModelManager
from nexa.server.app import create_app

TEXT = "Hello world, héllo 🌍!"


def tokenize(client: TestClient, content: str, **options: bool) -> list:
    r = client.post("/tokenize", json={"content": content, **options})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def detokenize(client: TestClient, tokens: list[int]) -> str:
    r = client.post("/detokenize", json={"tokens": tokens})
    assert r.status_code == 200, r.text
    return r.json()["content"]


def as_bytes(piece: str | list[int]) -> bytes:
    return piece.encode() if isinstance(piece, str) else bytes(piece)


def test_round_trip_with_pieces(client: TestClient, engine) -> None:
    ids = tokenize(client, TEXT)
    assert ids and all(isinstance(t, int) for t in ids)
    assert ids == engine.tokenize_chat(TEXT, True)  # the same tokenizer the chat path uses
    assert detokenize(client, ids) == TEXT
    pieces = tokenize(client, TEXT, with_pieces=True)
    assert [p["id"] for p in pieces] == ids and all(set(p) == {"id", "piece"} for p in pieces)
    # A piece that is part of a character comes as its bytes, as llama-server sends it.
    assert any(isinstance(p["piece"], list) for p in pieces)
    assert b"".join(as_bytes(p["piece"]) for p in pieces).decode() == TEXT


def test_special_tokens(client: TestClient, engine) -> None:
    chat = "<|im_start|>user\nHi<|im_end|>"
    parsed = tokenize(client, chat, with_pieces=True)
    assert parsed[0]["piece"] == "<|im_start|>" and parsed[-1]["piece"] == "<|im_end|>"
    assert detokenize(client, [p["id"] for p in parsed]) == chat  # special tokens spelled out
    literal = tokenize(client, chat, parse_special=False)
    assert len(literal) > len(parsed) and parsed[0]["id"] not in literal
    # add_special adds exactly what the model adds to a prompt (SmolLM2: nothing; Llama: BOS).
    plain = tokenize(client, "Hi")
    assert tokenize(client, "Hi", add_special=True) == engine.tokenize("Hi")
    assert tokenize(client, "Hi", add_special=True)[-len(plain) :] == plain


def test_refusals(client: TestClient, engine) -> None:
    for bad in ([engine.n_vocab], [-1]):
        r = client.post("/detokenize", json={"tokens": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens", r.text
    assert client.post("/tokenize", json={}).status_code == 422
    assert detokenize(client, []) == ""


def test_a_model_without_a_tokenizer_is_400() -> None:
    client = TestClient(create_app(Settings(), ModelManager(Engine())))
    for path, body in (("/tokenize", {"content": "hi"}), ("/detokenize", {"tokens": [1]})):
        r = client.post(path, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_task", r.text
