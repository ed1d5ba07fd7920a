"""Speech synthesis benchmark: POST /v1/audio/speech against kokoro-onnx called directly, on the same text.

    .venv/bin/python bench/bench_speech.py [--repeats 5] [--format wav] [--threads N]

Prints real-time factors (seconds of work per second of speech; lower is faster) for a paragraph
of English: `nexa server kokoro` (a real server process, the model in its worker process, the
answer over a socket and encoded as --format) against `Kokoro.create` in this process on the same
model file, voice and text, and their ratio (the target is <= 1.1). Server and direct runs
alternate and the median is reported, so load from other processes hits both alike; the figures
still move with it, so read them as a ratio.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import av
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/support: the server process helper

from nexa.config import usable_cores  # noqa: E402
from nexa.engines.speech import MODEL_FILE, VOCAB_FILE, VOICES_FILE  # noqa: E402
from nexa.models.store import ModelStore  # noqa: E402
from support.servers import ServerProcess  # noqa: E402

RATE = 24000
VOICE = "jf_alpha"
TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch. "
    "The box was thrown beside the parked truck. Four hours of steady work faced us."
)


def duration(data: bytes, fmt: str) -> float:
    """Seconds of speech in an answer, as PyAV decodes it."""
    if fmt == "pcm":
        return len(data) / 2 / RATE
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
        return sum(f.samples for f in frames) / frames[0].sample_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--format", default="wav", help="the response_format nexa encodes (default: wav)")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="onnxruntime threads, both sides")
    args = parser.parse_args()

    import onnxruntime as ort
    from kokoro_onnx import Kokoro

    folder = ModelStore().resolve("kokoro").path
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(folder / MODEL_FILE), sess_options=options, providers=["CPUExecutionProvider"])
    direct = Kokoro.from_session(session, str(folder / VOICES_FILE), vocab_config=str(folder / VOCAB_FILE))
    direct.create("Warm up.", voice=VOICE)

    body = {"model": "kokoro", "input": TEXT, "voice": VOICE, "response_format": args.format}
    server_rtf, direct_rtf, seconds = [], [], 0.0
    with ServerProcess.nexa("kokoro", "--threads", str(args.threads)) as server, httpx.Client(
        base_url=server.url, timeout=600
    ) as http:
        http.post("/v1/audio/speech", json={**body, "input": "Warm up."}).raise_for_status()
        for _ in range(args.repeats):
            started = time.perf_counter()
            r = http.post("/v1/audio/speech", json=body)
            took = time.perf_counter() - started
            r.raise_for_status()
            seconds = duration(r.content, args.format)
            server_rtf.append(took / seconds)

            started = time.perf_counter()
            audio, rate = direct.create(TEXT, voice=VOICE)
            direct_rtf.append((time.perf_counter() - started) / (len(audio) / rate))

    nexa, plain = statistics.median(server_rtf), statistics.median(direct_rtf)
    print(f"text: {len(TEXT)} characters, {seconds:.1f} s of speech; {args.repeats} runs each, "
          f"{args.threads} threads, nexa answering {args.format}")
    print(f"nexa /v1/audio/speech   RTF {nexa:.3f}  (runs: {', '.join(f'{r:.3f}' for r in server_rtf)})")
    print(f"kokoro-onnx directly    RTF {plain:.3f}  (runs: {', '.join(f'{r:.3f}' for r in direct_rtf)})")
    print(f"ratio nexa / direct     {nexa / plain:.2f}x  (target <= 1.1x)")


if __name__ == "__main__":
    main()
