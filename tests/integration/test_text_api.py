"""/v1/completions and /v1/chat/completions on the real llama.cpp engine with SmolLM2."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from support.leaving import count_generation, decoding_stops
from support.sse import sse_payloads

GREEDY = {"temperature": 0, "seed": 1}


# -- completions ---------------------------------------------------------------------------


def test_completion_seed_example_body(client):
    # the Nexa server API's exact example for /v1/completions.
    body = {
        "prompt": "Tell me a story",
        "temperature": 1,
        "max_new_tokens": 128,
        "top_k": 50,
        "top_p": 1,
        "stop_words": ["string"],
        "stream": False,
    }
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "text_completion"
    choice = data["choices"][0]
    assert data["result"] == choice["text"] and choice["text"]  # the original's clients read `result`
    assert choice["finish_reason"] in ("stop", "length")
    assert "string" not in choice["text"]
    u = data["usage"]
    assert u["prompt_tokens"] > 0 and 0 < u["completion_tokens"] <= 128
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert isinstance(data["created"], int)


def test_max_tokens_gives_length_finish(client):
    for field in ("max_tokens", "max_new_tokens"):
        r = client.post("/v1/completions", json={"prompt": "Once upon a time", field: 5, **GREEDY})
        data = r.json()
        assert data["usage"]["completion_tokens"] == 5
        assert data["choices"][0]["finish_reason"] == "length"


def test_stop_words_cut_the_text_and_finish_with_stop(client):
    base = client.post("/v1/completions", json={"prompt": "1, 2, 3, 4,", "max_tokens": 20, **GREEDY}).json()
    text = base["choices"][0]["text"]
    assert " 7" in text, text  # the model counts on; pick a stop inside its greedy answer
    for field in ("stop", "stop_words"):
        r = client.post("/v1/completions", json={"prompt": "1, 2, 3, 4,", "max_tokens": 20, field: [" 7"], **GREEDY})
        data = r.json()
        assert data["choices"][0]["text"] == text[: text.index(" 7")]
        assert data["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        body = {"prompt": "My favourite animal is", "max_tokens": 16, "temperature": 1.0, "seed": seed}
        return client.post("/v1/completions", json=body).json()["choices"][0]["text"]

    assert sample(42) == sample(42)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_completion_logprobs_openai_layout(client):
    r = client.post("/v1/completions", json={"prompt": "The sky is", "max_tokens": 4, "logprobs": 3, **GREEDY})
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert all(x <= 0 for x in lp["token_logprobs"])
    assert all(len(t) == 3 for t in lp["top_logprobs"])
    # greedy: the chosen token is the most likely one
    for tok, best in zip(lp["tokens"], lp["top_logprobs"], strict=True):
        assert max(best, key=best.get) == tok
    assert lp["text_offset"] == sorted(lp["text_offset"])


def test_completion_stream_framing(client):
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
        **GREEDY,
    }
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    plain = client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 8, **GREEDY}).json()
    assert text == plain["choices"][0]["text"]


def test_token_id_prompt(client, engine):
    ids = engine.tokenize("The capital of France is")
    a = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 5, **GREEDY}).json()
    b = client.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 5, **GREEDY}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


# -- chat ----------------------------------------------------------------------------------


def test_chat_seed_example_body(client):
    body = {
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": 128,
        "temperature": 0.1,
        "stream": False,
        "stop_words": [],
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    msg = data["choices"][0]["message"]
    assert msg["role"] == "assistant" and len(msg["content"]) > 20
    assert data["choices"][0]["finish_reason"] in ("stop", "length")
    assert "<|im_end|>" not in msg["content"]


def test_chat_renders_the_whole_conversation(client, engine):
    messages = [
        {"role": "system", "content": "You are a helpful assistant named Quill."},
        {"role": "user", "content": "My cat is called Marmalade."},
        {"role": "assistant", "content": "What a lovely name for a cat!"},
        {"role": "user", "content": "What is my cat called?"},
    ]
    prompt, _, special = engine.render_chat(messages)
    for m in messages:  # every turn, in order, with its role
        assert f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>" in prompt
    assert prompt.index("Marmalade") < prompt.index("What a lovely") < prompt.index("What is my cat")
    assert prompt.endswith("<|im_start|>assistant\n")
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 20, **GREEDY}).json()
    # the server fed exactly that rendering to the model
    assert r["usage"]["prompt_tokens"] == len(engine.tokenize(prompt, special=special))
    last_only = client.post("/v1/chat/completions", json={"messages": messages[-1:], "max_tokens": 1}).json()
    assert last_only["usage"]["prompt_tokens"] < r["usage"]["prompt_tokens"]


def test_chat_content_parts_and_developer_role(client, engine):
    parts = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
    ]
    r = client.post("/v1/chat/completions", json={"messages": parts, "max_tokens": 3, **GREEDY})
    assert r.status_code == 200, r.text
    prompt, _, special = engine.render_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello\nthere"}]
    )
    assert r.json()["usage"]["prompt_tokens"] == len(engine.tokenize(prompt, special=special))


def test_chat_stream_framing_and_same_text_as_non_stream(client):
    body = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24, **GREEDY}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(r.read().decode())
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert all(isinstance(d.get("content", ""), str) for d in deltas)  # never the original's nested object
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    streamed = "".join(d.get("content", "") for d in deltas)
    plain = client.post("/v1/chat/completions", json=body).json()
    assert streamed == plain["choices"][0]["message"]["content"]


def test_chat_logprobs(client):
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "logprobs": True,
        "top_logprobs": 2,
        **GREEDY,
    }
    data = client.post("/v1/chat/completions", json=body).json()
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == data["usage"]["completion_tokens"]
    assert "".join(c["token"] for c in content) == data["choices"][0]["message"]["content"]
    assert all(len(c["top_logprobs"]) == 2 and c["top_logprobs"][0]["token"] == c["token"] for c in content)


def test_second_turn_reuses_cached_prompt(client):
    messages = [
        {"role": "system", "content": "You answer questions about geography. " * 5},
        {"role": "user", "content": "What is the capital of Italy?"},
    ]
    first = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, **GREEDY}).json()
    answer = first["choices"][0]["message"]["content"]
    follow = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And of Spain?"}]
    second = client.post("/v1/chat/completions", json={"messages": follow, "max_tokens": 8, **GREEDY}).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 2


# -- errors ----------------------------------------------------------------------------------


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param
    assert "detail" in r.json()  # what the original's clients read
    return err


@pytest.mark.parametrize(
    "body,param",
    [
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "logprobs": 50}, "logprobs"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
    ],
)
def test_bad_values_are_400_naming_the_field(client, body, param):
    assert_error(client.post("/v1/completions", json=body), 400, param)


def test_prompt_longer_than_context_is_400_not_truncated(client, engine):
    long = "word " * (engine.n_ctx + 100)
    err = assert_error(client.post("/v1/completions", json={"prompt": long}), 400, "prompt")
    assert err["code"] == "context_length_exceeded" and "--nctx" in err["message"]
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}], "stream": True})
    assert assert_error(chat, 400, "messages")["code"] == "context_length_exceeded"


def test_image_to_text_only_model_is_400(client):
    # the Nexa server API's VLM example sent to a text model: a clear 400, not a 500.
    body = {
        "model": "anything",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.jpg"}},
                ],
            }
        ],
        "max_tokens": 300,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "stream": False,
    }
    err = assert_error(client.post("/v1/chat/completions", json=body), 400)
    assert err["code"] == "unsupported_task" and "image" in err["message"]


def test_malformed_bodies_are_422_with_details(client):
    err = assert_error(client.post("/v1/completions", json={"max_tokens": 3}), 422, "prompt")
    assert err["code"] == "invalid_body"
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422)
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "hi"}]})
    assert isinstance(assert_error(r, 422) and r.json()["detail"], list)


def test_unknown_paths_and_models_are_404(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/models/not-a-model"), 404, "model")


def test_server_keeps_serving_after_bad_requests(client):
    client.post("/v1/completions", content=b"\xff\xfe", headers={"content-type": "application/json"})
    client.post("/v1/completions", json={"prompt": "x", "temperature": -1})
    assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


# -- service endpoints -----------------------------------------------------------------------


def test_models_health_root_and_docs(client, engine):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == engine.name
    assert client.get(f"/v1/models/{engine.name}").json()["n_ctx"] == engine.n_ctx
    assert client.get("/health").json()["status"] == "ok"
    assert "<title>nexa playground</title>" in client.get("/").text  # the playground replaced the welcome page
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models"} <= set(paths)


# -- concurrency and disconnects (real sockets) ----------------------------------------------


def test_two_clients_at_once_get_complete_correct_answers(live):
    bodies = [{"prompt": "1, 2, 3,", "max_tokens": 24, **GREEDY}, {"prompt": "The sky is", "max_tokens": 24, **GREEDY}]
    alone = [httpx.post(live.url + "/v1/completions", json=b, timeout=120).json()["choices"][0]["text"] for b in bodies]
    results: list[str | None] = [None, None]

    def go(i: int) -> None:
        results[i] = httpx.post(live.url + "/v1/completions", json=bodies[i], timeout=120).json()["choices"][0]["text"]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    with httpx.Client(timeout=10) as c:  # the event loop answers while both generate
        assert c.get(live.url + "/health").status_code == 200
    for t in threads:
        t.join(timeout=120)
    assert results == alone


def test_disconnect_stops_a_stream_read_on_the_loop(live, served):
    # Unwrapped, the worker's tokens reach the event loop straight from the thread reading its
    # socket (channel.Stream): no thread of the request's own is there to see the client leave.
    engine = served.engine
    finished = engine.stats().requests
    body = {"prompt": "1, 2, 3, 4,", "max_tokens": 1500, "stream": True, **GREEDY}
    with httpx.Client(timeout=60) as c, c.stream("POST", live.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    assert decoding_stops(engine), "the worker kept decoding for a client that left"
    assert engine.stats().requests == finished  # cancelled, not run to its end
    assert not engine._calls  # and the server forgot the call


def test_disconnect_stops_generation(live, served, monkeypatch):
    # The served model runs in a worker process: count what reaches this process, and ask
    # the worker itself that nothing is still running once the client has gone.
    produced, closed = count_generation(monkeypatch, served.engine)
    body = {"prompt": "1, 2, 3, 4,", "max_tokens": 1500, "stream": True, **GREEDY}
    with httpx.Client(timeout=60) as c, c.stream("POST", live.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    assert closed.wait(timeout=60), "generation kept running after the client left"
    assert len(produced) < 1500
    assert decoding_stops(served.engine), "the worker kept decoding for a client that left"
    monkeypatch.undo()
    assert (
        httpx.post(live.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60).status_code == 200
    )
