"""What the model-worker transport costs (nexa/workers): per streamed token and per call.

1. Raw transports between two processes, one token-sized message at a time, as a worker
   streams them: multiprocessing's Connection over a socketpair (what nexa uses), the same
   over os.pipe, and multiprocessing.Queue (a feeder thread and a lock per message).
   Then, within one process, a producer thread's items read on an event loop: through a bridge
   thread (a blocking iterator, call_soon_threadsafe per item) against channel.Stream, flooded
   and spaced 1 ms apart (CPU per item: the HTTP side's share of a streamed token).
2. The real thing on SmolLM2: a call (`tokenize`) through a RemoteEngine against the same call
   in-process, and greedy decoding of 128 tokens, streamed from the worker against in-process,
   in alternating passes (medians).
3. The same decoding read on an event loop as the server reads it, 1 and --streams streams at
   once: through a bridge thread per request (the blocking iterator, then call_soon_threadsafe
   per token: how streams were read before channel.Stream) against handed straight to the loop
   (in-process, by the scheduler's thread; from a worker, read off its socket by the loop
   itself, as `remote.read_on` has the server do). Wall tokens/s, and this process's CPU per
   token (for the worker, that is the whole HTTP-side cost of a token: the worker decodes elsewhere).

    .venv/bin/python bench/bench_transport.py [--messages 20000] [--reps 5] [--streams 8]

A script, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import socket
import statistics
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from nexa.channel import END, Channel, Stream
from nexa.config import Settings
from nexa.engines.base import SamplingParams, TextDelta
from nexa.models.startup import load_in_process
from nexa.models.store import ModelStore
from nexa.server.threads import in_thread, iterate, iterate_in_thread
from nexa.workers import remote
from nexa.workers.remote import RemoteEngine

ITEM = ("item", 7, TextDelta(" token", []))


def _send_conn(fd: int, n: int) -> None:
    conn = Connection(fd)
    for _ in range(n):
        conn.send(ITEM)
    conn.send(("end", 7))


def _send_queue(q: Any, n: int) -> None:
    for _ in range(n):
        q.put(ITEM)
    q.put(("end", 7))


def raw(n: int) -> dict[str, float]:
    """Microseconds per message, sender and receiver in different processes."""
    ctx = mp.get_context("fork")
    out: dict[str, float] = {}

    def timed(recv: Any, start: Any) -> float:
        started = time.perf_counter()
        start()
        while recv()[0] != "end":
            pass
        return (time.perf_counter() - started) / n * 1e6

    a, b = socket.socketpair()
    p = ctx.Process(target=_send_conn, args=(b.fileno(), n))
    conn = Connection(a.detach())
    out["Connection over socketpair (nexa)"] = timed(conn.recv, p.start)
    p.join()
    b.close()

    r, w = os.pipe()
    p = ctx.Process(target=_send_conn, args=(w, n))
    conn = Connection(r)
    out["Connection over os.pipe"] = timed(conn.recv, p.start)
    p.join()
    os.close(w)

    q = ctx.Queue()
    p = ctx.Process(target=_send_queue, args=(q, n))
    out["multiprocessing.Queue"] = timed(q.get, p.start)
    p.join()
    return out


async def _on_loop(engine: Any, prompt: list[int], params: SamplingParams, streams: int, straight: bool) -> int:
    loop = asyncio.get_running_loop()
    if straight:
        remote.read_on(loop)  # a worker's replies are read by this loop, as in the server
    try:
        return await _streams(engine, prompt, params, streams, straight)
    finally:
        remote.stop_reading_on(loop)


async def _streams(engine: Any, prompt: list[int], params: SamplingParams, streams: int, straight: bool) -> int:
    async def one() -> int:
        cancel = threading.Event()
        items = await in_thread(engine.generate, prompt, params, cancel)
        if straight:
            source = iterate(items, cancel)
        else:  # a plain generator is not a Stream: read blocking in a thread of its own
            source = iterate_in_thread(lambda _: (x for x in items), cancel)
        return sum([1 async for x in source if isinstance(x, TextDelta)])

    return sum(await asyncio.gather(*(one() for _ in range(streams))))


def loop_reads(here: Any, there: Any, prompt: list[int], params: SamplingParams, reps: int, streams: int) -> None:
    for n in sorted({1, streams}):
        for name, engine in (("in-process", here), ("worker", there)):
            wall: dict[bool, list[float]] = {False: [], True: []}
            cpu: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(reps):
                for straight in (False, True):
                    started, used = time.perf_counter(), time.process_time()
                    tokens = asyncio.run(_on_loop(engine, prompt, params, n, straight))
                    wall[straight].append(tokens / (time.perf_counter() - started))
                    cpu[straight].append((time.process_time() - used) / tokens * 1e6)
            bridge, direct = statistics.median(wall[False]), statistics.median(wall[True])
            print(
                f"  {n} stream(s), {name:<10}: bridge thread {bridge:7.1f} tok/s "
                f"{statistics.median(cpu[False]):6.1f} us CPU/token | straight to the loop {direct:7.1f} tok/s "
                f"{statistics.median(cpu[True]):6.1f} us CPU/token ({direct / bridge:.3f}x)"
            )


def _read_on_loop(n: int, gap_s: float, straight: bool) -> int:
    channel = Channel()
    blocking: queue.SimpleQueue[Any] = queue.SimpleQueue()
    put = channel.put if straight else blocking.put

    def produce() -> None:
        for i in range(n):
            put(i)
            if gap_s:
                time.sleep(gap_s)
        put(END)

    def read_blocking() -> Any:
        while (item := blocking.get()) is not END:
            yield item

    async def consume() -> int:
        threading.Thread(target=produce).start()
        cancel = threading.Event()
        source = iterate(Stream(channel), cancel) if straight else iterate_in_thread(lambda _: read_blocking(), cancel)
        return sum([1 async for _ in source])

    return asyncio.run(consume())


def loop_handoff(n: int, reps: int) -> None:
    for gap_s, count in ((0.0, n), (0.001, max(1, n // 10))):
        for straight in (False, True):
            cpu = []
            for _ in range(reps):
                used = time.process_time()
                _read_on_loop(count, gap_s, straight)
                cpu.append((time.process_time() - used) / count * 1e6)
            how = "straight to the loop" if straight else "bridge thread       "
            when = "spaced 1 ms" if gap_s else "flooded    "
            print(f"  {when}, {how}: {statistics.median(cpu):6.1f} us CPU/item")


def engines(reps: int, streams: int) -> None:
    model = ModelStore().resolve(None)
    settings = Settings(n_ctx=2048, parallel=streams)
    here = load_in_process(model, settings)
    there = RemoteEngine.start(model, settings)
    text = "The quick brown fox jumps over the lazy dog. " * 8
    try:
        for name, engine in (("in-process", here), ("worker", there)):
            engine.tokenize(text)
            started = time.perf_counter()
            for _ in range(200):
                engine.tokenize(text)
            print(f"  tokenize call, {name:<10}: {(time.perf_counter() - started) / 200 * 1e6:8.1f} us")
        prompt = here.tokenize("Once upon a time, in a lighthouse by the sea, there lived")
        params = SamplingParams(max_tokens=128, temperature=0)
        rates: dict[str, list[float]] = {"in-process": [], "worker": []}
        for _ in range(reps):
            for name, engine in (("in-process", here), ("worker", there)):
                started = time.perf_counter()
                n = sum(1 for item in engine.generate(prompt, params, threading.Event()) if isinstance(item, TextDelta))
                rates[name].append(n / (time.perf_counter() - started))
        a, b = statistics.median(rates["in-process"]), statistics.median(rates["worker"])
        print(f"  decode 128 tokens, in-process: {a:7.1f} tok/s")
        print(f"  decode 128 tokens, worker    : {b:7.1f} tok/s  (worker/in-process {b / a:.3f}x)")
        print("the same read on an event loop, as the server reads it:")
        loop_reads(here, there, prompt, params, reps, streams)
    finally:
        there.close()
        here.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--streams", type=int, default=8)
    args = ap.parse_args()
    print(f"raw transports, {args.messages} token messages, one process to another:")
    for name, us in raw(args.messages).items():
        print(f"  {name:<36}: {us:6.1f} us/message")
    print("a thread's items read on an event loop, one process:")
    loop_handoff(args.messages, args.reps)
    print("SmolLM2 through a worker against in-process:")
    engines(args.reps, args.streams)


if __name__ == "__main__":
    main()
