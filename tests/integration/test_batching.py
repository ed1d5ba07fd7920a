"""Continuous batching (engines/llama/scheduler.py) on the real SmolLM2: requests decoded together give
exactly what each gives alone; cancelling frees a slot; a full queue is a 503; prompt caches
survive other conversations; /metrics reports it all."""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from nexa.config import Settings
from nexa.engines.base import Finish, SamplingParams, TextDelta
from nexa.engines.llama.engine import LlamaEngine
from nexa.engines.llama.scheduler import FA_TILE, PAD_FROM, TAIL
from nexa.models.manager import ModelManager
from nexa.server.app import create_app
from nexa.structured.schema import schema_grammar
from support.servers import LiveServer
from support.tools import WEATHER

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village near the sea,",
    "def fibonacci(n):\n    ",
    "List of prime numbers: 2, 3, 5,",
    "The three laws of thermodynamics state that",
    "In 1492, Columbus",
    # Long enough for flash attention's tiled kernel (64+ rows) and for KV lengths past 512.
    "Minutes. " + "The committee met on Tuesday about the library wing, the parking plan and the garden. " * 30,
]


def run(engine: LlamaEngine, prompt: str, params: SamplingParams, cancel: threading.Event | None = None):
    items = list(engine.generate(engine.tokenize(prompt), params, cancel or threading.Event()))
    text = "".join(i.text for i in items if isinstance(i, TextDelta))
    finish = items[-1]
    assert isinstance(finish, Finish)
    return text, [lp.logprob for i in items if isinstance(i, TextDelta) for lp in i.logprobs], finish


def together(engine: LlamaEngine, jobs: list[tuple[str, SamplingParams]], stagger_s: float = 0.0):
    def one(i: int):
        time.sleep(i * stagger_s)
        return run(engine, *jobs[i])

    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, range(len(jobs))))


@pytest.fixture(scope="module")
def four(smollm2) -> Iterator[LlamaEngine]:
    eng = LlamaEngine(smollm2.path, name="four", n_ctx=1024, parallel=4, max_queue=8)
    yield eng
    eng.close()


def test_default_parallel_comes_from_cores_and_memory(engine):
    assert engine.parallel >= 2 and len(engine.scheduler.slots) == engine.parallel


@pytest.mark.slow  # a minute or more on two shared cores
def test_concurrent_greedy_requests_give_exactly_their_tokens_alone(four):
    params = SamplingParams(max_tokens=48, temperature=0)
    alone = [run(four, p, params)[0] for p in PROMPTS]
    assert len(set(alone)) == len(PROMPTS)  # distinct answers: a mix-up would show
    # Seven requests on four slots, arriving a little apart: prompts are fed beside running decodes
    # and two requests wait for a slot and land in a stream another request used.
    got = together(four, [(p, params) for p in PROMPTS], stagger_s=0.05)
    assert [t for t, _, _ in got] == alone
    assert all(f.reason == "length" and f.completion_tokens == 48 for _, _, f in got)


@pytest.mark.slow  # a minute or more on two shared cores
def test_seeds_logprobs_stops_and_grammars_hold_in_company(four):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    as_json = SamplingParams(max_tokens=60, temperature=0, grammar=schema_grammar(schema, "s"))
    jobs = [
        ("Tell me a story about a cat.", SamplingParams(max_tokens=40, temperature=0.9, seed=42)),
        ("The capital of France is", SamplingParams(max_tokens=12, temperature=0, logprobs=2)),
        ("1, 2, 3, 4, 5,", SamplingParams(max_tokens=40, temperature=0, stop=["9"])),
        ("Give the capital of Peru as JSON:", as_json),
    ]
    alone = [run(four, p, params) for p, params in jobs]
    got = together(four, jobs)
    for (a_text, a_lp, a_fin), (b_text, b_lp, b_fin) in zip(alone, got):
        assert b_text == a_text and b_fin.reason == a_fin.reason
        assert b_lp == pytest.approx(a_lp, abs=1e-4)
    assert "9" not in got[2][0] and got[2][2].reason == "stop"
    assert set(json.loads(got[3][0])) == {"city"}
    assert len(got[1][1]) == 12


@pytest.mark.slow  # a minute or more on two shared cores
def test_a_repeated_long_request_reuses_its_cache_and_answers_the_same(four):
    prompt = four.tokenize(PROMPTS[-1] + "\nIn short, the committee")
    assert len(prompt) > 300
    params = SamplingParams(max_tokens=24, temperature=0)
    first = list(four.generate(prompt, params, threading.Event()))
    again = list(four.generate(prompt, params, threading.Event()))
    assert again[-1].cached_tokens == len(prompt) - 2  # the last two are decoded again
    assert again[:-1] == first[:-1]


def test_greedy_picks_what_llama_cpps_greedy_chain_picks(four, monkeypatch):
    """Greedy requests skip llama.cpp's sampler chain (it copies all 49k logits per token)."""
    params = SamplingParams(max_tokens=32, temperature=0)
    jobs = [(p, params) for p in PROMPTS]
    fast = together(four, jobs)
    monkeypatch.setattr(four, "new_sampler", four._chain)
    chain = together(four, jobs)
    assert [f[0] for f in fast] == [c[0] for c in chain]
    assert len({f[0] for f in fast}) == len(PROMPTS)


def busy_slots(eng: LlamaEngine) -> list[int]:
    return sorted(s.seq for s in eng.scheduler.slots if s.job is not None)


def consecutive(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids)))


def test_new_requests_take_consecutive_slots_and_keep_other_caches(four, smollm2):
    """llama.cpp decodes the KV streams of a step together only when their ids are consecutive
    (4 requests in slots 0, 2, 4, 6 decode at one request's speed). Two new requests go next to
    each other even when the least recently used caches are not neighbours; the cache that the
    second displaces is copied over the least recently used one, and is found again."""
    params = SamplingParams(max_tokens=48, temperature=0)
    for p in PROMPTS[:4]:
        run(four, p, params)  # one cache per slot
    sched = four.scheduler
    home = {p: next(s.seq for s in sched.slots if s.cache[: len(four.tokenize(p))] == four.tokenize(p))
            for p in PROMPTS[:4]}
    a, b = next((a, b) for a in home for b in home if home[b] - home[a] > 1)
    for p in home:
        if p not in (a, b):
            run(four, p, params)  # a's and b's caches are now the least recently used
    x, y = PROMPTS[4], PROMPTS[5]  # new to this engine
    cancels = [threading.Event(), threading.Event()]
    streams = [four.generate(four.tokenize(p), params, c) for p, c in zip((x, y), cancels)]
    texts = [next(s).text for s in streams]
    taken = busy_slots(four)
    assert len(taken) == 2 and consecutive(taken), (taken, home)
    texts = [t + "".join(i.text for i in s if isinstance(i, TextDelta)) for t, s in zip(texts, streams)]
    fresh = LlamaEngine(smollm2.path, name="fresh", n_ctx=1024, parallel=4)
    try:
        assert texts == [run(fresh, p, params)[0] for p in (x, y)]
    finally:
        fresh.close()
    # Of the four caches only a's and b's (the oldest) were given up.
    for p in home:
        if p not in (a, b):
            assert run(four, p, params)[2].cached_tokens == len(four.tokenize(p)) - 2, p


def test_a_request_moves_into_an_empty_slot_to_close_a_gap(four, smollm2):
    """When a request in the middle of the busy slots leaves, one at the edge moves into an empty
    slot on the other side (the slot just left keeps its cache for that conversation's next
    turn); the move does not change a greedy answer."""
    params = SamplingParams(max_tokens=128, temperature=0)
    prompts = PROMPTS[:4]
    alone = [run(four, p, params)[0] for p in prompts]
    eng = LlamaEngine(smollm2.path, name="gap", n_ctx=1024, parallel=5)
    try:
        cancels = [threading.Event() for _ in prompts]
        streams = [eng.generate(eng.tokenize(p), params, c) for p, c in zip(prompts, cancels)]
        texts = [next(s).text for s in streams]
        assert busy_slots(eng) == [0, 1, 2, 3]
        middle = next(i for i, p in enumerate(prompts) if eng.scheduler.slots[1].job.prompt == eng.tokenize(p))
        while len(eng.scheduler.slots[1].cache) < 48:  # a cache worth keeping
            texts[middle] += next(streams[middle]).text
        cancels[middle].set()
        list(streams[middle])
        deadline = time.monotonic() + 2  # the others are still decoding
        while not consecutive(left := busy_slots(eng)) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert left == [2, 3, 4], left
        assert eng.scheduler.slots[1].cache[: len(eng.tokenize(prompts[middle]))] == eng.tokenize(prompts[middle])
        for i, stream in enumerate(streams):
            if i != middle:
                texts[i] += "".join(d.text for d in stream if isinstance(d, TextDelta))
                assert texts[i] == alone[i], prompts[i]  # a moved stream is the same bits
    finally:
        eng.close()


def test_cancelling_frees_the_slot_at_the_next_step(smollm2):
    eng = LlamaEngine(smollm2.path, name="one", n_ctx=512, parallel=1, max_queue=4)
    try:
        cancel = threading.Event()
        stream = eng.generate(eng.tokenize("Count: 1, 2, 3,"), SamplingParams(max_tokens=400, temperature=0), cancel)
        next(stream)  # generating now, holding the only slot
        waiting = cf.ThreadPoolExecutor(1).submit(run, eng, "Hello", SamplingParams(max_tokens=4, temperature=0))
        time.sleep(0.2)
        assert eng.scheduler.waiting == 1 and not waiting.done()
        cancel.set()
        _, _, finish = waiting.result(timeout=30)  # the slot went to the waiting request
        assert finish.completion_tokens == 4
        rest = list(stream)  # what it produced before the cancel, then an end without a Finish
        assert len(rest) < 400 and not any(isinstance(i, Finish) for i in rest)
        assert eng.scheduler.running == 0 and eng.scheduler.waiting == 0
    finally:
        eng.close()


@pytest.mark.parametrize("flash_attn", ["on", "off"])  # off is the CPU's default (--flash-attn auto)
def test_a_shared_prefix_is_copied_from_a_busy_slot(smollm2, flash_attn):
    system = "You are the help desk of the city library. " + "Opening hours are 9 to 5 on weekdays. " * 12

    def chat(eng: LlamaEngine, question: str) -> list[int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        text, _, special = eng.render_chat(messages)
        return eng.tokenize_chat(text, special)

    def answer(eng: LlamaEngine, prompt: list[int]):
        params = SamplingParams(max_tokens=24, temperature=0, logprobs=1)
        items = list(eng.generate(prompt, params, threading.Event()))
        deltas = [i for i in items if isinstance(i, TextDelta)]
        return ["".join(d.text for d in deltas), [lp.logprob for d in deltas for lp in d.logprobs]], items[-1]

    eng = LlamaEngine(smollm2.path, name="two", n_ctx=1024, parallel=2, flash_attn=flash_attn)
    try:
        question = (
            "When do you open on Monday? I would like to bring my two children, who are six and nine, to the"
            " story hour in the reading room that the poster in the hall mentions, and to return three books."
        )
        a, b = chat(eng, "Can I renew a book online?"), chat(eng, question)
        shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        assert PAD_FROM <= len(b) - TAIL - shared < FA_TILE  # with flash attention: a tile that starts early
        # A takes a slot and keeps it busy; B then lands in the empty slot and copies the prefix
        # from A's stream instead of recomputing it, all but the rows its tile decodes again.
        cancel = threading.Event()
        busy = eng.generate(a, SamplingParams(max_tokens=900, temperature=0), cancel)
        next(busy)
        warm, second = answer(eng, b)
        cancel.set()
        list(busy)
        assert second.cached_tokens == (len(b) - TAIL - FA_TILE if flash_attn == "on" else shared) > 100
    finally:
        eng.close()
    eng = LlamaEngine(smollm2.path, name="two", n_ctx=1024, parallel=2, flash_attn=flash_attn)
    try:
        cold, first = answer(eng, b)
        assert first.cached_tokens == 0
        assert warm == cold  # the same bits: the copied cells, and the tile's (logprobs exactly equal)
    finally:
        eng.close()


def test_a_conversations_cache_survives_another_taking_its_slot(smollm2):
    """A request that shares a prefix with a free slot's cache takes that slot; the longer
    conversation the slot held is copied over an older slot first, and its next turn finds it."""
    eng = LlamaEngine(smollm2.path, name="two", n_ctx=1024, parallel=2)
    try:
        system = "You are the help desk of the city library. " + "Opening hours are 9 to 5 on weekdays. " * 12
        first = [{"role": "system", "content": system}, {"role": "user", "content": "Can I renew a book online?"}]
        text, _, special = eng.render_chat(first)
        prompt = eng.tokenize_chat(text, special)
        reply = "".join(i.text for i in eng.generate(prompt, SamplingParams(max_tokens=48, temperature=0),
                                                     threading.Event()) if isinstance(i, TextDelta))
        other = [{"role": "system", "content": system}, {"role": "user", "content": "Where is the cafe?"}]
        text, _, special = eng.render_chat(other)
        list(eng.generate(eng.tokenize_chat(text, special), SamplingParams(max_tokens=4, temperature=0),
                          threading.Event()))  # takes the slot that holds the system prompt
        turn = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Thanks!"}]
        text, _, special = eng.render_chat(turn)
        again = eng.tokenize_chat(text, special)
        items = list(eng.generate(again, SamplingParams(max_tokens=4, temperature=0), threading.Event()))
        assert items[-1].cached_tokens > len(prompt) + 24
    finally:
        eng.close()


@pytest.fixture(scope="module")
def tight(smollm2) -> Iterator[LiveServer]:
    """A live server with one slot and room for one waiting request."""
    manager = ModelManager.load(smollm2, Settings(n_ctx=512, parallel=1, max_queue=1))
    with LiveServer(create_app(Settings(), manager)) as server:
        yield server
    manager.close()


def test_a_full_queue_is_503_with_retry_after(tight):
    long = {"prompt": "Count: 1, 2, 3,", "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", tight.url + "/v1/completions", json=long) as r1:
        lines = r1.iter_lines()  # kept: a dropped iterator closes the response, which cancels
        next(lines)  # running
        with c.stream("POST", tight.url + "/v1/completions", json=long) as r2:  # waiting
            time.sleep(0.3)
            third = c.post(tight.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            assert third.status_code == 503, third.text
            assert third.headers["retry-after"] == "1"
            err = third.json()["error"]
            assert err["type"] == "server_overloaded" and "--max-queue" in err["message"]
            stream = c.post(tight.url + "/v1/completions", json={**long, "max_tokens": 2})
            assert stream.status_code == 503  # a stream is refused before it starts, not mid-way
            calls = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER],
                     "tool_choice": "required", "stream": True}
            assert c.post(tight.url + "/v1/chat/completions", json=calls).status_code == 503  # calls too
            assert r2.status_code == 200
    # Once the clients are gone their slots free and the server answers again.
    deadline = time.time() + 30
    while time.time() < deadline:
        r = httpx.post(tight.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200


def test_each_conversation_keeps_its_cache_beside_others(live, engine):
    def turn(history: list[dict]) -> dict:
        body = {"messages": history, "max_tokens": 6, "temperature": 0}
        return httpx.post(live.url + "/v1/chat/completions", json=body, timeout=120).json()

    chats = [
        [{"role": "system", "content": f"You are assistant number {i}. " * 8}, {"role": "user", "content": "Hi!"}]
        for i in range(engine.parallel)
    ]
    with cf.ThreadPoolExecutor(len(chats)) as pool:
        firsts = list(pool.map(turn, chats))
    answers = [{"role": "assistant", "content": f["choices"][0]["message"]["content"]} for f in firsts]
    follow = [[*c, a, {"role": "user", "content": "And?"}] for c, a in zip(chats, answers)]
    with cf.ThreadPoolExecutor(len(chats)) as pool:
        seconds = list(pool.map(turn, follow))
    for f, s in zip(firsts, seconds):
        assert s["usage"]["prompt_tokens_details"]["cached_tokens"] >= f["usage"]["prompt_tokens"] - 2
        t = s["usage"]["timings"]
        assert t["cache_n"] == s["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert t["prompt_n"] == s["usage"]["prompt_tokens"] - t["cache_n"] and t["predicted_n"] == 6


def test_openai_client_streams_concurrently(live):
    client = OpenAI(base_url=live.url + "/v1", api_key="none")

    def stream(i: int) -> tuple[str, str]:
        messages = [{"role": "user", "content": f"Say a sentence about the number {i}."}]
        kw = {"model": "any", "messages": messages, "max_tokens": 16, "temperature": 0}
        whole = client.chat.completions.create(**kw).choices[0].message.content
        parts = client.chat.completions.create(**kw, stream=True)
        return whole, "".join(c.choices[0].delta.content or "" for c in parts if c.choices)

    with cf.ThreadPoolExecutor(4) as pool:
        for whole, streamed in pool.map(stream, range(4)):
            assert whole and streamed == whole


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            out[name] = float(value)
    return out


def test_metrics_in_prometheus_text_format(client, engine):
    before = parse_metrics(client.get("/metrics").text)
    r = client.post("/v1/completions", json={"prompt": "Hello there", "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    for line in res.text.splitlines():  # every sample has its HELP and TYPE lines
        if line and not line.startswith("#"):
            name = line.split()[0]
            assert f"# TYPE {name} " in res.text and f"# HELP {name} " in res.text
    after = parse_metrics(res.text)
    assert after["nexa_requests_total"] == before["nexa_requests_total"] + 1
    assert after["nexa_generated_tokens_total"] == before["nexa_generated_tokens_total"] + 5
    assert after["nexa_prompt_tokens_total"] > before["nexa_prompt_tokens_total"]
    assert after["nexa_slots"] == engine.parallel and after["nexa_requests_running"] == 0
    assert 0 < after["nexa_kv_cache_usage_ratio"] <= 1
    assert after["nexa_kv_cache_capacity_tokens"] == engine.parallel * engine.n_ctx
    assert after["nexa_generation_tokens_per_second"] > 0  # the request above ran in the last 10 s
    assert after["nexa_resident_memory_bytes"] > 50e6


def test_a_client_that_leaves_is_a_quiet_499(live, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 1500, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(live.url + "/v1/completions", json=body, timeout=0.5)
        deadline = time.time() + 30
        while time.time() < deadline and not any(" 499 " in r.getMessage() for r in caplog.records):
            time.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("POST /v1/completions 499 ") for m in messages), messages
    assert not any(r.levelno >= logging.ERROR for r in caplog.records), messages  # no traceback for a normal event
