"""llama.cpp's log lines into Python logging, at their own levels (logger "llama.cpp").

llama-cpp-python 0.3.36 reads ggml's log levels in their old order (NONE INFO WARN ERROR DEBUG),
while the llama.cpp it ships numbers them NONE=0 DEBUG=1 INFO=2 WARN=3 ERROR=4 CONT=5: with its
callback llama.cpp's errors were hidden, its warnings shown as errors, and at INFO every debug
line printed. Here each line goes to the logger at its real level, a CONT piece (the dots of a
progress bar, the rest of a line) joins the line it continues, and a line is logged once its
newline arrives.

llama.cpp's INFO lines (the model's metadata, every buffer: a hundred lines per load) appear
with --log-level debug only: at info nexa logs its own one-line summary of each load. Warnings
and errors always appear.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

log = logging.getLogger("llama.cpp")

NONE, DEBUG, INFO, WARN, ERROR, CONT = range(6)  # enum ggml_log_level
LEVELS = {NONE: logging.INFO, DEBUG: logging.DEBUG, INFO: logging.INFO, WARN: logging.WARNING, ERROR: logging.ERROR}


class LineLogger:
    """Joins llama.cpp's pieces into lines and logs each at its level (thread-safe)."""

    def __init__(self, logger: logging.Logger = log):
        self.logger = logger
        self.lock = threading.Lock()
        self.level = logging.INFO  # the level a CONT piece continues
        self.pending = ""

    def write(self, level: int, text: str) -> None:
        with self.lock:
            if level != CONT:
                self._flush()
                self.level = LEVELS.get(level, logging.INFO)
            if not self.logger.isEnabledFor(self.level):
                self.pending = ""
                return
            self.pending += text
            while "\n" in self.pending:
                line, self.pending = self.pending.split("\n", 1)
                if line.strip():
                    self.logger.log(self.level, "%s", line.rstrip())

    def _flush(self) -> None:
        if self.pending.strip() and self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, "%s", self.pending.rstrip())
        self.pending = ""


_lines = LineLogger()
_callback: Any = None  # the ctypes callback: kept alive as long as llama.cpp may call it


def quiet_info() -> None:
    """llama.cpp's INFO lines only when the process logs at DEBUG (see the module notes)."""
    if log.level == logging.NOTSET:
        log.setLevel(logging.DEBUG if logging.getLogger().getEffectiveLevel() <= logging.DEBUG else logging.WARNING)


def route_llama_logs() -> Any:
    """Point llama.cpp's (and mtmd's) log at Python logging; once per process, before a load.

    Returns the callback, for libraries that take one of their own (mtmd_log_set)."""
    global _callback
    import llama_cpp

    if _callback is None:
        quiet_info()

        @llama_cpp.llama_log_callback  # type: ignore[misc]
        def callback(level: int, text: bytes, _data: ctypes.c_void_p) -> None:
            _lines.write(level, text.decode("utf-8", "replace"))

        _callback = callback
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    return _callback
