"""Tool-call benchmark: our `nexa server` against llama-cpp-python's `chatml-function-calling`.

The same model, the same tool-call tasks, one after the other (never both at once: they would
fight for the cores):

- ours: `nexa server` started as a subprocess, non-streaming POST /v1/chat/completions;
- theirs: `Llama(..., chat_format="chatml-function-calling").create_chat_completion(...)` in
  this process (no HTTP, which if anything favours theirs).

The tasks are the original Nexa server's example (UserDetail, tool_choice "auto" and forced), a weather tool,
and every schema of tests/schemas/ offered as the parameters of a forced tool; each once as
sent and once opened by a system message (their template lists the tools only inside one, so
without it their model never sees the tools and its prompt is much shorter). For each answer
we check what a client needs: a call to the right function whose arguments parse as JSON and
validate against its schema (`jsonschema`, formats included), not cut by max_tokens. We print
the share of valid calls and the request latency (median, p90) for both.

    .venv/bin/pip install -e '.[bench,test]'
    .venv/bin/python bench/bench_tools.py                     # SmolLM2-135M-Instruct Q4_1
    .venv/bin/python bench/bench_tools.py --model PATH.gguf --reps 3 --max-tokens 256

Sampling is greedy and identical for both (temperature 0, repeat_penalty 1.0), with the same
max_tokens and thread count. A script, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_text import HOST, Server, default_model, free_port, nexa_command, start, stop  # noqa: E402

from support.tools import SCHEMAS, USER_DETAIL, WEATHER  # noqa: E402  (bench_text put tests/ on the path)

log = logging.getLogger("bench_tools")

@dataclass
class Case:
    name: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]  # OpenAI tool dicts
    choice: str | dict[str, Any]
    expect: str  # the function a valid answer calls


@dataclass
class Outcome:
    latency_s: float
    valid: bool
    called: bool
    why: str = ""
    tokens: int = 0


@dataclass
class Run:
    name: str
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)


def tool(fn: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": fn}


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def as_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """Tool parameters must be an object: wrap other schemas in {"value": ...}, keeping $defs at the root."""
    if schema.get("type", "object") == "object" and schema and "enum" not in schema:
        return schema
    inner = {k: v for k, v in schema.items() if k != "$defs"}
    wrapped: dict[str, Any] = {"type": "object", "properties": {"value": inner}, "required": ["value"]}
    if "$defs" in schema:
        wrapped["$defs"] = schema["$defs"]
    return wrapped


def cases() -> list[Case]:
    seed = [{"role": "user", "content": "Extract Jason is 25 years old"}]
    out = [
        Case("seed UserDetail auto", seed, [USER_DETAIL], "auto", "UserDetail"),
        Case("seed UserDetail forced", seed, [USER_DETAIL], named("UserDetail"), "UserDetail"),
        Case(
            "weather forced, 2 tools",
            [{"role": "user", "content": "What's the weather in Paris?"}],
            [USER_DETAIL, WEATHER],
            named("get_weather"),
            "get_weather",
        ),
    ]
    for path in SCHEMAS:
        spec = json.loads(path.read_text())
        fn = {"name": f"record_{path.stem}", "parameters": as_parameters(spec["schema"])}
        out.append(
            Case(path.stem, [{"role": "user", "content": spec["prompt"]}], [tool(fn)], named(fn["name"]), fn["name"])
        )
    return out


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def with_system(all_cases: list[Case]) -> list[Case]:
    """The same cases opened by a system message. llama-cpp-python's chatml-function-calling
    template lists the tools only inside a system message, so without one its model never
    sees them; with one, both prompts describe the tools and the latencies compare like for like."""
    return [Case(f"{c.name} +sys", [SYSTEM, *c.messages], c.tools, c.choice, c.expect) for c in all_cases]


def judge(case: Case, message: dict[str, Any], finish: str | None) -> tuple[bool, bool, str]:
    """(valid, called, why not): a call to the expected function with arguments that validate."""
    import jsonschema

    calls = message.get("tool_calls") or []
    if not calls:
        return False, False, f"no call ({finish}): {str(message.get('content'))[:60]!r}"
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in case.tools}
    for call in calls:
        name, raw = call["function"]["name"], call["function"]["arguments"]
        if name != case.expect:
            return False, True, f"called {name}"
        try:
            args = json.loads(raw)
        except ValueError:
            return False, True, f"arguments are not JSON ({finish}): {raw[:60]!r}"
        schema = schemas[name]
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        errors = list(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(args))
        if errors:
            return False, True, f"schema: {errors[0].message[:70]}"
    if finish == "length":
        return False, True, "cut by max_tokens"
    return True, True, ""


def run_ours(model: Path, all_cases: list[Case], args: argparse.Namespace, workdir: Path) -> Run:
    port = free_port()
    cmd = [*nexa_command(), "server", "-lp", str(model), "--host", HOST, "--port", str(port)]
    cmd += ["--threads", str(args.threads)]
    server = Server("nexa server", cmd, "/health", f"--threads {args.threads}", port)
    run = Run("nexa server")
    try:
        start(server, workdir, args.start_timeout)
        url = f"http://{HOST}:{port}/v1/chat/completions"
        with httpx.Client(timeout=httpx.Timeout(args.request_timeout, connect=10)) as client:
            for case in all_cases:
                for rep in range(args.reps):
                    body = {
                        "messages": case.messages,
                        "tools": case.tools,
                        "tool_choice": case.choice,
                        "parallel_tool_calls": False,
                        "temperature": 0,
                        "repeat_penalty": 1.0,
                        "max_tokens": args.max_tokens,
                    }
                    sent = time.perf_counter()
                    r = client.post(url, json=body)
                    latency = time.perf_counter() - sent
                    if r.status_code != 200:
                        outcome = Outcome(latency, False, False, f"HTTP {r.status_code}: {r.text[:80]}")
                    else:
                        data = r.json()
                        choice = data["choices"][0]
                        valid, called, why = judge(case, choice["message"], choice["finish_reason"])
                        outcome = Outcome(latency, valid, called, why, data["usage"]["completion_tokens"])
                    run.outcomes.setdefault(case.name, []).append(outcome)
                    log.info("ours   %-28s #%d %.2fs %s %s", case.name, rep, latency, outcome.valid, outcome.why)
    finally:
        stop(server)
    return run


def _theirs_worker(model: str, threads: int, max_tokens: int, todo: list[Case], out: Any) -> None:
    """Runs in a child process: a crash inside llama-cpp-python (its grammar converter writes
    GBNF that llama.cpp cannot parse for some patterns, and that segfaults) ends only this worker."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=model,
        chat_format="chatml-function-calling",
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    for case in todo:
        sent = time.perf_counter()
        try:
            r: Any = llm.create_chat_completion(
                messages=case.messages,  # type: ignore[arg-type]
                tools=case.tools,  # type: ignore[arg-type]
                tool_choice=case.choice,  # type: ignore[arg-type]
                temperature=0,
                repeat_penalty=1.0,
                max_tokens=max_tokens,
            )
            latency = time.perf_counter() - sent
            choice = r["choices"][0]
            valid, called, why = judge(case, choice["message"], choice["finish_reason"])
            outcome = Outcome(latency, valid, called, why, r["usage"]["completion_tokens"])
        except Exception as exc:  # an exception in their handler counts as an invalid answer
            outcome = Outcome(time.perf_counter() - sent, False, False, f"{type(exc).__name__}: {exc}"[:80])
        out.put((case.name, outcome))
    llm.close()


def run_theirs(model: Path, all_cases: list[Case], args: argparse.Namespace) -> Run:
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    run = Run("llama-cpp-python chatml-function-calling")
    todo = [c for c in all_cases for _ in range(args.reps)]
    while todo:
        results = ctx.Queue()
        worker = ctx.Process(target=_theirs_worker, args=(str(model), args.threads, args.max_tokens, todo, results))
        worker.start()
        done = 0
        while done < len(todo):
            try:
                name, outcome = results.get(timeout=1)
            except queue.Empty:
                if worker.is_alive():
                    continue
                # The worker died on todo[done]: record that as a crash and go on after it.
                name = todo[done].name
                outcome = Outcome(0.0, False, False, f"the handler crashed the process (exit {worker.exitcode})")
            run.outcomes.setdefault(name, []).append(outcome)
            log.info("theirs %-28s %.2fs %s %s", name, outcome.latency_s, outcome.valid, outcome.why)
            done += 1
            if outcome.why.startswith("the handler crashed"):
                break
        worker.join(timeout=30)
        todo = todo[done:]
    return run


def is_text(x: Outcome) -> bool:
    return not x.called and x.why.startswith("no call")


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def report(model: Path, runs: list[Run], all_cases: list[Case], args: argparse.Namespace) -> None:
    print()
    print(f"model: {model}  threads: {args.threads}  max_tokens: {args.max_tokens}  reps: {args.reps}")
    print(f"machine: {os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.2f}")
    print()
    header = f"{'case':30}" + "".join(f"| {'valid':>5} {'median s':>9} {'tokens':>6} " for _ in runs)
    print(f"{'':30}" + "".join(f"| {r.name[:28]:28} " for r in runs))
    print(header)
    for case in all_cases:
        row = f"{case.name[:30]:30}"
        for r in runs:
            o = r.outcomes.get(case.name, [])
            ok = sum(x.valid for x in o)
            lat = statistics.median([x.latency_s for x in o]) if o else float("nan")
            toks = statistics.median([x.tokens for x in o]) if o else 0
            row += f"| {ok:>2}/{len(o):<2} {lat:>9.2f} {toks:>6.0f} "
        print(row)
    print()
    auto = {c.name for c in all_cases if c.choice == "auto"}
    scenarios = {
        "no system message (the original request)": [c.name for c in all_cases if not c.name.endswith(" +sys")],
        "with a system message (both prompts list the tools)": [c.name for c in all_cases if c.name.endswith(" +sys")],
    }
    for title, names in scenarios.items():
        if not names:
            continue
        print(f"-- {title}: {len(names)} cases")
        lats: list[list[float]] = []
        for r in runs:
            flat = [x for n in names for x in r.outcomes.get(n, [])]
            # "auto" may rightly answer in text: such answers are counted apart, not as invalid.
            text = sum(1 for n in names for x in r.outcomes.get(n, []) if n in auto and is_text(x))
            answers = len(flat) - text
            valid = sum(x.valid for x in flat)
            lat = [x.latency_s for x in flat if x.latency_s > 0]
            lats.append(lat)
            print(
                f"   {r.name}: {valid}/{answers} valid ({100 * valid / max(1, answers):.1f}%)"
                + (f", plus {text} text answer(s) to tool_choice auto" if text else "")
                + f"; latency median {statistics.median(lat):.2f}s, p90 {p90(lat):.2f}s, total {sum(lat):.1f}s"
            )
            for n in names:
                for x in r.outcomes.get(n, []):
                    if not x.valid and not (n in auto and is_text(x)):
                        print(f"      invalid: {n}: {x.why}")
        if len(lats) == 2 and lats[0] and lats[1]:
            print(
                f"   latency ours/theirs: median {statistics.median(lats[0]) / statistics.median(lats[1]):.2f}, "
                f"total {sum(lats[0]) / sum(lats[1]):.2f} (below 1: ours is faster)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF model (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--reps", type=int, default=1, help="requests per case and system")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--only", choices=["ours", "theirs"], default=None)
    ap.add_argument("--cases", default="", help="comma-separated case names, ' +sys' for the system-message variant")
    ap.add_argument("--start-timeout", type=float, default=180)
    ap.add_argument("--request-timeout", type=float, default=900)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model = args.model or default_model()
    base = cases()
    all_cases = base + with_system(base)
    if args.cases:
        wanted = set(args.cases.split(","))
        all_cases = [c for c in all_cases if c.name in wanted]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench_tools_") as tmp:
        if args.only != "theirs":
            runs.append(run_ours(model, all_cases, args, Path(tmp)))
        if args.only != "ours":
            runs.append(run_theirs(model, all_cases, args))
    report(model, runs, all_cases, args)


if __name__ == "__main__":
    main()
