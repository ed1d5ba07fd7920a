"""faster-whisper engine (CTranslate2 Whisper models) for transcription and translation.

Audio is decoded in-process by PyAV (which faster-whisper bundles), so no ffmpeg binary is
needed. One model serves every request: a lock serialises calls, and callers run them in a
worker thread. Long audio goes through faster-whisper's batched pipeline, which decodes
several 30-second windows at once instead of one after another.

`faster_whisper`, `ctranslate2` and `av` are imported only when a model is loaded, so the
plain result types here can be imported by the server without them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nexa.config import default
from nexa.engines.base import Engine, Task, Turns
from nexa.errors import InvalidRequest, PayloadTooLarge, StartupError, UnsupportedTask

log = logging.getLogger("nexa.engine.whisper")

# Audio at least this long goes through the batched pipeline: below one 30-second window
# there is nothing to batch, and the sequential path keeps its finer, text-conditioned
# segmentation.
BATCH_MIN_SECONDS = 30.0

# The temperatures faster-whisper (and OpenAI's API) fall back through when a window's
# decoding looks like a failure (repetition, low log-probability) at temperature 0.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class SpeechOptions:
    task: str = "transcribe"  # or "translate" (to English)
    language: str | None = None  # a Whisper language code; None: detect it
    beam_size: int = 5
    temperature: float = 0.0  # 0: greedy/beam first, with the fallback ladder above
    prompt: str | None = None  # text that conditions the first window (names, spelling, style)
    word_timestamps: bool = False
    vad_filter: bool | None = None  # None: only where batching needs it; True/False: forced


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)


@dataclass
class TranscriptInfo:
    """The first item `transcribe` yields, before any segment."""

    task: str
    language: str
    language_probability: float
    duration: float  # seconds of audio in the upload
    batched: bool


def whisper_device(setting: str = "auto") -> str:
    """--whisper-device as ctranslate2's device: auto is cuda where ctranslate2 sees a GPU."""
    import ctranslate2

    gpus = ctranslate2.get_cuda_device_count()
    if setting == "cuda" and gpus == 0:
        raise StartupError(
            "--whisper-device cuda, but ctranslate2 finds no CUDA GPU (a driver, and CUDA 12's cuBLAS and cuDNN 9 "
            "libraries, are needed; see `nexa gpu`): use --whisper-device cpu or auto."
        )
    if setting == "auto":
        return "cuda" if gpus > 0 else "cpu"
    return setting


# On a CPU, small Whisper models run in float32 and larger ones in int8. int8 kernels differ
# between CPUs: tiny.en in int8 mis-heard espeak-ng speech with a mean WER of 0.20 on an Intel
# Xeon with AVX-512/AMX (0.11 in float32) and no better than float32 on an AMD EPYC (0.081 vs
# 0.074), while float32 took only 1.29x as long (bench/bench_whisper_types.py). For small and
# larger models int8's speed and memory (a quarter of float32's) weigh more than that.
FLOAT32_UP_TO_BYTES = 300 * 2**20  # model.bin: tiny 75 MB and base 145 MB in float16; small is 484 MB


def choose_compute_type(device: str, requested: str | None, path: Path | None = None) -> str:
    """As asked; else float16 on CUDA, and on CPU float32 for tiny/base models, int8 above."""
    import ctranslate2

    supported = set(ctranslate2.get_supported_compute_types(device))
    if requested is None:
        if device == "cuda":
            preferred = "float16"
        else:
            weights = path / "model.bin" if path is not None else None
            small = weights is not None and weights.is_file() and weights.stat().st_size <= FLOAT32_UP_TO_BYTES
            preferred = "float32" if small else "int8"
        return preferred if preferred in supported else "default"
    if requested not in supported | {"default", "auto"}:
        raise StartupError(
            f"Compute type {requested!r} is not supported on {device}; choose one of: "
            f"{', '.join(sorted(supported | {'auto', 'default'}))} (--compute-type)."
        )
    return requested


class SpeechToTextEngine(Engine):
    """What /v1/audio/transcriptions and /translations (services/audio.py) need of an engine:
    faster-whisper's here, and the ONNX Runtime one (engines/onnx/whisper.py). Subclasses set
    name, multilingual, sampling_rate and _turns, and implement transcribe()."""

    tasks = frozenset({Task.TRANSCRIBE, Task.TRANSLATE})
    multilingual: bool
    sampling_rate: int
    _turns: Turns

    def require(self, task: Task, endpoint: str) -> None:
        if task == Task.TRANSLATE and not self.multilingual:
            raise UnsupportedTask(
                f"The loaded model '{self.name}' is English-only, so it cannot translate ({endpoint}). "
                f"Use /v1/audio/transcriptions for English speech, or serve a multilingual Whisper "
                f"model (a name without '.en', e.g. faster-whisper-tiny) to translate."
            )
        super().require(task, endpoint)

    @property
    def busy(self) -> bool:
        """Whether a transcription holds the model right now."""
        return self._turns.lock.locked()

    # -- audio -----------------------------------------------------------------------------

    def decode(self, source: str | Path | BinaryIO, max_seconds: float | None = None) -> np.ndarray:
        """Any container/codec FFmpeg knows -> float32 mono samples at the model's rate.

        Audio longer than `max_seconds` is refused: from the container's duration where it
        declares one, before decoding, and by counting the decoded samples otherwise (or where
        the declared duration lies)."""
        import av

        if hasattr(source, "seek"):
            source.seek(0)  # type: ignore[union-attr]
        try:
            audio = _decode(str(source) if isinstance(source, Path) else source, self.sampling_rate, max_seconds)
        except (av.FFmpegError, ValueError, IndexError, OSError, EOFError) as exc:
            # IndexError: the container opened but holds no audio stream (an image, a silent video).
            reason = "it has no audio stream" if isinstance(exc, IndexError) else str(exc)
            raise InvalidRequest(
                f"The uploaded file could not be decoded as audio ({reason}). Send a recording such as "
                f"wav, mp3, flac, ogg/opus, m4a or webm.",
                param="file", code="invalid_audio",
            ) from exc
        if audio.size == 0:
            raise InvalidRequest(
                "The uploaded file contains no audio samples. Send a recording with sound in it.",
                param="file", code="empty_audio",
            )
        return audio

    # -- transcription ---------------------------------------------------------------------

    def check(self, opts: SpeechOptions) -> None:
        """Refuse what this model cannot do before any audio is decoded."""
        if opts.task == "translate":
            self.require(Task.TRANSLATE, "translation")
        if opts.language and opts.language != "en" and not self.multilingual:
            raise InvalidRequest(
                f"The loaded model '{self.name}' is English-only; it cannot transcribe language "
                f"{opts.language!r}. Leave `language` empty or 'en', or serve a multilingual model.",
                param="language",
            )

    def transcribe(
        self, audio: np.ndarray, opts: SpeechOptions, cancel: threading.Event | None = None
    ) -> Generator[TranscriptInfo | Segment, None, None]:
        """Yield one TranscriptInfo, then the segments in order; stop early once `cancel` is set."""
        raise NotImplementedError


class WhisperEngine(SpeechToTextEngine):
    def __init__(
        self,
        path: Path,
        *,
        name: str,
        device: str = default("whisper_device"),
        compute_type: str | None = default("whisper_compute_type"),
        cpu_threads: int = default("n_threads"),
        batch_size: int = default("whisper_batch_size"),
        max_queue: int = default("max_queue"),
    ):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.name = name
        self.path = path
        self.device = whisper_device(device)
        self.compute_type = choose_compute_type(self.device, compute_type, Path(path))
        self.batch_size = batch_size
        started = time.perf_counter()
        self._model = WhisperModel(
            str(path), device=self.device, compute_type=self.compute_type,
            cpu_threads=cpu_threads, local_files_only=True,  # a folder on disk: never reach for a hub
        )
        self._batched = BatchedInferencePipeline(self._model)
        self.sampling_rate: int = self._model.feature_extractor.sampling_rate
        # The weights say whether the model knows languages other than English; the `.en`
        # naming convention is checked too, for folders whose config hides it.
        self.multilingual = bool(self._model.model.is_multilingual) and not (
            name.endswith(".en") or path.name.endswith(".en")
        )
        if not self.multilingual:
            self.tasks = frozenset({Task.TRANSCRIBE})  # type: ignore[misc]  # what /v1/models lists
        # CTranslate2 runs one call at a time per worker; the lock makes that explicit and
        # keeps the batched pipeline's per-call state (last_speech_timestamp) from mixing.
        self._turns = Turns(max_queue)
        self.offload = {"device": self.device, "compute_type": self.compute_type}
        log.info(
            "whisper %s on %s (%s), %s, loaded in %.1fs", name, self.device, self.compute_type,
            "multilingual" if self.multilingual else "English-only", time.perf_counter() - started,
        )

    def close(self) -> None:
        with self._turns.lock:  # not while a transcription is using the model
            self._batched = self._model = None  # type: ignore[assignment]

    def describe(self) -> dict[str, Any]:
        return {"multilingual": self.multilingual, "device": self.device, "compute_type": self.compute_type}

    def transcribe(
        self, audio: np.ndarray, opts: SpeechOptions, cancel: threading.Event | None = None
    ) -> Generator[TranscriptInfo | Segment, None, None]:
        """Yield one TranscriptInfo, then the segments in order; stop early once `cancel` is set.

        Holds the model's lock until the generator is exhausted or closed.
        """
        self.check(opts)
        duration = audio.shape[0] / self.sampling_rate
        # The batched pipeline cuts long audio at pauses found by voice-activity detection, so
        # it is off when the caller turned VAD off explicitly.
        batched = self.batch_size > 0 and duration >= BATCH_MIN_SECONDS and opts.vad_filter is not False
        common: dict[str, Any] = dict(
            task=opts.task,
            language=opts.language,
            beam_size=opts.beam_size,
            initial_prompt=opts.prompt or None,
            word_timestamps=opts.word_timestamps,
        )
        started = time.perf_counter()
        end = 0.0  # how far the transcript got, in seconds of audio
        finished = False
        with self._turns():
            try:
                if batched:
                    # Timestamps on: segments follow the speech, not the 30-second windows.
                    segments, info = self._batched.transcribe(
                        audio, **common, temperature=opts.temperature, batch_size=self.batch_size,
                        vad_filter=True, without_timestamps=False,
                    )
                else:
                    temperature = FALLBACK_TEMPERATURES if opts.temperature == 0 else opts.temperature
                    segments, info = self._model.transcribe(
                        audio, **common, temperature=temperature, vad_filter=bool(opts.vad_filter),
                    )
                yield TranscriptInfo(
                    opts.task, info.language, float(info.language_probability), float(info.duration), batched
                )
                for seg in segments:  # decoding happens lazily, window by window, inside this loop
                    if cancel is not None and cancel.is_set():
                        return
                    end = float(seg.end)
                    yield _segment(seg)
                finished = True
            finally:  # also when the consumer closes the generator (client gone)
                took = time.perf_counter() - started
                if finished:
                    log.debug("%s %.1fs of audio in %.2fs (RTF %.3f%s)", opts.task, duration, took,
                              took / max(duration, 1e-9), ", batched" if batched else "")
                else:
                    log.info("%s stopped early, at %.1fs of %.1fs audio", opts.task, end, duration)


def _segment(seg: Any) -> Segment:
    words = [Word(w.word, float(w.start), float(w.end), float(w.probability)) for w in seg.words or ()]
    start, end = float(seg.start), float(seg.end)
    if words:
        # faster-whisper moves a segment's start to its first word but keeps the end from the
        # timestamp token, which the word alignment often passes by a few hundred ms: widen the
        # segment so that every word lies inside it.
        start, end = min(start, words[0].start), max(end, words[-1].end)
    return Segment(
        id=seg.id, seek=seg.seek, start=start, end=end, text=seg.text, tokens=list(seg.tokens),
        temperature=float(seg.temperature or 0.0), avg_logprob=float(seg.avg_logprob),
        compression_ratio=float(seg.compression_ratio), no_speech_prob=float(seg.no_speech_prob), words=words,
    )


# -- decoding: faster_whisper.decode_audio's pipeline (same samples), bounded in duration ----------


def _too_long(seconds: float | None, max_seconds: float) -> PayloadTooLarge:
    """`seconds`: the container's declared duration; None where decoding passed the limit."""
    what = f"The audio is {seconds:.0f} seconds long, over" if seconds is not None else "The audio runs past"
    return PayloadTooLarge(
        f"{what} this server's limit of {max_seconds:g} seconds (--max-audio-seconds): send a shorter recording.",
        param="file", code="audio_too_long",
    )


def _decode(source: str | BinaryIO, rate: int, max_seconds: float | None) -> np.ndarray:
    import gc

    import av

    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=rate)
    chunks: list[np.ndarray] = []
    with av.open(source, mode="r", metadata_errors="ignore") as container:
        stream = container.streams.audio[0]  # IndexError: no audio stream
        if max_seconds is not None:
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > max_seconds:
                raise _too_long(declared, max_seconds)
        fifo = av.audio.fifo.AudioFifo()
        seconds = 0.0

        def grouped() -> Any:
            nonlocal seconds
            for frame in _valid_frames(container.decode(stream)):
                seconds += frame.samples / (frame.sample_rate or rate)
                if max_seconds is not None and seconds > max_seconds:
                    raise _too_long(None, max_seconds)
                frame.pts = None  # as faster-whisper: ignore timestamp checks
                fifo.write(frame)
                if fifo.samples >= 500_000:
                    yield fifo.read()
            if fifo.samples > 0:
                yield fifo.read()
            yield None  # flushes the resampler

        for frame in grouped():
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    # PyAV's resampler keeps objects alive until a collection (faster-whisper issue 390).
    del resampler
    gc.collect()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return audio.astype(np.float32) / 32768.0


def _declared_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _valid_frames(frames: Any) -> Any:
    """Skip frames FFmpeg cannot decode, as faster-whisper does, instead of failing the upload."""
    import av

    iterator = iter(frames)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue
