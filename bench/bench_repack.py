"""Is keeping llama.cpp's CPU weight repacking worth it? Prompt and decode tokens/s of a Q4_0 model
with nexa's rule (CPU_REPACK kept, AMX never) against every extra buffer type off (--no-repack),
both engines loaded in the same process and measured in alternating passes (medians).

    .venv/bin/python bench/bench_repack.py [--model PATH] [--prompt-tokens 512] [--max-tokens 128] [--reps 5]

The default model is SmolLM2-135M-Instruct requantized to Q4_0 by tests/quantized.py (Q4_0 is
a type CPU_REPACK repacks on AVX2/AVX-512 and Arm; the shipped Q4_1 file is not).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the model builders live there

from nexa.config import usable_cores  # noqa: E402
from nexa.engines.base import Finish, SamplingParams  # noqa: E402
from nexa.engines.llama import cpu_buffers  # noqa: E402
from nexa.engines.llama.engine import LlamaEngine  # noqa: E402
from quantized import smollm2_q4_0  # noqa: E402

TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type changed how "
    "books were made, sold and read across Europe, and with them how ideas travelled. "
)


def measure(engine: LlamaEngine, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, decode tokens/s) of one greedy request, from the engine's own timings."""
    finish = None
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    for item in engine.generate(prompt, params, threading.Event()):
        if isinstance(item, Finish):
            finish = item
    assert finish is not None and finish.cached_tokens < 8, "the prompt must be computed, not cached"
    return (
        (finish.prompt_tokens - finish.cached_tokens) / finish.prompt_seconds,
        finish.completion_tokens / finish.generation_seconds,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a GGUF (default: SmolLM2 Q4_0, made once)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    path = args.model or smollm2_q4_0()
    threads = args.threads or usable_cores()
    n_ctx = args.prompt_tokens + args.max_tokens + 64
    engines = {
        "rule (CPU_REPACK, no AMX)": LlamaEngine(path, name="rule", n_ctx=n_ctx, n_threads=threads, parallel=1),
        "all extra off (--no-repack)": LlamaEngine(
            path, name="plain", n_ctx=n_ctx, n_threads=threads, parallel=1, repack=False
        ),
    }
    print(f"model {path.name}; CPU features: {cpu_buffers.cpu_features()}; threads {threads}")
    for name, engine in engines.items():
        print(f"  {name}: weights {engine.weights}")
    base = engines["rule (CPU_REPACK, no AMX)"].tokenize(TEXT * 64)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for rep in range(args.reps):
        for name, engine in engines.items():
            # A different first token each pass, so no slot's cache covers the prompt.
            prompt = [base[0], base[1 + rep]] + base[2 : args.prompt_tokens]
            results[name].append(measure(engine, prompt, args.max_tokens))
    print(f"\n{args.prompt_tokens}-token prompt, {args.max_tokens} greedy tokens, median of {args.reps}:")
    print(f"{'':32} {'prompt tok/s':>13} {'decode tok/s':>13}")
    medians = {}
    for name, runs in results.items():
        medians[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"{name:32} {medians[name][0]:13.1f} {medians[name][1]:13.1f}")
    (rp, rd), (pp, pd) = medians.values()
    print(f"{'rule / all extra off':32} {rp / pp:12.2f}x {rd / pd:12.2f}x")
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
