"""The one settings model: every field reaches what it configures, through one path.

Engine settings are checked on the arguments the loader computes (no model loaded), plus one
real load of the vision engine, the engine that once lost --parallel; the command line is
checked flag by flag against the model, with llama-server's short names and NEXA_* variables.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

import nexa
from nexa.cli import main
from nexa.config import SETTINGS_ENV, Settings, cli_flag, default, env_name
from nexa.engines.loader import EngineCall, engine_call
from nexa.engines.onnx.layout import DIFFUSION_FILES
from nexa.errors import StartupError
from nexa.models.types import ModelType, ResolvedModel
from support.settings import no_nexa_variables, parse  # noqa: F401  # the fixture is autouse

SRC = Path(nexa.__file__).parent

LLAMA = ("LlamaEngine", "VisionEngine")
GGUF = (*LLAMA, "EmbeddingEngine")  # RerankerEngine takes the same arguments (checked below)
ONNX = ("OnnxTextEngine", "OnnxEmbeddingEngine")

# Setting -> {engine class: the constructor argument it becomes}.
ENGINE_FIELDS: dict[str, dict[str, str]] = {
    "n_ctx": {e: "n_ctx" for e in (*GGUF, *ONNX)},
    "n_threads": {
        **{e: "n_threads" for e in (*GGUF, *ONNX, "DiffusionEngine", "OnnxDiffusionEngine", "OnnxWhisperEngine")},
        "WhisperEngine": "cpu_threads",
    },
    "parallel": {e: "parallel" for e in LLAMA},
    "max_queue": {e: "max_queue" for e in (*LLAMA, "OnnxDiffusionEngine", "OnnxWhisperEngine")},
    "n_gpu_layers": {e: "n_gpu_layers" for e in GGUF},
    "main_gpu": {e: "main_gpu" for e in GGUF},
    "tensor_split": {e: "tensor_split" for e in GGUF},
    "whisper_device": {"WhisperEngine": "device"},
    "repack": {e: "repack" for e in GGUF},
    "flash_attn": {e: "flash_attn" for e in LLAMA},
    "whisper_compute_type": {"WhisperEngine": "compute_type"},
    "whisper_batch_size": {"WhisperEngine": "batch_size"},
    "projector": {"VisionEngine": "projector"},
}
# Which model, from where, in which variant: the store and the loader's choice of engine.
MODEL_FIELDS = {"model", "models", "source", "model_type", "onnx"}
# Read by the HTTP server (app, routers, image input) or by the CLI's start-up.
SERVER_FIELDS = {
    "host", "port", "reload", "cors_origins", "shutdown_grace_s", "log_level",
    "image_output_dir", "allowed_image_dirs", "max_image_size", "max_image_steps", "max_images_n",
    "max_upload_mb", "remote_images", "allowed_image_hosts", "max_image_bytes", "image_fetch_timeout_s",
    "max_image_redirects", "max_chat_images",
    "api_key", "api_key_file", "insecure_public", "allowed_hosts",
    "max_body_bytes", "max_messages", "max_image_prompt_chars", "max_audio_seconds",
    "max_embedding_inputs", "preprocess_threads", "workers",
    "models_dir", "allow_pull", "strict_model", "keep_alive", "max_models", "max_memory",
}  # fmt: skip



# -- every field reaches what it configures ---------------------------------------------------


def test_every_field_is_an_engine_argument_a_model_choice_or_a_server_setting() -> None:
    groups = [set(ENGINE_FIELDS), MODEL_FIELDS, SERVER_FIELDS]
    assert set().union(*groups) == set(Settings.model_fields), "a new field: say above what it configures"
    assert sum(len(g) for g in groups) == len(Settings.model_fields)  # and only one thing


@pytest.mark.parametrize("field", sorted(SERVER_FIELDS | MODEL_FIELDS))
def test_every_server_setting_is_read_somewhere(field: str) -> None:
    readers = [p for p in SRC.rglob("*.py") if p.name != "config.py" and re.search(rf"\.{field}\b", p.read_text())]
    assert readers, f"nothing reads settings.{field}"


def engine_calls(tmp_path: Path, settings: Settings) -> dict[str, EngineCall]:
    """The loader's answer for every engine, on stand-in files (nothing is loaded)."""

    def model(name: str, model_type: ModelType) -> ResolvedModel:
        return ResolvedModel(name, tmp_path / name, model_type)

    (tmp_path / "whisper").mkdir()
    (tmp_path / "own-mmproj.gguf").write_bytes(b"GGUF")
    genai, encoder = tmp_path / "genai", tmp_path / "encoder"
    genai.mkdir()
    (genai / "genai_config.json").write_text(json.dumps({"model": {"type": "llama"}}))
    encoder.mkdir()
    (encoder / "tokenizer.json").write_text("{}")
    (encoder / "model.onnx").write_bytes(b"")
    calls = [
        engine_call(model("m.gguf", t), settings)
        for t in (ModelType.NLP, ModelType.TEXT_EMBEDDING, ModelType.COMPUTER_VISION)
    ]
    vision = ResolvedModel("m.gguf", tmp_path / "m.gguf", ModelType.MULTIMODAL, projector=tmp_path / "own-mmproj.gguf")
    calls.append(engine_call(vision, settings))
    calls.append(engine_call(model("whisper", ModelType.AUDIO), settings))
    onnx = settings.model_copy(update={"onnx": True})
    calls.append(engine_call(ResolvedModel("genai", genai, ModelType.NLP), onnx))
    calls.append(engine_call(ResolvedModel("encoder", encoder, ModelType.TEXT_EMBEDDING), onnx))
    pipeline = tmp_path / "sd-onnx"
    for name in DIFFUSION_FILES:
        (pipeline / name).parent.mkdir(parents=True, exist_ok=True)
        (pipeline / name).write_bytes(b"")
    calls.append(engine_call(ResolvedModel("sd-onnx", pipeline, ModelType.NLP), onnx))  # the layout, not -mt
    speech = tmp_path / "whisper-onnx"
    speech.mkdir()
    (speech / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    for name in ("tokenizer.json", "encoder_model.onnx", "decoder_model.onnx"):
        (speech / name).write_bytes(b"")
    calls.append(engine_call(ResolvedModel("whisper-onnx", speech, ModelType.AUDIO), onnx))
    return {call.target.split(":")[1]: call for call in calls}


def engine_arguments(call: EngineCall) -> dict[str, Any]:
    return {**call.kwargs, **call.kwargs.get("load_args", {})}  # StableDiffusion's own arguments too


def test_every_engine_setting_reaches_its_engines(tmp_path: Path) -> None:
    projector = tmp_path / "mmproj.gguf"
    projector.write_bytes(b"GGUF")
    custom = dict(
        n_ctx=333, n_threads=7, parallel=3, max_queue=5, n_gpu_layers=0, main_gpu=1, tensor_split=(3.0, 1.0),
        repack=False, flash_attn="off", whisper_device="cpu", whisper_compute_type="float32", whisper_batch_size=2,
        projector=str(projector),
    )  # fmt: skip
    assert set(custom) == set(ENGINE_FIELDS)
    assert all(value != default(field) for field, value in custom.items())  # each one off its default
    calls = engine_calls(tmp_path, Settings(**custom))
    assert set(calls) == {e for engines in ENGINE_FIELDS.values() for e in engines}
    for field, engines in ENGINE_FIELDS.items():
        expected = Path(custom[field]) if field == "projector" else custom[field]
        for engine, argument in engines.items():
            assert engine_arguments(calls[engine])[argument] == expected, (field, engine)


def test_the_loader_fills_every_constructor_argument(tmp_path: Path) -> None:
    """An engine argument with a default the loader forgets is how --parallel once missed vision."""
    import importlib

    from nexa.engines.llama.engine import LlamaEngine

    for call in engine_calls(tmp_path, Settings()).values():
        module, name = call.target.split(":")
        engine_class = getattr(importlib.import_module(module), name)
        parameters = dict(inspect.signature(engine_class).parameters)
        if parameters.pop("kwargs", None) is not None:  # VisionEngine passes the rest to LlamaEngine
            parameters.update(inspect.signature(LlamaEngine).parameters)
        assert set(parameters) == set(call.kwargs), name


def test_the_reranker_takes_what_the_embedding_engine_takes() -> None:
    # The loader picks one of the two from the GGUF's pooling type, with the same arguments.
    from nexa.engines.llama.embedder import EmbeddingEngine
    from nexa.engines.llama.reranker import RerankerEngine

    assert inspect.signature(RerankerEngine).parameters == inspect.signature(EmbeddingEngine).parameters


# -- the command line and NEXA_* variables ----------------------------------------------------


def test_a_fields_default_is_the_command_lines_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse().model_dump() == Settings().model_dump()
    with pytest.raises(SystemExit):
        main(["server", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name, info in Settings.model_fields.items():
        flag = cli_flag(name)
        value = info.get_default(call_default_factory=True)
        if flag is None or isinstance(value, bool):
            continue
        if flag.shown_default:
            assert f"default: {flag.shown_default}; {env_name(name)})" in shown
        elif isinstance(value, (int, float)):
            assert f"default: {value / flag.scale:g}; {env_name(name)})" in shown, name


def sample(name: str, tmp_path: Path) -> tuple[list[str], Any]:
    """A non-default value for a field: what to type after its flag, and what the field becomes."""
    info = Settings.model_fields[name]
    value = info.get_default(call_default_factory=True)
    special: dict[str, tuple[list[str], Any]] = {
        "projector": ([str(tmp_path / "mmproj.gguf")], str(tmp_path / "mmproj.gguf")),
        "allowed_image_dirs": ([str(tmp_path)], [str(tmp_path)]),
        "allowed_image_hosts": (["10.0.0.0/8"], ["10.0.0.0/8"]),
        "cors_origins": (["http://localhost:3000"], ["http://localhost:3000"]),
        "api_key": (["k1"], ["k1"]),
        "api_key_file": ([str(tmp_path / "keys")], str(tmp_path / "keys")),
        "allowed_hosts": (["nexa.test"], ["nexa.test"]),
        "host": (["127.0.0.2"], "127.0.0.2"),  # another host needs a key (test_security.py)
        "log_level": (["debug"], "debug"),
        "parallel": (["3"], 3),
        "max_image_bytes": (["2.5"], int(2.5 * 2**20)),
        "max_body_bytes": (["1.5"], int(1.5 * 2**20)),
        "models_dir": ([str(tmp_path)], str(tmp_path)),
        "max_models": (["2"], 2),
        "max_memory": (["8GB"], 8 * 10**9),
        "keep_alive": (["90s"], 90.0),
        "n_gpu_layers": (["12"], 12),
        "main_gpu": (["1"], 1),
        "tensor_split": (["3,1"], (3.0, 1.0)),
        "whisper_device": (["cuda"], "cuda"),
        "flash_attn": (["on"], "on"),
    }
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return [], not value
    if value is None or isinstance(value, str):
        return ["x1"], "x1"
    new = value + 1 if value != 0 else 2
    return [f"{new:g}"], new


def test_every_flag_and_short_name_sets_its_field(tmp_path: Path) -> None:
    (tmp_path / "mmproj.gguf").write_bytes(b"GGUF")
    (tmp_path / "keys").write_text("k1\n")
    for name in Settings.model_fields:
        flag = cli_flag(name)
        if flag is None:
            assert name in MODEL_FIELDS  # set by `[onnx] MODEL`, -lp/-hf/-ms and -mt
            continue
        typed, expected = sample(name, tmp_path)
        for spelling in flag.names:
            assert getattr(parse(spelling, *typed), name) == expected, spelling


def test_llama_server_short_names() -> None:
    short = parse("-c", "512", "-t", "3", "-np", "2", "-ngl", "0", "-fa", "off")
    assert (short.n_ctx, short.n_threads, short.parallel, short.n_gpu_layers, short.flash_attn) == (512, 3, 2, 0, "off")
    long = parse("--nctx", "512", "--threads", "3", "--parallel", "2", "--n-gpu-layers", "0", "--flash-attn", "off")
    assert short == long


def test_nexa_variables_set_what_flags_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXA_N_CTX", "4096")
    monkeypatch.setenv("NEXA_PORT", "9001")
    monkeypatch.setenv("NEXA_REPACK", "false")
    monkeypatch.setenv("NEXA_CORS_ORIGINS", '["http://localhost:3000"]')
    monkeypatch.setenv("NEXA_MODEL", "qwen2.5")
    s = parse()
    assert (s.n_ctx, s.port, s.repack, s.model) == (4096, 9001, False, "qwen2.5")
    assert s.cors_origins == ["http://localhost:3000"]
    assert Settings().n_ctx == 4096  # the same model in code
    flagged = parse("gemma", "-c", "512")
    assert (flagged.n_ctx, flagged.model, flagged.port) == (512, "gemma", 9001)  # flags win


def test_a_bad_value_names_its_flag_or_variable(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    with pytest.raises(StartupError, match=r"^--nctx must be at least 16 \(got 8\)"):
        parse("-c", "8")
    with pytest.raises(StartupError, match="--port must be between 1 and 65535"):
        parse("--port", "70000")
    with pytest.raises(StartupError, match=r"--max-image-mb must be above 0 \(got 0\)"):
        parse("--max-image-mb", "0")
    monkeypatch.setenv("NEXA_MAX_QUEUE", "-1")
    with pytest.raises(StartupError, match="NEXA_MAX_QUEUE must be at least 0"):
        parse()
    assert main(["server"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["nexa: error: NEXA_MAX_QUEUE must be at least 0 (got -1)."]


def test_settings_travel_to_a_reload_child_whole(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings(model="m", model_type=ModelType.AUDIO, n_ctx=512, parallel=2, allowed_image_dirs=[str(tmp_path)])
    monkeypatch.setenv(SETTINGS_ENV, s.to_env())
    monkeypatch.setenv("NEXA_N_CTX", "4096")  # the child takes the parent's settings, not its environment
    assert Settings.from_env() == s


def test_code_builds_settings_by_keyword_and_refuses_unknown_names() -> None:
    assert Settings(n_ctx=1024, max_queue=1).max_queue == 1
    with pytest.raises(ValueError, match="n_ctxx"):
        Settings(n_ctxx=1024)  # type: ignore[call-arg]
