"""Decode and prompt speed by context length, one client, against llama-server in the same run.

For each prompt length, rounds of a fresh prompt (never cached) and 128 greedy tokens that
ignore end-of-generation, sent to every server in a shuffled order per round. Each server's own
`timings` (llama-server's fields; nexa returns them too) give its decode tokens/s and its prompt
ms per token, printed as same-round ratios to llama-server. nexa runs twice: with its default
(`--flash-attn auto`, no flash attention on the CPU) and with `--flash-attn on`, which is what
llama-server does by default, so the two nexa rows also say what flash attention costs here.

  .venv/bin/python bench/bench_context.py [--rounds 6] [--words 20,300,600] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
from pathlib import Path

import httpx
from bench_batching import servers

from support.servers import ServerProcess, free_port

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
MAX_TOKENS = 128


def with_flash_attn(nexa: ServerProcess) -> ServerProcess:
    port = free_port()
    cmd = [*nexa.cmd, "--flash-attn", "on"]
    cmd[cmd.index("--port") + 1] = str(port)
    return ServerProcess(cmd, port, name="nexa -fa on", ready_path="/v1/models")


def timings(url: str, text: str) -> dict:
    body = {
        "model": "any",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
    }
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=600).json()
    return reply.get("timings") or reply["usage"]["timings"]  # llama-server's place, then nexa's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF (default: SmolLM2-135M-Instruct from MODELS.md)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--words", default="20,300,600", help="prompt lengths in words (about 1.4 tokens each)")
    ap.add_argument("--nctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    if args.model is None:
        from nexa.models.store import ModelStore

        args.model = ModelStore().resolve(None).path
    chosen = {s.name: s for s in servers(args.model, 1, args.nctx, args.threads)}
    running = [chosen["nexa"], with_flash_attn(chosen["nexa"]), chosen["llama-server"]]
    log_dir = Path(tempfile.mkdtemp(prefix="bench_context_"))
    print(
        f"model {args.model.name}, 1 client, {args.nctx}-token context, {args.threads} threads, "
        f"{MAX_TOKENS} greedy tokens per request, {args.rounds} rounds; logs in {log_dir}",
        flush=True,
    )
    for server in running:
        server.start(log_dir=log_dir)
    try:
        print("\nwords  prompt tokens  server        decode tok/s  vs llama-server  prompt ms/token  vs llama-server")
        for n_words in (int(w) for w in args.words.split(",")):
            decode: dict[str, list[float]] = {s.name: [] for s in running}
            prompt: dict[str, list[float]] = {s.name: [] for s in running}
            n_prompt = []
            for r in range(args.rounds):
                rng = random.Random(f"{n_words}-{r}")
                text = " ".join(rng.choice(WORDS) for _ in range(n_words)) + "\nNow write a long story."
                for server in random.Random(r).sample(running, len(running)):
                    t = timings(server.url, text)
                    decode[server.name].append(t["predicted_per_second"])
                    prompt[server.name].append(t["prompt_ms"] / t["prompt_n"])
                    n_prompt.append(t["prompt_n"] + t.get("cache_n", 0))
            for server in running:
                name = server.name
                d = statistics.median(a / b for a, b in zip(decode[name], decode["llama-server"]))
                p = statistics.median(a / b for a, b in zip(prompt[name], prompt["llama-server"]))
                print(
                    f"{n_words:>5}  {statistics.median(n_prompt):>13.0f}  {name:<12} "
                    f"{statistics.median(decode[name]):>12.1f}  {d:>14.3f}x  "
                    f"{statistics.median(prompt[name]):>15.2f}  {p:>14.3f}x",
                    flush=True,
                )
        print("(same-round medians; decode: above 1.0x is faster than llama-server; prompt: below 1.0x is)")
    finally:
        for server in running:
            server.stop()


if __name__ == "__main__":
    main()
