"""Regenerate the speech fixtures in this folder (committed, because CI has no espeak-ng).

Needs Debian's `espeak-ng` and `sox` (apt-get install -y espeak-ng sox) and the project's venv
(PyAV comes with faster-whisper). Run from the repository root:

    .venv/bin/python tests/audio/make_clips.py

It writes:
- s1.wav ... s6.wav: one English sentence each, spoken by espeak-ng, 16 kHz mono 16-bit PCM;
- s2.mp3, s2.flac, s2.ogg (Opus), s2.m4a (AAC), s2.webm (Opus): the second sentence in each
  container/codec a user is likely to upload, encoded in-process with PyAV (no ffmpeg binary);
  (the second because tiny.en hears it right in every codec: AAC's 64 ms priming delay alone
  turns "cool air" in the first into "kill now");
- transcripts.json: file name -> the sentence, which the tests score word error rate against.

16 kHz mono is what Whisper resamples to anyway, and keeps the folder well under 1 MB.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import av

HERE = Path(__file__).resolve().parent
RATE = 16000

# Whisper tiny.en hears espeak-ng's robotic voice less well than a person's: these sentences
# (no numbers, common words) come back word for word, so a regression shows as a higher WER.
SENTENCES = [
    "Open the window and let the cool air come in.",
    "We need to buy some apples and oranges from the shop.",
    "The children are playing football in the garden.",
    "My brother likes to read books about old ships.",
    "Thank you very much for your help yesterday.",
    "Can you tell me where the nearest hospital is?",
]
VOICE = ["-v", "en", "-s", "140"]  # British English, a little slower than the default 175 words/min

FORMAT_SOURCE = 2  # the sentence encoded in every format

# extension -> (container format, codec, bit rate): small lossy bit rates keep the files tiny
# while staying far above what speech recognition needs.
FORMATS = {
    "mp3": ("mp3", "libmp3lame", 32_000),
    "flac": ("flac", "flac", None),
    "ogg": ("ogg", "libopus", 24_000),
    "m4a": ("ipod", "aac", 64_000),  # ffmpeg's own AAC encoder needs more bits than Opus
    "webm": ("webm", "libopus", 24_000),
}


def speak(text: str, out: Path) -> None:
    """espeak-ng writes 22.05 kHz; sox resamples to 16 kHz mono 16-bit."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", *VOICE, "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True)


def encode(src: Path, dst: Path, container: str, codec: str, bit_rate: int | None) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=container) as out:
        stream = out.add_stream(codec, rate=RATE, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        for frame in inp.decode(audio=0):
            frame.pts = None  # let the encoder number the frames in its own time base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):  # flush
            out.mux(packet)


def main() -> None:
    transcripts: dict[str, str] = {}
    for i, text in enumerate(SENTENCES, start=1):
        wav = HERE / f"s{i}.wav"
        speak(text, wav)
        transcripts[wav.name] = text
    for ext, (container, codec, bit_rate) in FORMATS.items():
        dst = HERE / f"s{FORMAT_SOURCE}.{ext}"
        encode(HERE / f"s{FORMAT_SOURCE}.wav", dst, container, codec, bit_rate)
        transcripts[dst.name] = SENTENCES[FORMAT_SOURCE - 1]
    (HERE / "transcripts.json").write_text(json.dumps(transcripts, indent=2) + "\n")
    total = sum(p.stat().st_size for p in HERE.iterdir() if p.suffix != ".py")
    print(f"wrote {len(transcripts)} clips, {total / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
