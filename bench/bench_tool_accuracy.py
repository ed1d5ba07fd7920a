"""Tool-call accuracy: nexa against llama-cpp-python's `chatml-function-calling`, on BFCL cases.

bench_tools.py checks that calls are valid; this checks that they are right. Both servers
serve the same GGUF over OpenAI's /v1/chat/completions, one after the other:

- ours: `nexa server -lp MODEL` (or a running one: --ours-url);
- the peer: `python -m llama_cpp.server --chat_format chatml-function-calling` (or --peer-url).

Each case of ../shared/data/function-calling (BFCL's live_simple, 258 cases with one function,
and the first 200 of live_multiple, several functions offered; see its README.md) is sent twice:
with OpenAI's default request fields (parallel_tool_calls not sent, so parallel calls are
allowed) and with `parallel_tool_calls: false`; tool_choice is "required" unless --tool-choice
says otherwise ("auto" asks each server to decide between a call and text; llama_cpp.server
reads a tool_choice left out as "no call", so "unsent" scores its plain chat; it refuses
"required", so the peer is sent the one function by name, or "auto" among several). Answers are
scored by BFCL's AST rules (tool_ast.py). We print per category and mode: the share of right
answers, of answers calling the right function, of answers with any call, of answers repeating a
call, of answers cut by max_tokens, the median latency, and ours / the peer.

    .venv/bin/pip install -e '.[bench,test]'
    .venv/bin/python bench/bench_tool_accuracy.py --limit 20      # 20 cases of each file
    .venv/bin/python bench/bench_tool_accuracy.py --out all.jsonl  # all 458 (about an hour a server
                                                                   # and mode on 2 cores; --reuse all.jsonl resumes)

Greedy sampling (temperature 0, repeat_penalty 1.0), the same max_tokens for both. A script,
not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_text import HOST, Server, default_model, free_port, nexa_command, start, stop, venv_bin  # noqa: E402
from tool_ast import Case, default_data, invented, load, score  # noqa: E402

log = logging.getLogger("bench_tool_accuracy")
MODES = {"default": {}, "serial": {"parallel_tool_calls": False}}


@dataclass
class Outcome:
    case: Case
    mode: str
    right: bool
    right_function: bool
    calls: int
    repeated: bool  # the answer holds the same call (name and arguments) twice
    invented: bool  # the call writes an optional parameter the expected call leaves out (tool_ast.invented)
    finish: str
    latency_s: float
    why: str


def ask(client: httpx.Client, url: str, case: Case, mode: str, args: argparse.Namespace, peer: bool) -> Outcome:
    body: dict[str, Any] = {
        # No "model": each server answers with the one it serves.
        "messages": case.messages, "tools": case.tools,
        "temperature": 0, "repeat_penalty": 1.0, "max_tokens": args.max_tokens, **MODES[mode],
    }
    if args.tool_choice != "unsent":
        body["tool_choice"] = args.tool_choice
    if peer and args.tool_choice == "required":
        # chatml-function-calling refuses "required" (an assertion, so a 500): the nearest it
        # takes is the one function named, or "auto" among several.
        one = case.tools[0]["function"]["name"]
        body["tool_choice"] = {"type": "function", "function": {"name": one}} if len(case.tools) == 1 else "auto"
    sent = time.perf_counter()
    try:
        r = client.post(f"{url}/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return Outcome(case, mode, False, False, 0, False, False, "error", time.perf_counter() - sent, repr(exc)[:80])
    latency = time.perf_counter() - sent
    if r.status_code != 200:
        why = f"HTTP {r.status_code}: {r.text[:80]}"
        return Outcome(case, mode, False, False, 0, False, False, "error", latency, why)
    choice = r.json()["choices"][0]
    calls = [c["function"] for c in choice["message"].get("tool_calls") or []]
    seen = [(c["name"], _canonical(c["arguments"])) for c in calls]
    right, why = score(case, calls)
    (want, _), = case.expected[0].items()
    right_function = any(case.functions.get(c["name"], {}).get("name") == want for c in calls)
    if not calls:
        why = f"no call: {(choice['message'].get('content') or '')[:60]!r}"
    return Outcome(case, mode, right, right_function, len(calls), len(set(seen)) < len(seen), invented(case, calls),
                   choice.get("finish_reason") or "", latency, why)


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        return arguments


def as_json(name: str, o: Outcome) -> str:
    return json.dumps({"server": name, "id": o.case.id, "mode": o.mode, "right": o.right,
                       "right_function": o.right_function, "calls": o.calls, "repeated": o.repeated,
                       "invented": o.invented, "finish": o.finish, "latency_s": round(o.latency_s, 2), "why": o.why})


def reused(path: Path | None, cases: list[Case]) -> dict[tuple[str, str, str], Outcome]:
    """Outcomes an earlier --out file holds, by (server, mode, case id)."""
    by_id = {c.id: c for c in cases}
    out: dict[tuple[str, str, str], Outcome] = {}
    for line in path.read_text().splitlines() if path else []:
        d = json.loads(line)
        if d["id"] in by_id:
            out[(d["server"], d["mode"], d["id"])] = Outcome(
                by_id[d["id"]], d["mode"], d["right"], d["right_function"], d["calls"], d["repeated"],
                d["invented"], d["finish"], d["latency_s"], d["why"])
    return out


def run(name: str, url: str | None, cases: list[Case], args: argparse.Namespace,
        done: dict[tuple[str, str, str], Outcome], restart: Callable[[], None] | None = None) -> list[Outcome]:
    out: list[Outcome] = []
    with httpx.Client(timeout=httpx.Timeout(args.request_timeout, connect=10)) as client:
        for mode in args.modes:
            for case in cases:
                o = done.get((name, mode, case.id))
                if o is None:
                    assert url is not None
                    o = ask(client, url, case, mode, args, name == "peer")
                    log.info("%-6s %-7s %-24s %5.1fs %s %s", name, mode, case.id, o.latency_s,
                             "right" if o.right else "wrong", o.why)
                    if o.why.startswith("ReadTimeout") and restart is not None:
                        # llama_cpp.server goes on with a request its client left, and the next
                        # ones wait behind it: a fresh server keeps one slow case from costing many.
                        restart()
                out.append(o)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(as_json(name, o) + "\n")
    return out


def served(name: str, server: Server, url: str | None, workdir: Path, cases: list[Case], args: argparse.Namespace,
           done: dict[tuple[str, str, str], Outcome]) -> list[Outcome]:
    if url is not None or all((name, m, c.id) in done for m in args.modes for c in cases):
        return run(name, url and url.rstrip("/"), cases, args, done)
    def restart() -> None:
        stop(server)
        start(server, workdir, args.start_timeout)

    try:
        start(server, workdir, args.start_timeout)
        return run(name, server.url, cases, args, done, restart)
    finally:
        stop(server)


def share(outcomes: list[Outcome], test: Callable[[Outcome], bool]) -> float:
    return sum(1 for o in outcomes if test(o)) / len(outcomes) if outcomes else 0.0


def report(results: dict[str, list[Outcome]], args: argparse.Namespace) -> None:
    print(f"\nBFCL live cases, AST rules; max_tokens {args.max_tokens}, tool_choice "
          f"{args.tool_choice}; modes: default = OpenAI's defaults, "
          "serial = parallel_tool_calls false")
    head = f"{'server':<8} {'mode':<8} {'category':<9} {'cases':>5} {'right':>6} {'fn ok':>6} {'called':>6} " \
           f"{'repeat':>6} {'invent':>6} {'length':>6} {'p50 s':>6}"
    print(head)
    print("-" * len(head))
    rights: dict[tuple[str, str, str], float] = {}
    for name, outcomes in results.items():
        for mode in args.modes:
            for category in ("simple", "multiple", "all"):
                group = [o for o in outcomes if o.mode == mode and category in ("all", o.case.category)]
                if not group:
                    continue
                rights[(name, mode, category)] = share(group, lambda o: o.right)
                figures = [share(group, test) for test in (
                    lambda o: o.right, lambda o: o.right_function, lambda o: o.calls > 0,
                    lambda o: o.repeated, lambda o: o.invented, lambda o: o.finish == "length",
                )]
                print(f"{name:<8} {mode:<8} {category:<9} {len(group):>5} "
                      + " ".join(f"{f:>6.1%}" for f in figures)
                      + f" {statistics.median(o.latency_s for o in group):>6.2f}")
    if {"nexa", "peer"} <= results.keys():
        print("\nright answers, nexa / peer:")
        for mode in args.modes:
            for category in ("simple", "multiple", "all"):
                ours, theirs = rights.get(("nexa", mode, category)), rights.get(("peer", mode, category))
                if ours is None or theirs is None:
                    continue
                ratio = f"{ours / theirs:.2f}x" if theirs else "n/a (peer 0%)"
                print(f"  {mode:<8} {category:<9} {ours:6.1%} vs {theirs:6.1%}  {ratio}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="GGUF file (default: the store's SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--data", type=Path, help="BFCL data folder (default: ../shared/data/function-calling)")
    p.add_argument("--limit", type=int, help="the first N cases of each file (default: all)")
    p.add_argument("--category", choices=["simple", "multiple"], help="one file only")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--tool-choice", choices=["required", "auto", "unsent"], default="required",
                   help="the tool_choice sent (unsent: OpenAI's auto, which the peer reads as no call)")
    p.add_argument("--only", choices=["nexa", "peer"], help="score one server only")
    p.add_argument("--ours-url", help="a running nexa server instead of starting one")
    p.add_argument("--peer-url", help="a running llama_cpp.server (chatml-function-calling) instead of starting one")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--n-ctx", type=int, default=8192, help="both servers' context (the longest prompt: ~3,100)")
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="seconds for one answer; past it the case is wrong and the server is restarted")
    p.add_argument("--out", type=Path, help="also write every outcome to this JSONL file, as it comes")
    p.add_argument("--reuse", type=Path, help="an earlier --out file: its outcomes are taken as they are, not asked "
                   "again (greedy answers repeat), so a long run can be resumed, or a peer's run kept")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    cases = [c for c in load(args.data or default_data(), args.limit) if args.category in (None, c.category)]
    model = (args.model or default_model()).resolve()
    port, port2 = free_port(), free_port()
    ours = Server("nexa server", [*nexa_command(), "server", "-lp", str(model), "--nctx", str(args.n_ctx),
                                  "--host", HOST, "--port", str(port)], "/health", "", port)
    peer = Server("llama_cpp.server", [str(venv_bin() / "python"), "-m", "llama_cpp.server", "--model", str(model),
                                       "--chat_format", "chatml-function-calling", "--n_ctx", str(args.n_ctx),
                                       "--host", HOST, "--port", str(port2)], "/v1/models", "", port2)
    done = reused(args.reuse, cases)
    if args.out:
        args.out.write_text("")
    results: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_tool_accuracy_") as tmp:
        if args.only in (None, "nexa"):
            results["nexa"] = served("nexa", ours, args.ours_url, Path(tmp), cases, args, done)
        if args.only in (None, "peer"):
            results["peer"] = served("peer", peer, args.peer_url, Path(tmp), cases, args, done)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
