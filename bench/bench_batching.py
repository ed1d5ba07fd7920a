"""Concurrent throughput: `nexa server` against llama.cpp's `llama-server` and llama-cpp-python's
two servers (`llama_cpp.server` and its batched `examples/server/server.py`), same model, same
machine, one run.

All servers run with the same threads, the same number of parallel slots and the same context
per slot; they are started together but only one is loaded at a time, in alternating passes, so
noise from elsewhere falls on all alike. For 1, 4 and 8 concurrent clients, every client streams
chat requests of 128 greedy tokens, each with its own prompt (so no server reuses another
request's cache); the script prints aggregate tokens/s and the median time to first token
(medians over the passes) and both as ratios to llama-server. Then the prompt cache: the
time to first token of a ~1k-token prompt, cold and again with the same prefix and a new
question at the end.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_batching.py [--model PATH] [--reps 3] [--rounds 2] [--only nexa,llama-server]
    # a change against the code before it, same run: a worktree of main as "nexa-baseline"
    git worktree add ../base main && .venv/bin/python bench/bench_batching.py --baseline ../base \
        --only nexa,nexa-baseline,llama-server

llama-server is built from the llama.cpp that the pinned llama-cpp-python's source archive
vendors, outside the repo (bench/peers.py; several minutes the first time). This is a script,
not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support: the server runner and the SSE parser
sys.path.insert(0, str(REPO / "bench"))

import peers  # noqa: E402

from support.servers import HOST, ServerProcess, free_port  # noqa: E402
from support.sse import delta_text, iter_chunks  # noqa: E402

MAX_TOKENS = 128
TOPICS = [
    "a lighthouse keeper", "a lost robot", "a desert caravan", "a deep-sea diver", "a mountain village",
    "a time traveller", "a street musician", "an old library", "a dragon's egg", "a space station",
    "a river ferry", "a secret garden", "a chess prodigy", "a storm chaser", "a clockmaker", "a polar expedition",
]
PREFIX_PARAGRAPH = (
    "The following is the operating manual of the northern water treatment plant. Section {i}: every valve "
    "is inspected weekly, pressures are logged at the start of each shift, and any reading outside the normal "
    "band is reported to the duty engineer together with the time, the gauge number and the action taken. "
)


def servers(model: Path, parallel: int, n_ctx: int, threads: int, baseline: Path | None = None) -> list[ServerProcess]:
    """Every server on its own port, each ready when /v1/models answers. `baseline`: another
    checkout of nexa (say, a worktree of main before a change), served as "nexa-baseline"."""
    py = sys.executable
    names = ("nexa", "nexa-in-process", "nexa-baseline", "llama-server", "llama_cpp.server", "example-server")
    port = {name: free_port() for name in names}
    config = {
        "server": {"host": HOST, "port": port["example-server"]},
        "model": {"path": str(model), "n_ctx": n_ctx * parallel, "n_seq_max": parallel,
                  "threads": threads, "threads_batch": threads, "max_output_tokens": MAX_TOKENS * 2},
    }
    config_path = Path(tempfile.mkstemp(suffix=".json")[1])
    config_path.write_text(json.dumps(config))
    commands = {
        "nexa": [py, "-m", "nexa", "server", str(model), "-lp", "--port", str(port["nexa"]), "--parallel",
                 str(parallel), "--nctx", str(n_ctx), "--threads", str(threads), "--log-level", "warning"],
        # Before model workers: the same server with the model in its own process.
        "nexa-in-process": [py, "-m", "nexa", "server", str(model), "-lp", "--port", str(port["nexa-in-process"]),
                            "--parallel", str(parallel), "--nctx", str(n_ctx), "--threads", str(threads),
                            "--log-level", "warning", "--no-workers"],
        "llama-server": [str(peers.llama_server()), "-m", str(model), "--host", HOST, "--port",
                         str(port["llama-server"]), "-np", str(parallel), "-c", str(n_ctx * parallel), "-t",
                         str(threads), "-tb", str(threads), "--no-webui"],
        # llama_cpp.server has one context and no batching: it serves one request at a time.
        "llama_cpp.server": [py, "-m", "llama_cpp.server", "--model", str(model), "--host", HOST, "--port",
                             str(port["llama_cpp.server"]), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                             "--n_threads_batch", str(threads)],
        "example-server": [py, str(peers.example_server()), "-C", str(config_path)],
    }
    env = {"llama-server": {**os.environ, "LD_LIBRARY_PATH": str(peers.llama_server().parent)}}
    if baseline is not None:  # the same command, importing nexa from the other checkout
        commands["nexa-baseline"] = [*commands["nexa"][:7], str(port["nexa-baseline"]), *commands["nexa"][8:]]
        env["nexa-baseline"] = {**os.environ, "PYTHONPATH": str(baseline.resolve() / "src")}
    return [ServerProcess(cmd, port[name], name=name, ready_path="/v1/models", env=env.get(name))
            for name, cmd in commands.items()]


@dataclass
class Sample:
    ttft_s: float
    tokens: int
    end: float


def stream_chat(url: str, messages: list[dict], max_tokens: int = MAX_TOKENS) -> Sample:
    body = {
        "model": "any", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft, chunks, usage = None, 0, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for chunk in iter_chunks(r.iter_lines()):
            if chunk.get("usage"):
                usage = chunk["usage"]
            if delta_text(chunk):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage and usage.get("completion_tokens") else chunks
    return Sample(ttft if ttft is not None else end - started, tokens, end)


def load(url: str, clients: int, rounds: int, tag: str) -> tuple[float, float, int, int]:
    """(aggregate tokens/s, median TTFT s, tokens, requests cut off): `clients` threads,
    `rounds` requests each. A stream the server breaks off counts no tokens."""
    samples: list[Sample] = []
    failed = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(rounds):
            topic = TOPICS[(c * rounds + r) % len(TOPICS)]
            messages = [
                {"role": "system", "content": f"Request {tag}-{c}-{r}. You are a storyteller."},
                {"role": "user", "content": f"Write a long story about {topic}, in many paragraphs."},
            ]
            try:
                s = stream_chat(url, messages)
            except httpx.HTTPError:  # llama_cpp.server cuts a stream off when another request comes
                with lock:
                    failed[0] += 1
                continue
            with lock:
                samples.append(s)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not samples:
        return 0.0, float("nan"), 0, failed[0]
    took = max(s.end for s in samples) - started
    tokens = sum(s.tokens for s in samples)
    return tokens / took, statistics.median(s.ttft_s for s in samples), tokens, failed[0]


def prefix_reuse(url: str) -> tuple[float, float]:
    """TTFT of a ~1k-token prompt cold, then with the same prefix and a different question."""
    manual = "".join(PREFIX_PARAGRAPH.format(i=i) for i in range(16))
    tag = f"{time.time_ns()}"  # never seen before by this server

    def ask(question: str) -> float:
        messages = [{"role": "system", "content": f"Manual {tag}. {manual}"}, {"role": "user", "content": question}]
        return stream_chat(url, messages, max_tokens=4).ttft_s

    cold = ask("How often are valves inspected?")
    warm = ask("Who receives the reports?")
    return cold, warm


def median_interval(values: list[float], resamples: int = 4000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median: how far the median of this many passes may be
    from the machine's true ratio, given the pass-to-pass noise (seeded: the same figures give
    the same interval)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2-135M-Instruct from MODELS.md)")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client in a pass")
    ap.add_argument("--reps", type=int, default=3, help="passes over every server and level (medians)")
    ap.add_argument("--parallel", type=int, default=8, help="slots for every server")
    ap.add_argument("--nctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--levels", default="1,4,8")
    ap.add_argument("--only", default="", help="comma-separated server names")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another nexa checkout (e.g. `git worktree add ../base main`), served as nexa-baseline")
    args = ap.parse_args()
    if args.model is None:
        from nexa.models.store import ModelStore

        args.model = ModelStore().resolve(None).path
    levels = [int(x) for x in args.levels.split(",")]
    chosen = [s for s in servers(args.model, args.parallel, args.nctx, args.threads, args.baseline)
              if not args.only or s.name in args.only.split(",")]
    log_dir = Path(tempfile.mkdtemp(prefix="bench_batching_"))
    print(f"model {args.model.name}, {args.parallel} slots x {args.nctx} tokens, {args.threads} threads, "
          f"{MAX_TOKENS} greedy tokens per request, {args.rounds} per client per pass, {args.reps} passes; "
          f"logs in {log_dir}")
    # All servers start first and wait idle; then the passes alternate between them, so that a
    # spell of noise from elsewhere on the machine falls on every server alike. Medians per cell.
    running: list[ServerProcess] = []
    for server in chosen:
        try:
            server.start(log_dir=log_dir)
            stream_chat(server.url, [{"role": "user", "content": "Hello"}], max_tokens=8)  # warm-up
            running.append(server)
        except Exception as exc:  # one peer failing must not cost the others' figures
            print(f"  {server.name}: failed to start: {exc}", flush=True)
            server.stop()
    runs: dict[str, dict[int, list]] = {s.name: {c: [] for c in levels} for s in running}
    results: dict[str, dict] = {s.name: {} for s in running}
    try:
        for rep in range(args.reps):
            for c in levels:
                # Each pass starts with the next server: none always runs right after the same one.
                for server in running[rep % len(running):] + running[: rep % len(running)]:
                    # The same prompts for every server in a pass (each has its own cache), new ones each pass.
                    got = load(server.url, c, args.rounds, f"{c}-{rep}")
                    runs[server.name][c].append(got)
                    cut = f", {got[3]} requests cut off" if got[3] else ""
                    print(f"  pass {rep + 1}: {server.name:<17} {c} clients: {got[0]:7.1f} tok/s  "
                          f"TTFT {got[1] * 1000:7.0f} ms  ({got[2]} tokens{cut})", flush=True)
        for server in running:
            for c in levels:
                got = runs[server.name][c]
                results[server.name][c] = (statistics.median(g[0] for g in got), statistics.median(g[1] for g in got))
            cold, warm = results[server.name]["prefix"] = prefix_reuse(server.url)
            print(f"  {server.name:<17} 1k-token prefix TTFT cold {cold * 1000:.0f} ms, reused "
                  f"{warm * 1000:.0f} ms ({warm / cold:.2f}x)", flush=True)
    finally:
        for server in running:
            server.stop()

    base = results.get("llama-server")
    print("\nclients  server             tok/s  TTFT ms  tok/s / llama-server's  llama-server's TTFT / this")
    for c in levels:
        for name, row in results.items():
            tps, ttft = row[c]
            ratio = f"{tps / base[c][0]:.2f}x" if base else "-"
            tratio = f"{base[c][1] / ttft:.2f}x" if base else "-"
            print(f"{c:>7}  {name:<17} {tps:7.1f} {ttft * 1000:8.0f}  {ratio:>22}  {tratio:>26}")
    print("(both ratios: above 1.0x means faster than llama-server; the target is >= 1.0x for nexa)")
    if "llama-server" in runs:
        # The same pass's figures side by side: noise from elsewhere on the machine moves both.
        print("\ntok/s against llama-server's in the same pass: median (lowest-highest), passes at >= 1.0x")
        for name in (n for n in runs if n != "llama-server"):
            for c in levels:
                ratios = [a[0] / b[0] for a, b in zip(runs[name][c], runs["llama-server"][c]) if b[0] > 0]
                if ratios:
                    low, high = median_interval(ratios)
                    print(f"{c:>7}  {name:<17} {statistics.median(ratios):.3f}x ({min(ratios):.2f}-{max(ratios):.2f}), "
                          f"{sum(r >= 1.0 for r in ratios)} of {len(ratios)}, 95% interval of the median "
                          f"{low:.3f}-{high:.3f}")
    if "nexa" in results:
        cold, warm = results["nexa"]["prefix"]
        print(f"nexa: repeated 1k-token prefix TTFT {warm / cold:.2f}x the cold one (target <= 0.2x)")


if __name__ == "__main__":
    main()
