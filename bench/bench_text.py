"""Single-stream text benchmark: our `nexa server` against llama-cpp-python's own server.

Starts each server in turn (never both at once: they would fight for the cores) on the same
GGUF model, sends the same streaming chat requests (greedy, a fixed token budget) and prints
time to first token and tokens/s (medians over several requests), the ratio ours/theirs and
our server's resident memory against the target (model file + 300 MiB).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_text.py                 # the default model (SmolLM2-135M-Instruct Q4_1)
    .venv/bin/python bench/bench_text.py --model PATH.gguf --reps 7 --max-tokens 256

Each server runs with its own defaults, as a user would start it; only the request body is
made identical (temperature 0, repeat_penalty 1.0: llama_cpp.server would otherwise apply 1.1).
This is a script, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support: the server runner and the SSE parser

from support.servers import HOST, ServerProcess, free_port  # noqa: E402
from support.sse import iter_chunks  # noqa: E402

log = logging.getLogger("bench_text")
RSS_TARGET_EXTRA = 300 * 1024 * 1024  # the target: RSS <= model file + 300 MiB
TOKENS_TARGET = 1.3  # the target: ours >= 1.3x llama_cpp.server's tokens/s

# A prompt that keeps a small instruct model talking well past the token budget. Each
# repetition starts with a different system line, so neither server can reuse the previous
# request's KV cache and the time to first token includes the whole prompt's evaluation.
SYSTEM = "You are a helpful assistant and a patient storyteller. This is session {i}."
USER = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the island, the weather, the keeper's daily routine, the letter and what happens next, "
    "in many paragraphs."
)


class Server(ServerProcess):
    """A server under test and, for the report, the threads it runs with."""

    def __init__(self, name: str, cmd: list[str], ready_path: str, threads_note: str, port: int) -> None:
        super().__init__(cmd, port, name=name, ready_path=ready_path)
        self.threads_note = threads_note


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    tokens: int
    decode_tps: float  # (tokens - 1) / time from the first to the last token: generation alone
    e2e_tps: float  # tokens / whole request time: what a client sees, prompt included
    text: str
    finish: str | None
    cpu_ms_per_token: float = float("nan")  # server CPU time (all its threads) / tokens: robust to other load


@dataclass
class Result:
    server: Server
    samples: list[Sample] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)
    load_s: float = 0.0
    loaded_line: str = ""  # the server's own log line about the loaded model (threads, context...)


def venv_bin() -> Path:
    """The repo's venv if there is one, else the interpreter running this script."""
    candidate = REPO / ".venv" / "bin"
    return candidate if (candidate / "python").exists() else Path(sys.executable).parent


def default_model() -> Path:
    from nexa.models.store import ModelStore

    return Path(ModelStore().resolve(None).path)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def start(server: Server, workdir: Path, timeout_s: float) -> float:
    """Start the server, its log in `workdir`, and wait until it answers; the seconds it took.
    (bench_tools.py and bench_vision.py start theirs through this too.)"""
    log.info("starting %s: %s", server.name, " ".join(server.cmd))
    return server.start(timeout_s, log_dir=workdir)


def stop(server: Server) -> None:
    server.stop(timeout_s=15)


def nexa_command() -> list[str]:
    """The `nexa` command of the repo's venv (or of this interpreter's)."""
    bin_dir = venv_bin()
    return [str(bin_dir / "nexa")] if (bin_dir / "nexa").exists() else [str(bin_dir / "python"), "-m", "nexa"]


def chat_body(messages: list[dict], max_tokens: int, stream: bool) -> dict:
    """A chat request every server decodes the same way: greedy, and no repeat penalty
    (llama_cpp.server would otherwise apply 1.1)."""
    return {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "repeat_penalty": 1.0, "stream": stream}


def body(i: int, max_tokens: int, stream: bool) -> dict:
    messages = [{"role": "system", "content": SYSTEM.format(i=i)}, {"role": "user", "content": USER}]
    return chat_body(messages, max_tokens, stream)


def stream_once(client: httpx.Client, server: Server, i: int, max_tokens: int) -> Sample:
    url = f"http://{HOST}:{server.port}/v1/chat/completions"
    parts: list[str] = []
    stamps: list[float] = []
    finish = None
    usage_tokens = None
    sent = time.perf_counter()
    with client.stream("POST", url, json=body(i, max_tokens, True)) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"{server.name} answered {resp.status_code}: {resp.text[:500]}")
        for chunk in iter_chunks(resp.iter_lines()):
            if "error" in chunk:
                raise RuntimeError(f"{server.name} streamed an error: {chunk['error']}")
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
                    stamps.append(time.perf_counter())
                finish = choice.get("finish_reason") or finish
    done = time.perf_counter()
    if not stamps:
        raise RuntimeError(f"{server.name} streamed no text for request {i}")
    text = "".join(parts)
    if finish == "length":
        tokens = max_tokens  # the whole budget was generated
    elif usage_tokens:
        tokens = usage_tokens
    else:
        # Stopped early and the stream carried no usage: ask again without streaming (greedy,
        # so the same answer; its prompt is now cached) to read the exact token count.
        r = client.post(url, json=body(i, max_tokens, False))
        r.raise_for_status()
        tokens = r.json()["usage"]["completion_tokens"]
    span = stamps[-1] - stamps[0]
    return Sample(
        ttft_s=stamps[0] - sent,
        total_s=done - sent,
        tokens=tokens,
        decode_tps=(tokens - 1) / span if span > 0 else float("nan"),
        e2e_tps=tokens / (done - sent),
        text=text,
        finish=finish,
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_rss(pid: int) -> dict[str, int]:
    """VmRSS and its parts from /proc (bytes). RssFile is mostly the mmap'd model file."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def run_server(server: Server, workdir: Path, args: argparse.Namespace) -> Result:
    result = Result(server)
    try:
        result.load_s = start(server, workdir, args.start_timeout)
        assert server.proc is not None
        timeout = httpx.Timeout(args.request_timeout, connect=10)
        with httpx.Client(timeout=timeout) as client:
            for w in range(args.warmup):  # page the model in, let thread pools spin up
                stream_once(client, server, -1 - w, args.max_tokens)
            for i in range(args.reps):
                cpu_before = cpu_seconds(server.proc.pid)
                s = stream_once(client, server, i, args.max_tokens)
                s.cpu_ms_per_token = (cpu_seconds(server.proc.pid) - cpu_before) * 1000 / s.tokens
                log.info(
                    "%s #%d: ttft %.1f ms, %d tokens, %.1f tok/s decode, %.1f tok/s end-to-end (%s)",
                    server.name, i, s.ttft_s * 1000, s.tokens, s.decode_tps, s.e2e_tps, s.finish,
                )
                result.samples.append(s)
        result.rss = read_rss(server.proc.pid)  # model loaded, after requests
        result.loaded_line = next((ln for ln in server.tail(200).splitlines() if " loaded " in ln), "")
    finally:
        stop(server)
    return result


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def report(model: Path, first: Result, second: Result | None, args: argparse.Namespace,
           load: tuple[float, float]) -> None:
    """The table; `first` is ours unless --only theirs."""
    cores = len(os.sched_getaffinity(0))
    size = model.stat().st_size
    rows = [r for r in (first, second) if r]
    print()
    print(f"model: {model} ({mib(size)})")
    # Only the figure before counts: the one after includes this benchmark's own servers.
    print(f"cores usable: {cores}; load average {load[0]:.1f} before, {load[1]:.1f} after (this run included)"
          + ("  NOISY: other processes were competing for the cores" if load[0] > cores / 2 else ""))
    print(f"{args.rounds} round(s) x {args.reps} streamed chat requests per server (median), "
          f"{args.warmup} warm-up each;")
    print(f"max_tokens={args.max_tokens}, temperature=0, repeat_penalty=1.0, a fresh prompt per request (no KV reuse)")
    print("threads (each server's defaults unless overridden):")
    for r in rows:
        print(f"  {r.server.name}: {r.server.threads_note}")
        if r.loaded_line:
            print(f"    its log: {r.loaded_line.split(': ', 1)[-1]}")
    print()
    header = (f"{'server':<20} {'TTFT ms':>9} {'decode tok/s':>13} {'e2e tok/s':>10} {'CPU ms/tok':>11} "
              f"{'tokens':>7} {'load s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        s = r.samples
        print(
            f"{r.server.name:<20} {med([x.ttft_s for x in s]) * 1000:>9.1f} {med([x.decode_tps for x in s]):>13.1f} "
            f"{med([x.e2e_tps for x in s]):>10.1f} {med([x.cpu_ms_per_token for x in s]):>11.2f} "
            f"{med([x.tokens for x in s]):>7.0f} {r.load_s:>7.1f}"
        )
    print("decode tok/s: (tokens - 1) / time from first to last token; e2e: tokens / whole request time;")
    print("CPU ms/tok: the server's CPU time (all threads, spinning included) per generated token")
    if second:
        ours, theirs = first, second
        d_ratio = med([x.decode_tps for x in ours.samples]) / med([x.decode_tps for x in theirs.samples])
        e_ratio = med([x.e2e_tps for x in ours.samples]) / med([x.e2e_tps for x in theirs.samples])
        t_ratio = med([x.ttft_s for x in ours.samples]) / med([x.ttft_s for x in theirs.samples])
        verdict = "meets" if d_ratio >= TOKENS_TARGET else "BELOW"
        print()
        print(f"ratio ours/theirs: decode tok/s {d_ratio:.2f}x ({verdict} the {TOKENS_TARGET}x target), "
              f"end-to-end tok/s {e_ratio:.2f}x, TTFT {t_ratio:.2f}x (lower is better)")
        same = sum(a.text == b.text for a, b in zip(ours.samples, theirs.samples, strict=False))
        print(f"identical greedy outputs: {same}/{min(len(ours.samples), len(theirs.samples))} requests")
    print()
    limit = size + RSS_TARGET_EXTRA
    for r in rows:
        rss = r.rss.get("VmRSS", 0)
        print(f"{r.server.name} RSS after requests: {mib(rss)} (anon {mib(r.rss.get('RssAnon', 0))}, "
              f"file {mib(r.rss.get('RssFile', 0))}, peak {mib(r.rss.get('VmHWM', 0))})")
        if r.server.name == "nexa server":
            print(f"  target <= model file + 300 MiB = {mib(limit)}: {'meets' if rss <= limit else 'ABOVE'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="GGUF file (default: the store's SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5, help="measured requests per server (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="start each server this many times, alternating the order")
    p.add_argument("--only", choices=["ours", "theirs"], help="run one server only")
    p.add_argument("--our-threads", type=int, help="pass --threads to our server (default: its own default)")
    p.add_argument("--their-threads", type=int, help="pass --n_threads to llama_cpp.server (default: its own)")
    p.add_argument("--our-args", default="", help='more flags for our server, e.g. "--parallel 1"')
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    args = p.parse_args()
    bounds = (1 <= args.reps <= 100, 0 <= args.warmup <= 10, 1 <= args.max_tokens <= 4096, 1 <= args.rounds <= 10)
    if not all(bounds):
        p.error("--reps must be 1..100, --warmup 0..10, --max-tokens 1..4096, --rounds 1..10")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    model = (args.model or default_model()).resolve()
    if not model.is_file():
        p.error(f"no such model file: {model}")
    bin_dir = venv_bin()
    cores = len(os.sched_getaffinity(0))
    cpu_count = os.cpu_count() or 1

    port = free_port()
    ours_cmd = [*nexa_command(), "server", "-lp", str(model), "--host", HOST, "--port", str(port)]
    if args.our_threads:
        ours_cmd += ["--threads", str(args.our_threads)]
    ours_cmd += shlex.split(args.our_args)
    ours = Server(
        "nexa server", ours_cmd, "/health",
        (f"--threads {args.our_threads}" if args.our_threads else f"all usable cores = {cores} threads")
        + (f", {args.our_args}" if args.our_args else ""),
        port,
    )
    port2 = free_port()
    theirs_cmd = [str(bin_dir / "python"), "-m", "llama_cpp.server", "--model", str(model),
                  "--host", HOST, "--port", str(port2)]
    if args.their_threads:
        theirs_cmd += ["--n_threads", str(args.their_threads)]
    theirs = Server(
        "llama_cpp.server", theirs_cmd, "/v1/models",
        f"--n_threads {args.their_threads}" if args.their_threads
        else f"n_threads = cpu_count//2 = {max(cpu_count // 2, 1)} for generation, n_threads_batch = {cpu_count}",
        port2,
    )

    servers = [s for s in (ours, theirs) if args.only in (None, "ours" if s is ours else "theirs")]
    results = {s.name: Result(s) for s in servers}
    load_before = os.getloadavg()[0]
    if load_before > cores / 2:
        log.warning("load average %.1f on %d cores: other processes compete, figures will be noisy", load_before, cores)
    with tempfile.TemporaryDirectory(prefix="bench_text_") as tmp:
        workdir = Path(tmp)
        try:
            for r in range(args.rounds):
                # Alternate the order so a change in background load does not favour one server.
                for server in servers if r % 2 == 0 else servers[::-1]:
                    one = run_server(server, workdir, args)
                    merged = results[server.name]
                    merged.samples += one.samples
                    merged.load_s = max(merged.load_s, one.load_s)
                    merged.rss, merged.loaded_line = one.rss, one.loaded_line
        finally:  # run_server stops its own server; this covers an interrupt between the two
            stop(ours)
            stop(theirs)
    first, second = (results[s.name] for s in servers) if len(servers) == 2 else (results[servers[0].name], None)
    report(model, first, second, args, (load_before, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
