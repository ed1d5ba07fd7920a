"""nexa on Ray Serve (`nexa serve-ray`) against one `nexa server`, same model, same machine, one run.

1. Throughput: aggregate streaming tokens/s of 2 single-thread replicas behind Ray Serve (router,
   proxy and all) against one 2-thread `nexa server`, for the same concurrent clients, each chat
   with a prompt of its own; and one 1-thread `nexa server`, to tell how much of the difference is
   llama.cpp's threads waiting for each other on a machine that other work shares.
2. Prefix-aware routing: the time to first token of repeated chats over more long system prompts
   (~1k tokens each) than one replica's slots hold, in shuffled order, with PrefixRouter against
   Ray Serve's default routing (the less loaded of two random replicas). With prefix routing each
   prompt stays on one replica, whose slots keep it cached; by default each replica sees every
   prompt and its slots keep evicting them. Target: <= 0.5x.

    .venv/bin/pip install -e '.[ray]'
    .venv/bin/python bench/bench_ray.py [--clients 4] [--rounds 2] [--prefixes 8] [--repeats 3] [--throughput-only]

A local Ray of --cpus CPUs (default 2) is started and shut down here. A script, not a test: it
prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support: the server runner and the SSE parser
sys.path.insert(0, str(REPO / "src"))

from support.servers import HOST, ServerProcess, free_port  # noqa: E402
from support.sse import delta_text, iter_chunks  # noqa: E402

TOPICS = ["a lighthouse", "a lost robot", "a caravan", "a diver", "a village", "a musician", "a library", "a garden"]
MANUAL = (
    "Operating manual of plant {p}, section {i}: every valve is inspected weekly, pressures are logged at the "
    "start of each shift, and any reading outside the normal band is reported to the duty engineer. "
)
PARALLEL = 4  # slots per replica (and server): fewer than --prefixes, so one replica cannot cache them all


def stream_chat(url: str, messages: list[dict], max_tokens: int) -> tuple[float, int]:
    """(time to first token, tokens) of one streamed chat."""
    body = {"model": "any", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    ttft, tokens = None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for chunk in iter_chunks(r.iter_lines()):
            if delta_text(chunk):
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
    return (ttft if ttft is not None else time.perf_counter() - started), tokens


def throughput(url: str, clients: int, rounds: int, tag: str) -> float:
    """Aggregate streamed tokens/s of `clients` threads doing `rounds` chats each."""
    counts = [0] * clients

    def client(c: int) -> None:
        for r in range(rounds):
            messages = [{"role": "user", "content": f"({tag} {c}-{r}) Write a story about {TOPICS[c % 8]}."}]
            counts[c] += stream_chat(url, messages, 64)[1]

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def prefix_ttft(url: str, prefixes: int, repeats: int, seed: int) -> float:
    """Median TTFT of the repeated chats (each prompt's first use left out: it is cold either way)."""
    systems = ["".join(MANUAL.format(p=p, i=i) for i in range(20)) for p in range(prefixes)]
    order = [p for _ in range(repeats + 1) for p in range(prefixes)]
    rng = random.Random(seed)
    rng.shuffle(order)
    seen: set[int] = set()
    ttfts = []
    for n, p in enumerate(order):
        messages = [{"role": "system", "content": systems[p]}, {"role": "user", "content": f"Question {n}: why?"}]
        ttft = stream_chat(url, messages, 4)[0]
        if p in seen:
            ttfts.append(ttft)
        seen.add(p)
    return statistics.median(ttfts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--throughput-only", action="store_true", help="skip the prefix-routing comparison")
    args = parser.parse_args()
    common = ["--nctx", "2048", "--parallel", str(PARALLEL)]

    # The peer: one server with every CPU. Also one with a single thread, which tells how much of
    # the gap is llama.cpp's threads waiting for each other on a busy machine.
    rates: dict[int, float] = {}
    for threads in (args.cpus, 1):
        single = ServerProcess.nexa("--threads", str(threads), *common)
        single.start()
        try:
            rate = throughput(single.url, args.clients, args.rounds, f"single{threads}")
        finally:
            single.stop()
        print(f"nexa server, {threads} thread(s): {rate:.1f} tok/s aggregate ({args.clients} clients)", flush=True)
        rates[threads] = rate
    one = rates[args.cpus]

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from nexa.config import Settings
    from nexa.server.ray_app import RayOptions, deploy

    ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="WARNING")
    try:
        settings = Settings(n_threads=1, n_ctx=2048, parallel=PARALLEL, host=HOST, port=free_port())
        results = {}
        for prefix_routing in (True,) if args.throughput_only else (True, False):
            url = deploy(settings, RayOptions(replicas=args.cpus, prefix_routing=prefix_routing))
            stream_chat(url, [{"role": "user", "content": "Hi."}], 2)  # both replicas up
            if prefix_routing:
                many = throughput(url, args.clients, args.rounds, "ray")
                print(f"Ray Serve, {args.cpus} replicas x 1 thread: {many:.1f} tok/s aggregate ({many / one:.2f}x "
                      f"nexa server with {args.cpus} threads, {many / rates[1]:.2f}x with 1)", flush=True)
            if args.throughput_only:
                return
            results[prefix_routing] = prefix_ttft(url, args.prefixes, args.repeats, seed=1)
            name = "prefix-aware" if prefix_routing else "default"
            print(f"{name} routing: median TTFT of repeated long-prefix chats {results[prefix_routing] * 1000:.0f} ms")
        print(f"prefix-aware / default TTFT: {results[True] / results[False]:.2f}x (target <= 0.5x)")
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
