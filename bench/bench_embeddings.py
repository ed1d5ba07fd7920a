"""Embeddings/s through the server: 64 texts in one request against 64 single requests, and
against llama-cpp-python's own `Llama.embed` on the same list (no HTTP at all), in one run.

    .venv/bin/python bench/bench_embeddings.py [--model FILE.gguf | --q8] [--threads N] [--rounds R]

The default model is all-MiniLM-L6-v2, converted to GGUF by tests/minilm_gguf.py (fetched
and converted once into ~/.cache/nexa/test-models), float32 or, with --q8, Q8_0. The three ways run interleaved, round
after round, so that a busy machine slows them alike; the table shows the median and best
round of each. llama.cpp's threads busy-wait: on a machine where other processes compete for
the cores, every figure drops, often by far, so compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support and the MiniLM GGUF builder

from minilm_gguf import minilm_gguf  # noqa: E402
from nexa.config import Settings  # noqa: E402
from nexa.models.manager import ModelManager  # noqa: E402
from nexa.models.types import ModelType, ResolvedModel  # noqa: E402
from nexa.server.app import create_app  # noqa: E402
from support.servers import LiveServer  # noqa: E402

SUBJECTS = ["The cat", "A young engineer", "Our new server", "The stock market", "My grandmother", "This recipe",
            "The orchestra", "A small robot", "The city council", "Every tiny seed"]
VERBS = ["quietly explains", "rapidly improves", "never forgets", "carefully measures", "happily rebuilds",
         "suddenly questions", "slowly reveals"]
OBJECTS = ["the weather in the mountains", "how embeddings capture meaning", "a forgotten melody from childhood",
           "the price of bread and butter", "three reasons to learn statistics",
           "the difference between speed and latency", "why rivers bend", "an old map of the harbour"]
TAILS = ["", " before lunch.", " with surprising accuracy and very little fuss.", " every single Tuesday.",
         " although nobody asked, and the results were mixed at best."]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}" for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="an embedding GGUF (default: all-MiniLM-L6-v2, converted once)")
    ap.add_argument("--q8", action="store_true", help="the default model with Q8_0 weights (as published GGUFs are)")
    ap.add_argument("--threads", type=int, default=Settings().n_threads)
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-tokens", type=int, help="override the engine's tokens per llama_decode")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    path = args.model or minilm_gguf(q8=args.q8)
    model = ResolvedModel(name=path.name, path=path, model_type=ModelType.TEXT_EMBEDDING)
    manager = ModelManager.load(model, Settings(n_threads=args.threads))
    embedder = manager.engine._embedder  # type: ignore[attr-defined]
    if args.batch_tokens:
        embedder.batch_tokens = min(args.batch_tokens, embedder.max_tokens)
    items = texts(args.texts)
    n_tokens = sum(len(embedder.tokenize(t)) for t in items)

    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=embedder.max_tokens, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)

    with LiveServer(create_app(Settings(), manager)) as live, httpx.Client(base_url=live.url, timeout=600) as http:

        def one_request() -> np.ndarray:
            r = http.post("/v1/embeddings", json={"input": items})
            r.raise_for_status()
            return np.array([d["embedding"] for d in r.json()["data"]])

        def single_requests() -> np.ndarray:
            rows = []
            for t in items:
                r = http.post("/v1/embeddings", json={"input": t})
                r.raise_for_status()
                rows.append(r.json()["data"][0]["embedding"])
            return np.array(rows)

        ways = {
            f"server, {len(items)} texts in 1 request": one_request,
            f"server, {len(items)} single requests": single_requests,
            "llama-cpp-python Llama.embed(list)": lambda: np.array(llm.embed(items)),
            "engine alone, no HTTP (for reference)": lambda: manager.engine.embed(items).vectors,  # type: ignore[attr-defined]
        }
        results = {name: fn() for name, fn in ways.items()}  # warm-up, and the outputs to compare
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, fn in ways.items():
                started = time.perf_counter()
                fn()
                rates[name].append(len(items) / (time.perf_counter() - started))

    print(f"model {path.name}: {len(items)} texts, {n_tokens} tokens, {args.threads} threads, "
          f"{embedder.batch_tokens} tokens per llama_decode at most, {args.rounds} rounds")
    print(f"{'':44} {'median':>12} {'best':>12}")
    for name, r in rates.items():
        print(f"{name:44} {statistics.median(r):8.1f} /s {max(r):8.1f} /s")
    med = {name: statistics.median(r) for name, r in rates.items()}
    batch, singles, ref = (med[n] for n in list(ways)[:3])
    print(f"1 request vs {len(items)} single requests: {batch / singles:.2f}x (target >= 3x)")
    print(f"1 request vs Llama.embed:             {batch / ref:.2f}x (target >= 1x)")
    a, s, c = (results[n] for n in list(ways)[:3])
    print(f"max |difference|: batch vs singles {np.abs(a - s).max():.2e}, "
          f"batch vs Llama.embed {np.abs(a - c).max():.2e}")
    llm.close()
    manager.close()


if __name__ == "__main__":
    main()
