"""Soak: many mixed clients against real `nexa server` processes for minutes, with random
disconnects and the attacks of issue 16 mixed in; the server must answer each as expected.

    .venv/bin/python bench/soak.py [--seconds 180] [--clients 32] [--kinds chat,embeddings,audio,images]
    .venv/bin/python bench/soak.py --url http://127.0.0.1:8000 --model chat=smollm2 ...  # one server, every model
    .venv/bin/python bench/soak.py --url chat=http://127.0.0.1:8000 --kinds chat --api-key KEY

One server process per model (chat: SmolLM2, embeddings: MiniLM as GGUF, audio: Whisper tiny.en,
images: the random-weight SDXS checkpoint), found or built as the tests do; a kind given a
`--url` is not started, so the script can point at servers already running (one URL serving
every model included). Clients pick at random: chat streams (a quarter of them hang up after a
few events), plain chats, embeddings, transcriptions, tiny images (a tenth of those hang up
early), and attacks (huge prompts, thousands of messages, hostile JSON schemas, a `<|im_end|>`
flood, a foreign Host or Origin, no key, NUL bytes, a FIFO or a folder as image_path, bodies and
uploads over the limits...) that must each get their 4xx: bench/soak_calls.py lists them.

Prints the failures (an unexpected status, any 5xx but a 503, an error event in a stream, a
dropped connection, no answer within --timeout, a server that died or logged a traceback: must
be 0), the p50/p99 latency of a plain short chat during the load against the same chat alone
before it, and each server's RSS (with its child processes) at start and end. This is a script,
not a test; on a shared machine the latency ratio mostly measures the other processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support and the model builders

from soak_calls import Call, attacks, workload  # noqa: E402

from support.servers import ServerProcess  # noqa: E402

KINDS = ("chat", "embeddings", "audio", "images")
PLAIN = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0, "seed": 1}


def start_servers(kinds: list[str], key: str | None, threads: int | None, work: Path) -> dict[str, ServerProcess]:
    """One `nexa server` per kind, started one after another (loading competes for the cores)."""
    from nexa.models.store import ModelStore

    common = (["--api-key", key] if key else []) + (["--threads", str(threads)] if threads else [])
    servers: dict[str, ServerProcess] = {}
    for kind in kinds:
        if kind == "chat":
            args = [str(ModelStore().resolve(None).path), "-lp"]
        elif kind == "embeddings":
            from minilm_gguf import minilm_gguf

            args = [str(minilm_gguf()), "-lp", "-mt", "TEXT_EMBEDDING"]
        elif kind == "audio":
            args = [str(ModelStore().resolve("faster-whisper-tiny.en").path), "-lp", "-mt", "AUDIO"]
        else:
            from sdxs_checkpoint import ensure_checkpoint

            checkpoint = ensure_checkpoint(Path.home() / ".cache" / "nexa" / "test-models")
            args = [str(checkpoint), "-lp", "-mt", "COMPUTER_VISION", "--output-dir", str(work / "out"),
                    "--allow-dir", str(work / "allowed")]  # fmt: skip
        server = ServerProcess.nexa(*args, *common, start_timeout_s=600)
        server.name = f"nexa server {kind}"
        took = server.start(log_dir=work)
        print(f"  {kind}: {server.url} (pid {server.proc.pid}), ready in {took:.1f}s")  # type: ignore[union-attr]
        servers[kind] = server
    return servers


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants (model workers, when there are some)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):  # gone meanwhile
            continue
    return total / 1024


# -- running them -------------------------------------------------------------------------------


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    hung_up: int = 0
    busy: int = 0


async def send(http: httpx.AsyncClient, urls: dict[str, str], call: Call, tally: Tally, timeout: float) -> None:
    url = urls[call.kind] + call.path
    tally.counts[call.name] += 1

    def fail(why: str) -> None:
        tally.failures.append(f"{call.name} ({call.method} {url}): {why}")

    try:
        if call.declared:
            status, text = await announce(url, call, dict(http.headers), timeout)
        elif call.stream:
            async with http.stream(call.method, url, timeout=timeout, **call.kwargs) as r:
                status, text, events = r.status_code, "", 0
                if status != 200:
                    text = (await r.aread()).decode(errors="replace")
                async for line in r.aiter_lines():
                    if '"server_error"' in line:
                        fail(f"error event in the stream: {line[:200]}")
                    events += line.startswith("data:")
                    if call.hang_up_after is not None and events >= call.hang_up_after:
                        tally.hung_up += 1
                        break
        else:
            request = http.request(call.method, url, timeout=timeout, **call.kwargs)
            if call.hang_up_after is not None:
                try:
                    r = await asyncio.wait_for(request, call.hang_up_after)
                except asyncio.TimeoutError:
                    tally.hung_up += 1
                    return
            else:
                r = await request
            status, text = r.status_code, r.text
            if call.check is not None and (why := call.check(r)):
                fail(why)
    except httpx.TimeoutException:
        return fail(f"no answer within {timeout:.0f}s")
    except httpx.TransportError as exc:
        return fail(f"connection dropped: {type(exc).__name__} {exc}")
    tally.statuses.setdefault(call.name, Counter())[status] += 1
    if status == 503 and 503 not in call.expect:
        tally.busy += 1  # the queue cap at work: a refusal the server promises, not a failure
    elif status not in call.expect:
        fail(f"status {status}, expected {sorted(call.expect)}: {text[:300]}")


async def announce(url: str, call: Call, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    """Send only the head of a request whose Content-Length says `call.declared` bytes: a server
    that waits for the body instead of refusing it from its length gets no answer in time."""
    target = httpx.URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        headers = {**headers, "host": f"{target.host}:{target.port}", "content-length": str(call.declared),
                   "content-type": "application/json", "connection": "close"}  # fmt: skip
        head = f"{call.method} {target.raw_path.decode()} HTTP/1.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() not in ("accept-encoding",))
        writer.write(head.encode("latin-1") + b"\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
    except asyncio.TimeoutError:
        raise httpx.ReadTimeout("no answer to the announced body") from None
    finally:
        writer.close()
    if not answer:
        raise httpx.RemoteProtocolError("the server closed the connection without an answer")
    status_line, _, rest = answer.decode("latin-1").partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


async def plain_chat(
    http: httpx.AsyncClient, url: str, plain: dict[str, Any], tally: Tally, timeout: float
) -> float | None:
    """Seconds the plain short chat took, or None (and a failure) if it did not answer 200."""
    started = time.perf_counter()
    try:
        r = await http.post(url + "/v1/chat/completions", json=plain, timeout=timeout)
    except httpx.HTTPError as exc:
        tally.failures.append(f"plain chat: {exc!r}")
        return None
    if r.status_code != 200:
        tally.failures.append(f"plain chat: status {r.status_code}: {r.text[:300]}")
        return None
    return time.perf_counter() - started


def percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), cuts[98]


async def soak(args: argparse.Namespace, urls: dict[str, str], kinds: list[str], work: Path) -> tuple[Tally, dict]:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients * 2 + 8, max_keepalive_connections=args.clients)
    rng = random.Random(args.seed)
    evil = attacks(kinds, args.api_key, work)
    plain = {**PLAIN, **({"model": args.models["chat"]} if "chat" in args.models else {})}
    tally = Tally()
    figures: dict[str, Any] = {}
    async with httpx.AsyncClient(headers=headers, limits=limits) as http:
        if "chat" in kinds:
            for _ in range(2):  # warm-up
                await plain_chat(http, urls["chat"], plain, tally, args.timeout)
            alone = [await plain_chat(http, urls["chat"], plain, tally, args.timeout) for _ in range(args.alone)]
            figures["alone"] = [t for t in alone if t is not None]
        end = time.monotonic() + args.seconds

        async def client() -> None:
            mine = random.Random(rng.random())
            while time.monotonic() < end:
                if evil and mine.random() < args.attack_share:
                    call = mine.choice(evil)
                else:
                    call = workload(kinds, mine, args.models)
                await send(http, urls, call, tally, args.timeout)

        async def probe() -> None:
            # The same plain chat as alone, one at a time beside the clients, with a pause so
            # that it samples the load rather than adding a client of its own.
            figures["loaded"] = []
            while time.monotonic() < end:
                if (took := await plain_chat(http, urls["chat"], plain, tally, args.timeout)) is not None:
                    figures["loaded"].append(took)
                await asyncio.sleep(0.5)

        tasks: list[Awaitable[Any]] = [client() for _ in range(args.clients)]
        await asyncio.gather(*tasks, *([probe()] if "chat" in kinds else []))
        for kind in kinds:
            try:
                if (await http.get(urls[kind] + "/health", timeout=30)).status_code != 200:
                    tally.failures.append(f"{kind}: /health did not answer 200 after the run")
            except httpx.HTTPError as exc:
                tally.failures.append(f"{kind}: /health failed after the run: {exc!r}")
    return tally, figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180, help="how long the load runs")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--kinds", default=",".join(KINDS), help="models to load: chat, embeddings, audio, images")
    ap.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="[KIND=]URL",
        help="use a running server for KIND (or, without KIND=, for every kind) instead of starting one",
    )
    ap.add_argument("--model", action="append", default=[], metavar="KIND=NAME",
                    help="name NAME as the model of KIND's requests (for a --url serving several models)")  # fmt: skip
    ap.add_argument("--api-key", help="start the servers with this key (and send it); adds the missing-key attack")
    ap.add_argument("--threads", type=int, help="--threads of each server started (default: the server's own)")
    ap.add_argument("--attack-share", type=float, default=0.1, help="share of requests that are attacks")
    ap.add_argument("--alone", type=int, default=20, help="plain chats timed before the load")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a request may take before it counts as stalled")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        ap.error(f"unknown kinds: {sorted(unknown)}")
    urls: dict[str, str] = {}
    args.models = dict(item.split("=", 1) for item in args.model)
    for item in args.url:  # KIND=URL, or URL alone for every kind (one server serving every model)
        kind, sep, url = item.partition("=")
        urls.update({kind: url} if sep and kind in KINDS else dict.fromkeys(kinds, item))
    with tempfile.TemporaryDirectory(prefix="nexa-soak-") as tmp:
        work = Path(tmp)
        (work / "allowed").mkdir()
        print(f"servers ({os.cpu_count()} cores on this machine):")
        servers = start_servers([k for k in kinds if k not in urls], args.api_key, args.threads, work)
        if len(servers) > 1 and args.threads is None:
            # Measured on 2 cores: a plain chat's p50 under load x500 with every server on all
            # cores, x4 with --threads 1 (ggml's threads spin while they wait for each other).
            print(f"  note: {len(servers)} servers each use every core; --threads 1 keeps them off each other")
        try:
            urls.update({kind: s.url for kind, s in servers.items()})
            rss_start = {kind: tree_rss_mib(s.proc.pid) for kind, s in servers.items()}  # type: ignore[union-attr]
            print(f"load: {args.clients} clients for {args.seconds:.0f}s ({args.attack_share:.0%} attacks)...")
            started = time.monotonic()
            tally, figures = asyncio.run(soak(args, urls, kinds, work))
            ran = time.monotonic() - started
            rss_end = {kind: tree_rss_mib(s.proc.pid) for kind, s in servers.items()}  # type: ignore[union-attr]
            for kind, s in servers.items():
                if s.proc is None or s.proc.poll() is not None:
                    tally.failures.append(
                        f"{kind}: the server process died (exit status {s.proc and s.proc.returncode})"
                    )
                if "Traceback" in s.log():
                    tally.failures.append(f"{kind}: the server logged a traceback; its log ends:\n{s.tail(30)}")
        finally:
            for s in servers.values():
                s.stop()
    report(tally, figures, ran, rss_start, rss_end)
    return 1 if tally.failures else 0


def report(tally: Tally, figures: dict[str, Any], ran: float, rss_start: dict, rss_end: dict) -> None:
    total = sum(tally.counts.values())
    print(f"\n{total} requests in {ran:.0f}s; {tally.hung_up} hung up on purpose; {tally.busy} busy (503)")
    for name, n in sorted(tally.counts.items(), key=lambda kv: -kv[1]):
        statuses = ", ".join(f"{s}: {c}" for s, c in sorted(tally.statuses.get(name, Counter()).items()))
        print(f"  {name:48s} {n:6d}   {statuses}")
    print(f"\nfailures: {len(tally.failures)}")
    for line in tally.failures[:30]:
        print(f"  {line}")
    if "alone" in figures:
        alone, loaded = percentiles(figures["alone"]), percentiles(figures.get("loaded", []))
        print(f"\nplain chat ({PLAIN['max_tokens']} tokens), seconds:")
        print(f"  alone:      p50 {alone[0]:.3f}  p99 {alone[1]:.3f}  ({len(figures['alone'])} requests)")
        print(f"  under load: p50 {loaded[0]:.3f}  p99 {loaded[1]:.3f}  ({len(figures.get('loaded', []))} requests)")
        print(f"  ratio:      p50 x{loaded[0] / alone[0]:.1f}  p99 x{loaded[1] / alone[1]:.1f}")
    if rss_start:
        print("\nRSS (MiB, the server and its children): start -> end")
        for kind in rss_start:
            print(
                f"  {kind:12s} {rss_start[kind]:8.0f} -> {rss_end[kind]:8.0f}  ({rss_end[kind] - rss_start[kind]:+.0f})"
            )


if __name__ == "__main__":
    raise SystemExit(main())
