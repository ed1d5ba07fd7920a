"""Speech benchmark: the endpoint against faster-whisper called directly, on the same audio.

    .venv/bin/python bench/bench_audio.py [--long-minutes 4] [--repeats 3]

Prints, as real-time factors (seconds of work per second of audio; lower is faster):
1. a ~25 s clip (one window, the sequential path): POST /v1/audio/transcriptions over a real
   socket vs `WhisperModel.transcribe` on the same bytes with the same options;
2. a clip of several minutes: the endpoint (which batches it) vs faster-whisper's
   `BatchedInferencePipeline` and vs the plain sequential `WhisperModel.transcribe`, so the
   last line is the speed-up the batched path buys.

Endpoint and direct runs alternate and the median is reported, so load from other
processes hits both alike; the figures still move with it, so read them as ratios. The audio
is the espeak-ng sentences in tests/audio/ joined with pauses; word error rates are printed
beside the timings so a faster path that hears less shows it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support: the in-process server and the word error rate

from nexa.config import Settings  # noqa: E402
from nexa.engines.whisper import FALLBACK_TEMPERATURES, WhisperEngine  # noqa: E402
from nexa.models.manager import ModelManager  # noqa: E402
from nexa.models.store import ModelStore  # noqa: E402
from nexa.server.app import create_app  # noqa: E402
from support.audio import wer  # noqa: E402
from support.servers import LiveServer  # noqa: E402

AUDIO = REPO / "tests" / "audio"
RATE = 16000


def clip(seconds: float) -> tuple[bytes, str, float]:
    """The six test sentences, in turn, with 0.8 s pauses, until `seconds` is reached."""
    transcripts = json.loads((AUDIO / "transcripts.json").read_text())
    names = [f"s{i}.wav" for i in range(1, 7)]
    gap = np.zeros(int(0.8 * RATE), dtype=np.int16)
    parts, texts, total, i = [], [], 0, 0
    while total < seconds * RATE:
        name = names[i % len(names)]
        with wave.open(str(AUDIO / name)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        parts += [pcm, gap]
        texts.append(transcripts[name])
        total += len(pcm) + len(gap)
        i += 1
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(parts).tobytes())
    return buf.getvalue(), " ".join(texts), total / RATE


def timed(fn: Callable[[], str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of this whole process, text): the server runs in this process too."""
    wall, cpu = time.perf_counter(), time.process_time()
    text = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, text


def compare(label: str, seconds: float, reference: str, runs: dict[str, Callable[[], str]],
            repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall RTF, CPU RTF) per path."""
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    texts: dict[str, str] = {}
    for _ in range(repeats):
        for name, fn in runs.items():  # alternate, so background load hits every path alike
            wall, cpu, texts[name] = timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(f"\n{label}: {seconds:.1f} s of audio, median of {repeats}")
    rtf = {}
    for name in runs:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        rtf[name] = (wall / seconds, cpu / seconds)
        print(f"  {name:<32} RTF {rtf[name][0]:.3f} wall, {rtf[name][1]:.3f} CPU   ({wall:6.2f} s)   "
              f"WER {wer(reference, texts[name]):5.1%}")
    return rtf


def ratio(label: str, a: tuple[float, float], b: tuple[float, float], target: str) -> None:
    print(f"  {label}: {a[0] / b[0]:.2f}x wall, {a[1] / b[1]:.2f}x CPU ({target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="faster-whisper-tiny.en")
    parser.add_argument("--long-minutes", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per path on the short clip")
    parser.add_argument("--long-repeats", type=int, default=1, help="runs per path on the long clip")
    args = parser.parse_args()

    from faster_whisper import BatchedInferencePipeline, WhisperModel

    settings = Settings()
    model = ModelStore().resolve(args.model)
    manager = ModelManager.load(model, settings)
    engine: WhisperEngine = manager.engine  # type: ignore[assignment]
    # faster-whisper directly, configured as the engine is (device, compute type, threads).
    direct = WhisperModel(str(model.path), device=engine.device, compute_type=engine.compute_type,
                          cpu_threads=settings.n_threads)
    batched = BatchedInferencePipeline(direct)
    batch_size = settings.whisper_batch_size
    print(f"model {model.name} on {engine.device} ({engine.compute_type}), {settings.n_threads} threads, "
          f"load average {os.getloadavg()[0]:.1f} at start")

    def sequential(content: bytes) -> Callable[[], str]:
        def run() -> str:
            segments, _ = direct.transcribe(io.BytesIO(content), beam_size=5, temperature=list(FALLBACK_TEMPERATURES))
            return "".join(s.text for s in segments)
        return run

    def in_batches(content: bytes) -> Callable[[], str]:
        def run() -> str:
            segments, _ = batched.transcribe(io.BytesIO(content), beam_size=5, temperature=0.0, batch_size=batch_size,
                                             vad_filter=True, without_timestamps=False)
            return "".join(s.text for s in segments)
        return run

    with LiveServer(create_app(settings, manager)) as server, httpx.Client(base_url=server.url, timeout=3600) as http:

        def endpoint(content: bytes) -> Callable[[], str]:
            return lambda: http.post("/v1/audio/transcriptions", files={"file": ("a.wav", content)}).json()["text"]

        short, short_ref, short_s = clip(25)
        endpoint(short)()  # warm-up: first-call allocations on both sides
        sequential(short)()
        rtf = compare("short clip (one window, sequential path)", short_s, short_ref,
                      {"endpoint": endpoint(short), "faster-whisper direct": sequential(short)}, args.repeats)
        ratio("endpoint / direct", rtf["endpoint"], rtf["faster-whisper direct"], "target <= 1.1x")

        long, long_ref, long_s = clip(args.long_minutes * 60)
        fb = f"faster-whisper batched (bs={batch_size})"
        rtf = compare(f"long clip ({long_s / 60:.1f} min)", long_s, long_ref, {
            "endpoint (batched)": endpoint(long),
            fb: in_batches(long),
            "faster-whisper sequential": sequential(long),
        }, args.long_repeats)
        ratio("endpoint / direct batched", rtf["endpoint (batched)"], rtf[fb], "target <= 1.1x")
        ratio("batched speed-up, direct (sequential / batched)", rtf["faster-whisper sequential"], rtf[fb],
              "target >= 2x")
        ratio("batched speed-up, endpoint (sequential / endpoint)", rtf["faster-whisper sequential"],
              rtf["endpoint (batched)"], "target >= 2x")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
