"""Where llama.cpp puts weights: never in AMX buffers (their kernels crash llama_decode on Intel
Xeons with AMX), in CPU_REPACK where the CPU has kernels for the type, in plain buffers with
--no-repack. Every assertion reads llama.cpp's own report of the load (its "model buffer size"
log lines) or the CPU backend's list of extra buffer types, so it runs the same on every CPU;
on a CPU with AMX it is the test that the AMX buffer type was offered and refused."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from minilm_gguf import minilm_gguf
from nexa.config import Settings
from nexa.engines.base import SamplingParams, TextDelta
from nexa.engines.llama import cpu_buffers
from nexa.models.manager import ModelManager
from nexa.models.types import ModelType, ResolvedModel
from projector import ensure_projector
from quantized import smollm2_q4_0


def _load(path: Path, model_type: ModelType = ModelType.NLP, **settings: object) -> ModelManager:
    projector = ensure_projector() if model_type is ModelType.MULTIMODAL else None
    model = ResolvedModel(name=path.stem, path=path, model_type=model_type, projector=projector)
    return ModelManager.load(model, Settings(n_ctx=256, parallel=1, **settings))  # type: ignore[arg-type]


def _no_amx(buffers: dict[str, float]) -> None:
    assert buffers, "llama.cpp reported no model buffers: the load log was not captured"
    assert sum(buffers.values()) > 1, buffers
    assert not [name for name in buffers if "AMX" in name.upper()], buffers


def _greedy(engine, prompt: str) -> str:
    tokens = engine.tokenize(prompt)
    out = engine.generate(tokens, SamplingParams(max_tokens=8, temperature=0), threading.Event())
    return "".join(item.text for item in out if isinstance(item, TextDelta))


@pytest.fixture
def restore_rule() -> Iterator[None]:
    yield
    cpu_buffers.set_weight_rule(True)


def test_amx_is_never_offered_to_weights(restore_rule: None) -> None:
    available = cpu_buffers.available_extra_buffer_types()
    kept = cpu_buffers.set_weight_rule(True)
    assert kept == cpu_buffers.extra_buffer_types()
    assert kept == [name for name in available if not name.startswith("AMX")]
    assert cpu_buffers.set_weight_rule(False) == [] == cpu_buffers.extra_buffer_types()
    assert cpu_buffers.set_weight_rule(True) == kept  # the rule can be changed back in one process


def test_cpu_features_come_from_llama_cpp() -> None:
    features = cpu_buffers.cpu_features().split()
    assert features and all(f.isupper() or "_" in f or f.isalnum() for f in features)
    assert not any(" = " in f for f in features)


def test_chat_engine_weights_never_in_amx(engine) -> None:
    _no_amx(engine.weights)
    assert engine.describe()["weights"] == engine.weights


def test_vision_engine_weights_never_in_amx(smollm2: ResolvedModel) -> None:
    manager = _load(smollm2.path, ModelType.MULTIMODAL)
    try:
        _no_amx(manager.engine.weights)  # type: ignore[attr-defined]
    finally:
        manager.close()


def test_embedding_engine_weights_never_in_amx() -> None:
    manager = _load(minilm_gguf(), ModelType.TEXT_EMBEDDING)
    try:
        _no_amx(manager.engine.describe()["weights"])
    finally:
        manager.close()


def test_q4_0_is_repacked_unless_no_repack(caplog: pytest.LogCaptureFixture, restore_rule: None) -> None:
    path = smollm2_q4_0()
    features = set(cpu_buffers.cpu_features().split())
    with caplog.at_level(logging.INFO, logger="nexa.engine.llama"):
        repacked = _load(path)
    try:
        weights = repacked.engine.weights  # type: ignore[attr-defined]
        _no_amx(weights)
        if "REPACK" in features and features & {"AVX2", "NEON"}:  # x86 since Haswell, every 64-bit Arm
            assert weights.get("CPU_REPACK", 0) > 10, weights
        assert _greedy(repacked.engine, "The capital of France is")  # the repacked kernels run
    finally:
        repacked.close()
    line = next(r.getMessage() for r in caplog.records if "weights:" in r.getMessage())
    assert "CPU features:" in line and "AMX off" in line and "MiB" in line

    plain = _load(path, repack=False)
    try:
        weights = plain.engine.weights  # type: ignore[attr-defined]
        _no_amx(weights)
        assert "CPU_REPACK" not in weights, weights
        assert cpu_buffers.extra_buffer_types() == []
        assert _greedy(plain.engine, "The capital of France is")
    finally:
        plain.close()
