"""The `nexa` command: flag parsing, one-line start-up errors, a real start and stop."""

from __future__ import annotations

import signal
import threading

import httpx

from support.servers import ServerProcess


def test_real_start_serves_logs_and_stops_cleanly_on_sigterm(smollm2):
    # A grace period well beyond the stream's length: on a busy machine 60 tokens can take longer
    # than the default 30 s, and this test is about finishing in-flight work, not about speed.
    with ServerProcess.nexa(str(smollm2.path), "-lp", "--shutdown-grace", "120", start_timeout_s=120) as server:
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
        t.join(timeout=180)
        assert done and done[-1] == "data: [DONE]", (server.stop(), server.log())
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status says SIGTERM.
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server.log()
    assert "loaded" in log and "POST /v1/chat/completions 200" in log and "tok/s" in log
    assert "Application shutdown complete" in log
    # The model ran in a worker process of its own, closed once the in-flight stream had finished.
    started, ended = log.index("worker for "), log.rindex(") ended")
    assert started < log.index("POST /v1/chat/completions 200") < ended


def test_reload_starts_through_an_import_string(smollm2):
    with ServerProcess.nexa(str(smollm2.path), "-lp", "--reload", start_timeout_s=120) as server:
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
