"""The model pool and routing by `model`, on fake engines from a fake factory: name matching,
one load for many waiters, leases, keep-alive, LRU eviction, load failures and dead workers.
The real engines behind the same pool are tested in tests/integration/test_multi_model.py."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nexa.cli import build_parser, settings_from_args
from nexa.config import Settings, parse_duration, parse_size
from nexa.engines.base import Engine, Task
from nexa.errors import NotFound, Overloaded, StartupError, UnsupportedTask
from nexa.models import manager as manager_module
from nexa.models.manager import ModelManager
from nexa.models.pool import LOADED, NOT_LOADED, LoadFailed, ModelPool
from nexa.models.servable import Sources, match, short_name
from nexa.models.startup import type_of
from nexa.models.types import ModelType, ResolvedModel

TASKS = {
    ModelType.NLP: frozenset({Task.CHAT, Task.COMPLETION}),
    ModelType.AUDIO: frozenset({Task.TRANSCRIBE}),
    ModelType.TEXT_EMBEDDING: frozenset({Task.EMBEDDING}),
}


class Fake(Engine):
    def __init__(self, model: ResolvedModel):
        self.name = model.name
        self.tasks = TASKS[model.model_type]  # type: ignore[misc]
        self.closed = False
        self.alive = True

    def close(self) -> None:
        self.closed = True


class Factory:
    """Loads fakes, counting loads; `fail` names models whose load fails, `gate` holds loads."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.engines: list[Fake] = []
        self.fail: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, model: ResolvedModel, settings: Settings) -> Engine:
        self.gate.wait(10)
        self.loads.append(model.name)
        if model.name in self.fail:
            raise StartupError(f"{model.name} is corrupt")
        engine = Fake(model)
        self.engines.append(engine)
        return engine


def model(name: str, kind: ModelType = ModelType.NLP) -> ResolvedModel:
    return ResolvedModel(name, Path("/nonexistent") / name, kind)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- names ------------------------------------------------------------------------------------


def test_names_match_exactly_then_case_insensitively_then_without_tag_path_or_extension() -> None:
    ids = ["SmolLM2-135M", "smollm2-135m-q8", "whisper.gguf"]
    assert match("SmolLM2-135M", ids) == "SmolLM2-135M"
    assert match("smollm2-135m", ids) == "SmolLM2-135M"
    assert match("smollm2-135m:latest", ids) == "SmolLM2-135M"
    assert match("org/whisper", ids) == "whisper.gguf"
    assert match("gpt-4", ids) is None
    assert short_name("onnx:Org/Model.gguf:Q4") == "model"


def test_durations_and_sizes() -> None:
    assert parse_duration("300") == 300 and parse_duration("5m") == 300 and parse_duration("1h30m") == 5400
    assert parse_duration("-1") == -1 and parse_duration("250ms") == 0.25
    assert parse_size("8GB") == 8 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("1024") == 1024
    for bad in ("soon", "5 minutes"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("lots")


def test_the_command_line_takes_several_models_and_the_pool_flags(tmp_path: Path) -> None:
    def parse(*argv: str) -> Settings:
        return settings_from_args(build_parser().parse_args(["server", *argv]))

    s = parse("qwen2.5", "faster-whisper-tiny", "mxbai", "--keep-alive", "5m", "--max-models", "2")
    assert (s.model, s.models, s.keep_alive, s.max_models) == ("qwen2.5", ["faster-whisper-tiny", "mxbai"], 300, 2)
    local = parse("a.gguf", "b.gguf", "-lp", "-mt", "NLP", "--max-memory", "8GB", "--models-dir", str(tmp_path))
    assert (local.model, local.models, local.source, local.max_memory) == ("a.gguf", ["b.gguf"], "local", 8 * 10**9)
    assert local.models_dir == str(tmp_path)
    onnx = parse("onnx", "phi3", "phi3.5")
    assert onnx.onnx and (onnx.model, onnx.models) == ("phi3", ["phi3.5"])
    assert parse("--strict-model", "--allow-pull", "--keep-alive", "-1").keep_alive == -1
    with pytest.raises(StartupError, match="--models-dir"):
        parse("--models-dir", str(tmp_path / "missing"))
    with pytest.raises(StartupError, match="--max-memory"):
        parse("--max-memory", "lots")


def test_models_dir_and_extra_local_models_get_their_type_from_their_files(tmp_path: Path) -> None:
    (tmp_path / "speech").mkdir()
    (tmp_path / "speech" / "model.bin").write_bytes(b"")
    (tmp_path / "painter.safetensors").write_bytes(b"")
    (tmp_path / "chat.gguf").write_bytes(b"GGUF")  # unreadable header: text, and its load will say why
    (tmp_path / "notes.txt").write_text("not a model")
    found = {m.name: m.model_type for m in Sources(None, str(tmp_path), False).in_models_dir()}
    assert found == {"speech": ModelType.AUDIO, "painter": ModelType.COMPUTER_VISION, "chat": ModelType.NLP}
    local = Settings(source="local")
    assert type_of(str(tmp_path / "speech"), local) == ModelType.AUDIO
    assert type_of(str(tmp_path / "speech"), Settings(source="local", model_type=ModelType.NLP)) == ModelType.NLP


# -- the pool ---------------------------------------------------------------------------------


def pool(factory: Factory, max_models: int | None = None, max_queue: int = 8) -> ModelPool:
    return ModelPool(factory, max_models=max_models, max_memory=None, max_queue=max_queue)


def test_requests_waiting_for_a_load_share_it() -> None:
    factory, settings = Factory(), Settings()
    p = pool(factory)
    factory.gate.clear()

    async def go() -> list[Any]:
        tasks = [asyncio.ensure_future(p.acquire("a", model("a"), settings, -1)) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert p.state("a") == "loading"
        factory.gate.set()
        return await asyncio.gather(*tasks)

    leases = run(go())
    assert factory.loads == ["a"] and len({id(lease.engine) for lease in leases}) == 1
    assert p.slot("a").leases == 5  # type: ignore[union-attr]
    for lease in leases:
        lease.release()
        lease.release()  # twice is once
    assert p.slot("a").leases == 0 and p.state("a") == LOADED  # type: ignore[union-attr]


def test_past_max_queue_waiters_get_503() -> None:
    factory, settings = Factory(), Settings()
    p = pool(factory, max_queue=1)
    factory.gate.clear()

    async def go() -> None:
        first = [asyncio.ensure_future(p.acquire("a", model("a"), settings, -1)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="--max-queue 1"):
            await p.acquire("a", model("a"), settings, -1)
        factory.gate.set()
        await asyncio.gather(*first)

    run(go())


def test_a_failed_load_is_an_error_naming_why_and_the_next_request_retries() -> None:
    factory, settings = Factory(), Settings()
    p = pool(factory)
    factory.fail.add("a")
    with pytest.raises(LoadFailed, match="a is corrupt") as caught:
        run(p.acquire("a", model("a"), settings, -1))
    assert caught.value.code == "model_load_failed" and p.state("a") == NOT_LOADED
    factory.fail.clear()
    run(p.acquire("a", model("a"), settings, -1))
    assert factory.loads == ["a", "a"] and p.state("a") == LOADED


def test_least_recently_used_idle_model_is_evicted_and_a_busy_one_never() -> None:
    factory, settings = Factory(), Settings()
    p = pool(factory, max_models=2)
    a = run(p.acquire("a", model("a"), settings, -1))
    b = run(p.acquire("b", model("b"), settings, -1))
    a.release()
    b.release()
    run(p.acquire("a", model("a"), settings, -1)).release()  # a is now the more recent
    c = run(p.acquire("c", model("c"), settings, -1))
    assert {s.id for s in p.slots()} == {"a", "c"} and b.engine.closed  # type: ignore[attr-defined]
    busy_a = run(p.acquire("a", model("a"), settings, -1))
    with pytest.raises(Overloaded, match="--max-models 2"):
        run(p.acquire("d", model("d"), settings, -1))  # a and c both serve requests
    assert not busy_a.engine.closed  # type: ignore[attr-defined]
    c.release()
    run(p.acquire("d", model("d"), settings, -1))
    assert {s.id for s in p.slots()} == {"a", "d"}


def test_keep_alive_unloads_idle_models_and_a_request_may_set_its_own() -> None:
    factory, settings = Factory(), Settings()
    p = pool(factory)
    run(p.acquire("now", model("now"), settings, 300, request_keep_alive=0)).release()
    soon = run(p.acquire("soon", model("soon"), settings, 0.2))
    forever = run(p.acquire("forever", model("forever"), settings, -1))
    soon.release()
    forever.release()
    time.sleep(0.1)
    assert p.state("now") == NOT_LOADED and p.state("soon") == LOADED
    time.sleep(0.5)
    assert p.state("soon") == NOT_LOADED and p.state("forever") == LOADED
    assert [e.closed for e in factory.engines] == [True, True, False]
    p.close()
    assert factory.engines[2].closed


def test_an_unload_waits_for_requests_in_flight() -> None:
    factory, settings = Factory(), Settings()
    p = pool(factory)
    lease = run(p.acquire("a", model("a"), settings, -1))
    assert run(p.unload("a")) == "unloading" and not lease.engine.closed  # type: ignore[attr-defined]
    lease.release()
    time.sleep(0.1)
    assert p.state("a") == NOT_LOADED and lease.engine.closed  # type: ignore[attr-defined]


def test_a_dead_worker_is_loaded_again_on_the_next_request() -> None:
    factory, settings = Factory(), Settings()
    p = pool(factory)
    first = run(p.acquire("a", model("a"), settings, -1))
    first.release()
    first.engine.alive = False  # type: ignore[attr-defined]
    second = run(p.acquire("a", model("a"), settings, -1))
    assert second.engine is not first.engine and factory.loads == ["a", "a"]


# -- routing ----------------------------------------------------------------------------------


def manager(factory: Factory, **settings: Any) -> ModelManager:
    more = [model("whisper-tiny", ModelType.AUDIO), model("minilm", ModelType.TEXT_EMBEDDING)]
    return ModelManager.load(model("chat"), Settings(**settings), factory=factory, more=more)


def routed(m: ModelManager, task: Task, name: str | None) -> str:
    return run(m.route(task, "/x", name)).id


def test_each_request_reaches_a_model_of_the_right_type() -> None:
    m = manager(Factory())
    assert routed(m, Task.CHAT, "gpt-4") == "chat"
    assert routed(m, Task.TRANSCRIBE, "whisper-1") == "whisper-tiny"
    assert routed(m, Task.EMBEDDING, "text-embedding-3-small") == "minilm"
    assert routed(m, Task.EMBEDDING, None) == "minilm"
    assert routed(m, Task.CHAT, "CHAT:latest") == "chat"
    with pytest.raises(UnsupportedTask, match="'whisper-tiny' cannot serve /x"):
        routed(m, Task.CHAT, "whisper-tiny")
    with pytest.raises(UnsupportedTask, match="'chat' cannot serve"):
        routed(m, Task.TXT2IMG, None)


def test_a_name_that_found_nothing_is_looked_up_again_only_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = manager(Factory(), models_dir=str(tmp_path))
    assert routed(m, Task.CHAT, "newchat") == "chat"  # nothing of that name: the default
    (tmp_path / "newchat.gguf").write_bytes(b"GGUF")
    assert routed(m, Task.CHAT, "newchat") == "chat"  # the miss is remembered: no disk read per request
    monkeypatch.setattr(manager_module, "MISS_TTL_S", 0.0)
    assert routed(m, Task.CHAT, "newchat") == "newchat"  # once it has passed, the new file is found


def test_strict_model_refuses_unknown_names() -> None:
    m = manager(Factory(), strict_model=True)
    with pytest.raises(NotFound) as caught:
        routed(m, Task.CHAT, "gpt-4")
    assert caught.value.code == "model_not_found" and caught.value.status == 404
    assert routed(m, Task.CHAT, None) == "chat"


def test_get_loads_on_demand_and_lists_states() -> None:
    factory = Factory()
    m = manager(factory)
    assert factory.loads == ["chat"]  # the others load on first use
    states = {c["id"]: c["state"] for c in m.list_models()}
    assert states == {"chat": "loaded", "whisper-tiny": "not_loaded", "minilm": "not_loaded"}
    leases: list[Any] = []
    engine = run(m.get(Task.TRANSCRIBE, "/v1/audio/transcriptions", "whisper-1", leases=leases))
    assert engine.name == "whisper-tiny" and m.find("WHISPER-TINY")["state"] == "loaded"
    assert [h["id"] for h in m.loaded()] == ["chat", "whisper-tiny"]
    run(m.unload_model("whisper-tiny"))
    assert m.find("whisper-tiny")["state"] == "unloading"
    leases[0].release()
    time.sleep(0.1)
    assert m.find("whisper-tiny")["state"] == "not_loaded"


def test_max_memory_counts_what_engines_report_and_evicts_idle_models_first() -> None:
    class Sized(Fake):
        def rss_bytes(self) -> int:
            return 400

    settings = Settings()
    p = ModelPool(lambda m, s: Sized(m), max_models=None, max_memory=1000, max_queue=8)
    a = run(p.acquire("a", model("a"), settings, -1))
    b = run(p.acquire("b", model("b"), settings, -1))
    a.release()
    c = run(p.acquire("c", model("c"), settings, -1))  # 1200 once loaded: the idle, least recent (a) goes
    assert {s.id for s in p.slots()} == {"b", "c"}
    d = run(p.acquire("d", model("d"), settings, -1))  # 1200 again, but b and c are busy: over, for now
    assert {s.id for s in p.slots()} == {"b", "c", "d"}
    for lease in (b, c, d):
        lease.release()
    run(p.acquire("e", model("e"), settings, -1))  # back under: the two least recent idle ones go
    assert {s.id for s in p.slots()} == {"d", "e"}
