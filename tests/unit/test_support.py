"""The shared test and benchmark helpers of tests/support/, without a model."""

from __future__ import annotations

import signal
import sys

import httpx
import pytest
from fastapi import FastAPI

from support.audio import wer
from support.servers import LiveServer, ServerProcess, free_port
from support.sse import delta_text, iter_chunks, sse_chunks, sse_payloads


def test_wer() -> None:
    assert wer("the cat sat", "the cat sat") == 0
    assert wer("the cat sat", "The cat, sat!") == 0
    assert wer("the cat sat", "the bat sat") == pytest.approx(1 / 3)
    assert wer("the cat sat", "the cat") == pytest.approx(1 / 3)
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)


def test_sse_whole_body() -> None:
    raw = 'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\ndata: {"choices": []}\n\ndata: [DONE]\n\n'
    assert sse_payloads(raw)[-1] == "[DONE]"
    chunks = sse_chunks(raw)
    assert [delta_text(c) for c in chunks] == ["Hi", ""]
    with pytest.raises(AssertionError):
        sse_payloads(raw[:-1])  # an unfinished event
    with pytest.raises(AssertionError):
        sse_chunks('data: {"a": 1}\n\n')  # no [DONE]
    with pytest.raises(AssertionError):
        sse_payloads("event: x\n\n")


def test_sse_lines_stop_at_done_and_skip_the_rest() -> None:
    lines = ["", ": comment", 'data: {"choices": [{"text": "a"}]}', "", 'data:{"choices": [{"text": "b"}]}',
             "data: [DONE]", 'data: {"after": "done"}']
    assert [delta_text(c) for c in iter_chunks(lines)] == ["a", "b"]


def test_live_server_serves_an_app() -> None:
    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    with LiveServer(app) as live:
        assert live.port > 0
        assert httpx.get(live.url + "/health").json() == {"status": "ok"}
    assert not live.thread.is_alive()


def test_server_process_starts_logs_and_stops(tmp_path) -> None:
    port = free_port()
    cmd = [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    (tmp_path / "health").write_text("ok")
    with ServerProcess(cmd, port, name="static files", start_timeout_s=60) as server:
        assert httpx.get(server.url + "/health").text == "ok"
    assert server.stop() == -signal.SIGTERM  # already stopped: the status again
    assert "GET /health" in server.log()


def test_server_process_that_exits_fails_with_its_log() -> None:
    server = ServerProcess([sys.executable, "-c", "print('no model here'); raise SystemExit(3)"], free_port())
    with pytest.raises(RuntimeError, match=r"(?s)exit status 3.*no model here"):
        server.start(timeout_s=60)
