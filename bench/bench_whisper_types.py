"""Which CTranslate2 compute type should Whisper use on a CPU? Word error rate and speed of each
type on the same speech, in the same run, against float32 as the reference.

    .venv/bin/python bench/bench_whisper_types.py [--model PATH] [--types int8,int8_float32,int16,float32] [--reps 2]

Speech: the committed clips (tests/audio) plus sentences that espeak-ng speaks at run time
(Debian's espeak-ng must be installed). Default model: Whisper tiny.en, as the tests fetch it.
int8 kernels differ between CPUs (an Intel Xeon with AVX-512/AMX and an AMD EPYC hear the same
int8 model differently), so run this on each kind of CPU the default must serve.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.audio import wer  # noqa: E402

SPOKEN = [
    "The finance team will meet on Monday to review the budget.",
    "Please send the report to everyone in the sales department.",
    "The train to the city leaves from the second platform.",
    "She planted tomatoes and beans in the small garden behind the house.",
    "Our new office is close to the river and the old bridge.",
    "The doctor asked him to drink more water and sleep early.",
    "We watched a film about a family who lived on a farm.",
    "The weather will be cold and windy for the rest of the week.",
    "He forgot his keys at home and had to wait outside.",
    "The museum opens at nine and closes in the evening.",
    "They are building a new school next to the park.",
    "Remember to turn off the lights when you leave the room.",
]


def clips(tmp: Path) -> list[tuple[Path, str]]:
    audio = REPO / "tests" / "audio"
    transcripts = json.loads((audio / "transcripts.json").read_text())
    out = [(audio / name, text) for name, text in transcripts.items() if name.endswith(".wav")]
    for i, text in enumerate(SPOKEN):
        path = tmp / f"spoken{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
        out.append((path, text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a CTranslate2 Whisper folder (default: tiny.en)")
    ap.add_argument("--types", default="int8,float32")
    ap.add_argument("--reps", type=int, default=2, help="timed passes over all clips per type (after a warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: CTranslate2's default)")
    args = ap.parse_args()
    from faster_whisper import WhisperModel

    from nexa.models.store import ModelStore

    path = args.model or ModelStore().resolve("faster-whisper-tiny.en").path
    with tempfile.TemporaryDirectory() as tmp:
        speech = clips(Path(tmp))
        seconds_of_audio = sum(_duration(p) for p, _ in speech)
        print(f"model {path}: {len(speech)} clips, {seconds_of_audio:.0f} s of speech")
        rows = []
        for compute_type in args.types.split(","):
            model = WhisperModel(str(path), device="cpu", compute_type=compute_type, cpu_threads=args.threads)
            errors, times = [], []
            for rep in range(args.reps + 1):
                started = time.perf_counter()
                texts = [" ".join(s.text for s in model.transcribe(str(p), beam_size=5)[0]) for p, _ in speech]
                if rep:  # the first pass warms up
                    times.append(time.perf_counter() - started)
                errors = [wer(ref, hyp) for (_, ref), hyp in zip(speech, texts)]
            rows.append((compute_type, statistics.mean(errors), sum(e > 0 for e in errors), statistics.median(times)))
            del model
    reference = {name: t for name, _, _, t in rows}.get("float32")
    print(f"\n{'compute type':14} {'mean WER':>9} {'clips wrong':>12} {'seconds':>8} {'RTF':>7} {'vs float32':>11}")
    for name, mean_wer, wrong, seconds in rows:
        ratio = f"{seconds / reference:10.2f}x" if reference else ""
        print(f"{name:14} {mean_wer:9.3f} {wrong:>7}/{len(speech):<4} {seconds:8.2f} "
              f"{seconds / seconds_of_audio:7.3f} {ratio:>11}")


def _duration(path: Path) -> float:
    import av

    with av.open(str(path)) as f:
        stream = f.streams.audio[0]
        return float(stream.duration * stream.time_base) if stream.duration else 0.0


if __name__ == "__main__":
    main()
