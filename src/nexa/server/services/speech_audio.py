"""16-bit mono PCM -> the audio file a speech request asked for (PyAV, i.e. FFmpeg's encoders).

An `Encoder` takes the speech a piece at a time and gives back the bytes of the file that are
ready, so a streamed answer sends audio as each sentence is synthesized. wav and pcm need no
encoder: a streamed WAV's header says "length unknown" (0xFFFFFFFF), as FFmpeg writes to a pipe.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from av.audio.stream import AudioStream

UNKNOWN_LENGTH = 0xFFFFFFFF
STREAM_BUFFER = 4096  # bytes FFmpeg gathers before handing a streamed file's data on


@dataclass(frozen=True)
class Format:
    media_type: str
    container: str | None = None  # None: written here, not by FFmpeg
    codec: str | None = None


FORMATS: dict[str, Format] = {
    "mp3": Format("audio/mpeg", "mp3", "libmp3lame"),
    "opus": Format("audio/ogg", "ogg", "libopus"),  # decoders play Opus at 48 kHz; the header says 24 kHz
    "aac": Format("audio/aac", "adts", "aac"),
    "flac": Format("audio/flac", "flac", "flac"),
    "wav": Format("audio/wav"),
    "pcm": Format("audio/pcm"),
}


def wav_header(rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte RIFF header for 16-bit mono PCM; None: the length is not known yet (a stream)."""
    data = UNKNOWN_LENGTH if data_bytes is None else data_bytes
    riff = UNKNOWN_LENGTH if data_bytes is None else 36 + data_bytes
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
                       b"data", data)


class _Pipe:
    """Where FFmpeg writes a streamed file: not seekable, so it never goes back to patch a header."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class Encoder:
    """`add` pieces of PCM, then `finish`; each returns the file's bytes ready so far."""

    def __init__(self, fmt: str, rate: int, *, streamed: bool):
        self.format = FORMATS[fmt]
        self.rate = rate
        self.streamed = streamed
        self._samples = 0
        self._held: list[bytes] = []  # a whole (not streamed) WAV waits for its length
        self._sink: _Pipe | io.BytesIO | None = None
        if self.format.container is not None:
            import av

            # A whole file goes to a seekable buffer, so FLAC's header gets the total length.
            self._sink = _Pipe() if streamed else io.BytesIO()
            buffer = STREAM_BUFFER if streamed else 32768  # 32768: PyAV's default
            self._out = av.open(self._sink, "w", format=self.format.container, buffer_size=buffer)
            stream = self._out.add_stream(self.format.codec or "", rate=rate, layout="mono")
            self._stream = cast("AudioStream", stream)  # an audio codec's stream

    def add(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        if self.format.container is None:
            first = self._samples == 0
            self._samples += len(pcm) // 2
            if self.format.media_type == "audio/pcm":
                return pcm
            if self.streamed:
                return (wav_header(self.rate, None) if first else b"") + pcm
            self._held.append(pcm)
            return b""
        import av

        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.rate, self._samples, Fraction(1, self.rate)
        self._samples += samples.shape[1]
        for packet in self._stream.encode(frame):
            self._out.mux(packet)
        return self._take()

    def finish(self) -> bytes:
        if self.format.container is None:
            if self.format.media_type == "audio/wav" and not self.streamed:
                return wav_header(self.rate, self._samples * 2) + b"".join(self._held)
            return b""
        for packet in self._stream.encode(None):
            self._out.mux(packet)
        self._out.close()
        if isinstance(self._sink, io.BytesIO):
            return self._sink.getvalue()
        return self._take()

    def _take(self) -> bytes:
        return self._sink.take() if isinstance(self._sink, _Pipe) else b""


def encode(pcm: bytes, fmt: str, rate: int) -> bytes:
    """A whole file in one go."""
    encoder = Encoder(fmt, rate, streamed=False)
    return encoder.add(pcm) + encoder.finish()


def resample(pcm: bytes, rate: int, to: int) -> bytes:
    """16-bit mono PCM at another sample rate (FFmpeg's resampler)."""
    if to == rate or not pcm:
        return pcm
    import av

    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to)
    frames = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)
