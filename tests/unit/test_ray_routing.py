"""What nexa's Ray Serve router reads from a request (server/ray_routing.py), and the application
built from `nexa serve-ray`'s arguments; no Ray cluster needed (tests/integration/test_ray_serve.py
runs one)."""

from __future__ import annotations

import json

from ray.serve.deployment import Application

from nexa.server.ray_app import app_builder
from nexa.server.ray_routing import MIN_PREFIX_CHARS, PREFIX_CHARS, request_keys

SYSTEM = "You answer questions about the plant's valves. " * 20


def keys(body: object, content_type: str = "application/json") -> tuple[str, str]:
    return request_keys(content_type, json.dumps(body).encode())


def chat(*messages: tuple[str, object], model: str = "m") -> dict:
    return {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}


def test_the_next_turn_and_the_same_system_prompt_share_a_key() -> None:
    model, first = keys(chat(("system", SYSTEM), ("user", "Which valve?")))
    _, next_turn = keys(chat(("system", SYSTEM), ("user", "Which valve?"), ("assistant", "V1."), ("user", "Why?")))
    _, other_user = keys(chat(("system", SYSTEM), ("user", "Something else entirely")))
    assert model == "m" and first and first == next_turn == other_user  # the key is the first 512 characters


def test_text_parts_count_and_images_do_not() -> None:
    parts = [{"type": "text", "text": SYSTEM}, {"type": "image_url", "image_url": {"url": "data:x"}}]
    assert keys(chat(("user", parts)))[1] == keys(chat(("user", SYSTEM)))[1]


def test_prompts_too_short_or_different_get_no_or_other_keys() -> None:
    assert keys(chat(("user", "x" * (MIN_PREFIX_CHARS - 10))))[1] == ""
    assert keys(chat(("system", "A" + SYSTEM)))[1] != keys(chat(("system", SYSTEM)))[1]
    assert keys({"prompt": SYSTEM, "model": "m"})[1]  # completions
    assert keys(chat(("system", SYSTEM + "x" * PREFIX_CHARS)))[1] == keys(chat(("system", SYSTEM)))[1]


def test_bodies_without_a_model_or_json() -> None:
    assert keys(["not", "an", "object"]) == ("", "")
    assert request_keys("application/json", b"{broken") == ("", "")
    assert request_keys("multipart/form-data; boundary=x", b"--x--") == ("", "")
    assert keys({"model": 3, "prompt": "hi"}) == ("", "")


def test_the_application_from_serve_ray_arguments() -> None:
    assert isinstance(app_builder({"argv": "--threads 1 --replicas 2 --max-models 1"}), Application)


def test_serve_ray_refuses_bad_replica_counts(capsys) -> None:
    from nexa.cli import main

    assert main(["serve-ray", "--replicas", "2", "--max-replicas", "1"]) == 2
    assert "--max-replicas at least --replicas" in capsys.readouterr().err
