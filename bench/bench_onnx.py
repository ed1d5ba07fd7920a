"""ONNX Runtime engines against the GGUF (llama.cpp) engines on the same weights, same run.

- Text: SmolLM2-135M-Instruct, GGUF Q4_1 (llama.cpp) against the onnxruntime-genai int4 model
  built from it by tests/onnx_models.py (block 32, accuracy level 4, CPU). Greedy chat answers
  with a fixed token budget; each repetition starts with a different system line so neither
  engine reuses a cached prompt. Prints prompt and generation tokens/s (medians).
- Embeddings: all-MiniLM-L6-v2, the f32 GGUF (llama.cpp) against the ONNX export; embeddings/s
  and tokens/s for batches of sentences.
- Images: a Stable Diffusion ONNX pipeline (--sd FOLDER, e.g. an optimum export of SD 1.5; by
  default the tests' tiny random one from tests/onnx_diffusion.py), nexa's engine against
  diffusers' OnnxStableDiffusionPipeline on the same folder, threads, size and Euler steps:
  seconds per step (whole call / steps). stable-diffusion.cpp is no peer here: it cannot load
  the same weights, and the random test models of the two have different architectures.
- Speech: Whisper tiny.en, faster-whisper (CTranslate2, float32) against the ONNX export of the
  same weights (tests/onnx_whisper.py), on the same clip (ten of tests/audio's sentences with
  pauses, about 44 s: two 30-second windows); real-time factor (seconds taken per second of
  audio) and the ONNX / faster-whisper ratio, with greedy decoding on both (what the ONNX engine
  does), plus faster-whisper's server default (beam 5, batched) for reference.

The engines run in this process, one request at a time, alternating between them so that any
other load on the machine hits both alike; the HTTP layer in front of them is the same code
for both, so it is left out. A script, not a test: it prints figures and asserts nothing.

    .venv/bin/python bench/bench_onnx.py [--reps 5] [--max-tokens 128] [--threads N] [--images-only | --speech-only]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the model builders live beside the tests

from minilm_gguf import minilm_gguf  # noqa: E402
from nexa.engines.base import Finish, SamplingParams, TextEngine  # noqa: E402
from onnx_diffusion import sd_tiny_onnx  # noqa: E402
from onnx_models import minilm_onnx, smollm2_gguf, smollm2_onnx  # noqa: E402
from onnx_whisper import whisper_ct2, whisper_onnx  # noqa: E402

log = logging.getLogger("bench_onnx")

SYSTEM = "You are a helpful assistant and a patient storyteller. This is session {i}."
USER = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the island, the weather, the keeper's daily routine, the letter and what happens next."
)
PROMPT = "a lighthouse on a cliff at sunset, oil painting"
SENTENCES = [
    f"Sentence number {i} is about {topic}, and it is as long as a typical search query or title."
    for i, topic in enumerate(["cats", "the stock market", "rain in Spain", "quantum computers"] * 16)
]


def run_text(engine: TextEngine, i: int, max_tokens: int) -> Finish:
    messages = [{"role": "system", "content": SYSTEM.format(i=i)}, {"role": "user", "content": USER}]
    text, stops, special = engine.render_chat(messages)
    tokens = engine.tokenize(text, special=special)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop=stops)
    finish = None
    for item in engine.generate(tokens, params, threading.Event()):
        if isinstance(item, Finish):
            finish = item
    assert finish is not None
    return finish


def bench_text(engines: dict[str, TextEngine], reps: int, max_tokens: int) -> None:
    gen: dict[str, list[float]] = {n: [] for n in engines}
    pre: dict[str, list[float]] = {n: [] for n in engines}
    counts: dict[str, list[int]] = {n: [] for n in engines}
    for name, engine in engines.items():
        run_text(engine, -1, 8)  # warm-up: first-call allocations
        log.info("warmed up %s", name)
    for i in range(reps):
        for name, engine in engines.items():
            f = run_text(engine, i, max_tokens)
            gen[name].append(f.completion_tokens / f.generation_seconds)
            pre[name].append(f.prompt_tokens / f.prompt_seconds)
            counts[name].append(f.completion_tokens)
            log.info("rep %d %s: %d tokens at %.1f tok/s", i, name, f.completion_tokens, gen[name][-1])
    print(f"\nText generation, SmolLM2-135M-Instruct, greedy, {max_tokens} tokens max, {reps} reps (medians):")
    print(f"  {'engine':<34} {'prompt tok/s':>12} {'gen tok/s':>10} {'tokens':>7}")
    for name in engines:
        print(
            f"  {name:<34} {statistics.median(pre[name]):>12.1f} {statistics.median(gen[name]):>10.1f} "
            f"{statistics.median(counts[name]):>7.0f}"
        )
    names = list(engines)
    ratio = statistics.median(gen[names[1]]) / statistics.median(gen[names[0]])
    print(f"  generation speed {names[1]} / {names[0]}: {ratio:.2f}x")


def bench_embeddings(engines: dict[str, Any], reps: int) -> None:
    rates: dict[str, list[float]] = {n: [] for n in engines}
    toks: dict[str, int] = {}
    for engine in engines.values():
        engine.embed(SENTENCES[:4])  # warm-up
    for _ in range(reps):
        for name, engine in engines.items():
            started = time.perf_counter()
            result = engine.embed(SENTENCES)
            rates[name].append(len(SENTENCES) / (time.perf_counter() - started))
            toks[name] = result.prompt_tokens
    print(f"\nEmbeddings, all-MiniLM-L6-v2, {len(SENTENCES)} sentences per request, {reps} reps (medians):")
    print(f"  {'engine':<34} {'inputs/s':>9} {'tokens/s':>9}")
    for name in engines:
        per_s = statistics.median(rates[name])
        print(f"  {name:<34} {per_s:>9.1f} {per_s * toks[name] / len(SENTENCES):>9.0f}")


def bench_images(folder: Path, threads: int, reps: int, steps: int, size: int) -> None:
    import onnxruntime as ort  # type: ignore[import-untyped]
    from diffusers import EulerDiscreteScheduler, OnnxStableDiffusionPipeline

    from nexa.engines.onnx.diffusion import OnnxDiffusionEngine, initial_noise

    class Euler(EulerDiscreteScheduler):  # the deprecated ONNX pipeline multiplies numpy by this tensor
        @property
        def init_noise_sigma(self) -> float:  # type: ignore[override]
            return float(super().init_noise_sigma)

    ours = OnnxDiffusionEngine(folder, name="nexa", n_threads=threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    pipe = OnnxStableDiffusionPipeline.from_pretrained(str(folder), provider="CPUExecutionProvider", sess_options=opts)
    pipe.scheduler = Euler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    shape = (1, ours.latent_channels, size // ours.vae_factor, size // ours.vae_factor)

    def run_ours(seed: int) -> None:
        ours.generate(prompt=PROMPT, width=size, height=size, steps=steps, seed=seed, sampler="euler")

    def run_diffusers(seed: int) -> None:
        pipe(PROMPT, height=size, width=size, num_inference_steps=steps, latents=initial_noise(seed, shape)[1],
             output_type="np")

    runs = {"nexa OnnxDiffusionEngine": run_ours, "diffusers OnnxStableDiffusionPipeline": run_diffusers}
    per_step: dict[str, list[float]] = {n: [] for n in runs}
    for run in runs.values():
        run(0)  # warm-up
    for i in range(reps):
        for name, run in runs.items():
            started = time.perf_counter()
            run(i)
            per_step[name].append((time.perf_counter() - started) / steps)
    print(f"\nImages, {folder.name}, {size}x{size}, {steps} Euler steps, cfg 7, {reps} reps (medians):")
    print(f"  {'engine':<38} {'s/step':>8}")
    for name in runs:
        print(f"  {name:<38} {statistics.median(per_step[name]):>8.3f}")
    names = list(runs)
    ratio = statistics.median(per_step[names[0]]) / statistics.median(per_step[names[1]])
    print(f"  time per step {names[0]} / {names[1]}: {ratio:.2f}x")
    ours.close()


def speech_clip() -> Any:
    """Ten sentences of tests/audio with a second of silence after each, as float32 at 16 kHz."""
    import numpy as np
    from faster_whisper.audio import decode_audio

    clips = [decode_audio(str(REPO / "tests" / "audio" / f"s{i % 6 + 1}.wav")) for i in range(10)]
    return np.concatenate([part for clip in clips for part in (clip, np.zeros(16000, dtype=np.float32))])


def bench_speech(engines: dict[str, tuple[Any, Any]], reps: int) -> None:
    """engines: name -> (engine, SpeechOptions); the first is the ONNX one, the second its peer."""
    audio = speech_clip()
    seconds = len(audio) / 16000
    rtf: dict[str, list[float]] = {n: [] for n in engines}
    texts: dict[str, str] = {}
    for engine, opts in engines.values():
        list(engine.transcribe(audio[:16000 * 4], opts))  # warm-up
    for _ in range(reps):
        for name, (engine, opts) in engines.items():
            started = time.perf_counter()
            items = list(engine.transcribe(audio, opts))
            rtf[name].append((time.perf_counter() - started) / seconds)
            texts[name] = "".join(s.text for s in items[1:])
    print(f"\nSpeech, Whisper tiny.en, {seconds:.1f} s clip, {reps} reps (medians):")
    print(f"  {'engine':<54} {'RTF':>7} {'x real time':>11} {'words':>6}")
    for name in engines:
        print(f"  {name:<54} {statistics.median(rtf[name]):>7.3f} {1 / statistics.median(rtf[name]):>11.1f} "
              f"{len(texts[name].split()):>6}")
    names = list(engines)
    ratio = statistics.median(rtf[names[0]]) / statistics.median(rtf[names[1]])
    print(f"  real-time factor {names[0]} / {names[1]}: {ratio:.2f}x (below 1: ONNX is faster)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--images-only", action="store_true", help="only the Stable Diffusion part")
    ap.add_argument("--sd", type=Path, help="a Stable Diffusion ONNX pipeline folder (default: the tests' tiny one)")
    ap.add_argument("--steps", type=int, default=20, help="image sampling steps")
    ap.add_argument("--size", type=int, default=256, help="image width and height")
    ap.add_argument("--speech-only", action="store_true", help="run the speech section alone")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("nexa").setLevel(logging.WARNING)

    from nexa.engines.llama.embedder import EmbeddingEngine
    from nexa.engines.llama.engine import LlamaEngine
    from nexa.engines.onnx.embeddings import OnnxEmbeddingEngine
    from nexa.engines.onnx.layout import detect
    from nexa.engines.onnx.text import OnnxTextEngine

    print(f"threads: {args.threads}; load average before start: {os.getloadavg()[0]:.2f} "
          f"(figures are only comparable on an idle machine)")
    if args.images_only:
        bench_images(args.sd or sd_tiny_onnx(), args.threads, args.reps, args.steps, args.size)
        return
    if args.speech_only:
        bench_speech_engines(args)
        return
    smol = smollm2_onnx()
    texts: dict[str, TextEngine] = {
        "GGUF Q4_1 (llama.cpp)": LlamaEngine(smollm2_gguf(), name="gguf", n_ctx=2048, n_threads=args.threads),
        "ONNX int4 (onnxruntime-genai)": OnnxTextEngine(smol, name="onnx", n_ctx=2048, n_threads=args.threads),
    }
    bench_text(texts, args.reps, args.max_tokens)
    for engine in texts.values():
        engine.close()

    folder = minilm_onnx()
    layout = detect(folder)
    assert layout is not None and layout.model_file is not None
    embedders = {
        "GGUF f32 (llama.cpp)": EmbeddingEngine(minilm_gguf(), name="gguf", n_threads=args.threads),
        "ONNX f32 (onnxruntime)": OnnxEmbeddingEngine(folder, layout.model_file, name="onnx",
                                                      n_threads=args.threads),
    }
    bench_embeddings(embedders, args.reps)
    bench_images(args.sd or sd_tiny_onnx(), args.threads, args.reps, args.steps, args.size)
    bench_speech_engines(args)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def bench_speech_engines(args: argparse.Namespace) -> None:
    from nexa.engines.onnx.whisper import OnnxWhisperEngine
    from nexa.engines.whisper import SpeechOptions, WhisperEngine

    folder = whisper_onnx()
    fw = WhisperEngine(whisper_ct2(), name="faster-whisper-tiny.en", compute_type="float32", cpu_threads=args.threads)
    greedy = SpeechOptions(beam_size=1, vad_filter=False)  # vad off: faster-whisper's sequential path, as ONNX's
    engines = {
        "ONNX f32 (onnxruntime), greedy": (OnnxWhisperEngine(folder, folder, name="onnx", n_threads=args.threads),
                                           greedy),
        "faster-whisper f32 (CTranslate2), greedy": (fw, greedy),
        "faster-whisper f32, server default (beam 5, batched)": (fw, SpeechOptions()),
    }
    bench_speech(engines, args.reps)
    for engine, _ in engines.values():
        engine.close()


if __name__ == "__main__":
    main()
