"""Downloads in progress, by model name, for GET /v1/download_progress.

A download runs in one thread (`tracking(name)` around it); every progress bar made while it
runs (our downloader's, huggingface_hub's through hubs.HubBar) reports into that download's entry,
so the progress endpoint can answer for a name without knowing which hub or files it means.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

DOWNLOADING, DONE, FAILED = "downloading", "done", "failed"
KEPT = 256  # ended downloads remembered for the progress endpoint; the oldest go first


@dataclass
class Download:
    name: str
    state: str = DOWNLOADING
    error: str | None = None
    bars: dict[str, tuple[float, float, bool]] = field(default_factory=dict)  # desc -> (done, total, bytes?)

    def percent(self) -> int:
        """Bytes done over bytes known; a bar counting files counts when no byte bar is known."""
        if self.state == DONE:
            return 100
        bars = [b for b in self.bars.values() if b[1] > 0]
        weighed = [b for b in bars if b[2]] or bars
        total = sum(b[1] for b in weighed)
        if not total:
            return 0
        return min(99, int(100 * sum(min(b[0], b[1]) for b in weighed) / total))  # 100 only when done


class Board:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._downloads: dict[str, Download] = {}

    def get(self, name: str) -> Download | None:
        with self._lock:
            return self._downloads.get(name)

    def start(self, name: str) -> Download:
        with self._lock:
            self._downloads.pop(name, None)
            ended = [n for n, d in self._downloads.items() if d.state != DOWNLOADING]
            for old in ended[: max(0, len(ended) - KEPT + 1)]:  # a client naming repo after repo grows nothing
                del self._downloads[old]
            self._downloads[name] = download = Download(name)
            return download

    def report(self, download: Download, desc: str, done: float, total: float | None, is_bytes: bool) -> None:
        with self._lock:
            download.bars[desc] = (done, float(total or 0), is_bytes)


BOARD = Board()
_current: contextvars.ContextVar[Download | None] = contextvars.ContextVar("download", default=None)


@contextmanager
def tracking(name: str) -> Iterator[Download]:
    """Record the bars made inside as `name`'s download; done or failed when the block ends."""
    download = BOARD.start(name)
    token = _current.set(download)
    try:
        yield download
    except BaseException as exc:
        download.state, download.error = FAILED, str(exc) or type(exc).__name__
        raise
    else:
        download.state = DONE
    finally:
        _current.reset(token)


def current() -> Download | None:
    """The download this thread runs, if any."""
    return _current.get()


def report(desc: str, done: float, total: float | None, *, is_bytes: bool = True) -> None:
    """A progress bar moved: count it for the download this thread runs, if any."""
    download = _current.get()
    if download is not None:
        BOARD.report(download, desc, done, total, is_bytes)
