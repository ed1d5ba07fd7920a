"""The `nexa` command: flag parsing, one-line start-up errors, a real start and stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from nexa.cli import build_parser, settings_from_args
from nexa.errors import StartupError
from nexa.models.types import ModelType
from support.servers import ServerProcess


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


def parse(*argv: str):
    return settings_from_args(build_parser().parse_args(["server", *argv]))


def test_defaults_match_the_spec():
    s = parse()
    assert (s.model, s.host, s.port, s.n_ctx, s.reload, s.source) == (None, "localhost", 8000, 2048, False, "auto")


def test_flags_parse():
    s = parse("../models/llava/", "-lp", "-mt", "MULTIMODAL", "--host", "0.0.0.0", "--port", "9000", "--nctx", "4096")
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


def test_real_start_serves_logs_and_stops_cleanly_on_sigterm(smollm2):
    with ServerProcess.nexa(str(smollm2.path), "-lp", start_timeout_s=120) as server:
        assert server.proc is not None
        body = {
            "messages": [{"role": "user", "content": "Count to one hundred."}],
            "max_tokens": 60,
            "temperature": 0,
            "stream": True,
        }
        done: list[str] = []
        streaming = threading.Event()

        def stream() -> None:
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    streaming.set()
                    if line:
                        done.append(line)

        t = threading.Thread(target=stream)
        t.start()
        assert streaming.wait(timeout=120), "the stream never started"  # then ask the server to stop
        server.proc.send_signal(signal.SIGTERM)
        t.join(timeout=120)
        assert done and done[-1] == "data: [DONE]", (server.stop(), server.log())
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status says SIGTERM.
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server.log()
    assert "loaded" in log and "POST /v1/chat/completions 200" in log and "tok/s" in log
    assert "Application shutdown complete" in log


def test_reload_starts_through_an_import_string(smollm2):
    with ServerProcess.nexa(str(smollm2.path), "-lp", "--reload", start_timeout_s=120) as server:
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
