#!/usr/bin/env python3
"""Streaming chat load on an OpenAI-compatible server (bench/llm_load.py, plus token counts).

C concurrent clients, R requests each, greedy, max_tokens T, stream with include_usage.
Tokens are the server's own usage.completion_tokens (falling back to content chunks), so a
server that stops early or packs several tokens per chunk is still counted right.
`ignore_eos` is sent to both servers: llama-server honours it, nexa ignores unknown fields.
Prints one JSON line.
  bench.py BASE_URL [-c C] [-r R] [-t T] [--label NAME]
"""
import argparse
import asyncio
import json
import statistics
import time

import httpx

TOPICS = ["a fox", "the sea", "a robot", "a city at night", "an old tree", "a train", "the moon", "a cat",
          "a mountain", "a library", "a storm", "a garden", "a lighthouse", "a violin", "a desert", "a bridge"]


async def one(client, url, prompt, max_tokens):
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    finish = None
    timings = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ch = json.loads(data)
            if ch.get("usage"):
                usage = ch["usage"]
            if ch.get("timings"):
                timings = ch["timings"]
            for c in ch.get("choices", []):
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
                d = (c.get("delta") or {}).get("content")
                if d:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    chunks += 1
    total = time.perf_counter() - t0
    tokens = usage.get("completion_tokens") if usage else None
    return {"ttft": ttft if ttft is not None else total, "chunks": chunks, "tokens": tokens if tokens else chunks,
            "usage": bool(usage), "total": total, "finish": finish,
            "server_tok_s": timings.get("predicted_per_second") if timings else None}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("-c", type=int, default=1)
    ap.add_argument("-r", type=int, default=2)
    ap.add_argument("-t", type=int, default=256)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    limits = httpx.Limits(max_connections=a.c + 4, max_keepalive_connections=a.c + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        await one(client, a.base, "Say hi.", 8)  # warm-up
        results = []

        async def worker(i):
            for j in range(a.r):
                p = f"Write a short story about {TOPICS[(i * a.r + j) % len(TOPICS)]}."
                results.append(await one(client, a.base, p, a.t))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(a.c)))
        wall = time.perf_counter() - t0
    toks = sum(r["tokens"] for r in results)
    decode = [(r["tokens"] - 1) / (r["total"] - r["ttft"])
              for r in results if r["tokens"] > 1 and r["total"] > r["ttft"]]
    server = [r["server_tok_s"] for r in results if r["server_tok_s"]]
    print(json.dumps({
        "label": a.label, "concurrency": a.c, "requests": len(results), "max_tokens": a.t,
        "completion_tokens": toks, "chunks": sum(r["chunks"] for r in results),
        "tokens_per_request_min_max": [min(r["tokens"] for r in results), max(r["tokens"] for r in results)],
        "usage_reported": all(r["usage"] for r in results),
        "finish_reasons": sorted({str(r["finish"]) for r in results}),
        "aggregate_tok_s": round(toks / wall, 1),
        "median_ttft_s": round(statistics.median(r["ttft"] for r in results), 4),
        "max_ttft_s": round(max(r["ttft"] for r in results), 4),
        "median_stream_tok_s": round(statistics.median(r["tokens"] / r["total"] for r in results), 1),
        "median_decode_tok_s": round(statistics.median(decode), 1) if decode else None,
        "median_server_reported_tok_s": round(statistics.median(server), 1) if server else None,
        "wall_s": round(wall, 2)}), flush=True)


asyncio.run(main())
