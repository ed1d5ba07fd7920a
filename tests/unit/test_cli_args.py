"""The `nexa` command without a model loaded: flag parsing and one-line start-up errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from nexa.cli import main
from nexa.errors import StartupError
from nexa.models.types import ModelType
from support.settings import no_nexa_variables, parse  # noqa: F401  # the fixture is autouse


def nexa(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexa", *args],
        stdin=subprocess.DEVNULL,  # nothing may wait on a terminal
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("nexa: error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_defaults_match_the_spec():
    s = parse()
    assert (s.model, s.host, s.port, s.n_ctx, s.reload, s.source) == (None, "localhost", 8000, 2048, False, "auto")


def test_flags_parse():
    s = parse(
        "../models/llava/", "-lp", "-mt", "MULTIMODAL", "--host", "0.0.0.0", "--port", "9000", "--nctx", "4096",
        "--api-key", "k",
    )  # fmt: skip
    assert (s.model, s.source, s.model_type, s.host, s.port, s.n_ctx) == (
        "../models/llava/",
        "local",
        ModelType.MULTIMODAL,
        "0.0.0.0",
        9000,
        4096,
    )
    assert parse("org/repo:Q4_K_M", "-hf").source == "hf"
    assert parse("org/repo", "--modelscope").source == "ms"
    assert parse("x", "--local_path", "--model_type", "AUDIO").model_type == ModelType.AUDIO
    onnx = parse("onnx", "phi3")
    assert onnx.onnx and onnx.model == "phi3"


def test_model_type_needs_a_source():
    with pytest.raises(StartupError, match="-lp, -hf or -ms"):
        parse("gemma", "-mt", "NLP")


def test_sources_are_mutually_exclusive():
    r = nexa("server", "x", "-lp", "-hf")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_help_lists_the_spec_flags():
    out = nexa("server", "--help").stdout
    for flag in ("-lp", "--local_path", "-mt", "-hf", "-ms", "--host", "--port", "--reload", "--nctx"):
        assert flag in out
    for flag in ("-c", "-t", "-np", "-ngl", "--mmproj", "--cors-origin", "--no-repack", "NEXA_N_CTX"):
        assert flag in out  # llama-server's short names beside ours, and the variables


def test_short_names_and_variables_reach_a_subprocess(tmp_path):
    env = {"NEXA_CACHE_ROOT": str(tmp_path), "NEXA_N_CTX": "8"}
    assert_one_line_error(nexa("server", env=env), "NEXA_N_CTX must be at least 16")
    assert_one_line_error(nexa("server", "-c", "8", env=env), "--nctx must be at least 16")


@pytest.mark.parametrize(
    "args,needles",
    [
        (("server", "/no/such/model.gguf", "-lp"), ("/no/such/model.gguf",)),
        (("server", "no-such-catalogue-name"), ("no-such-catalogue-name",)),
        (("server", "gemma", "-mt", "NLP"), ("-mt",)),
        (("server", "onnx"), ("onnx MODEL",)),
        (("server", "--nctx", "1"), ("--nctx",)),
        (("server", "-np", "0"), ("--parallel must be at least 1",)),
        (("server", "--mmproj", "/no/such/mmproj.gguf"), ("--projector",)),
        (("remove", "never-pulled-model"), ("never-pulled-model",)),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, needles, tmp_path):
    assert_one_line_error(nexa(*args, env={"NEXA_CACHE_ROOT": str(tmp_path)}), *needles)


def test_port_in_use_is_a_clear_error(smollm2):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = nexa("server", str(smollm2.path), "-lp", "--host", "127.0.0.1", "--port", str(port))
    assert_one_line_error(r, "already in use", "--port")


def test_list_on_an_empty_cache(tmp_path):
    r = nexa("list", env={"NEXA_CACHE_ROOT": str(tmp_path)})
    assert r.returncode == 0 and "No models cached" in r.stdout


def test_cli_validates_parallel_and_queue(capsys):
    assert main(["server", "--parallel", "0"]) == 2
    assert "--parallel must be at least 1" in capsys.readouterr().err
    settings = parse("--parallel", "3", "--max-queue", "5")
    assert (settings.parallel, settings.max_queue) == (3, 5)
