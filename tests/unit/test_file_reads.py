"""Client-named server files (image_path, file:// and plain paths in chat images): only regular
files inside the allowed directories are read; anything else is a 400 at once (issue 16: a NUL
byte and a directory were 500s, a FIFO hung its request and a thread forever)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from nexa.errors import InvalidRequest
from nexa.server.files import read_allowed_file


def read(raw: str, root: Path) -> bytes:
    return read_allowed_file(raw, [str(root)], "image_path", max_bytes=1 << 20)


def refused_at_once(raw: str, root: Path) -> InvalidRequest:
    """The 400 read() raises, within 10 s (a FIFO would block the open forever)."""
    outcome: list[BaseException | bytes] = []

    def run() -> None:
        try:
            outcome.append(read(raw, root))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert outcome, f"reading {raw!r} did not return"
    assert isinstance(outcome[0], InvalidRequest), outcome[0]
    assert outcome[0].param == "image_path"
    return outcome[0]


def test_a_regular_file_is_read(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    assert read("a.png", tmp_path) == b"png" and read(str(tmp_path / "a.png"), tmp_path) == b"png"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    assert "regular file" in str(refused_at_once("pipe.png", tmp_path))
    assert "regular file" in str(refused_at_once(str(tmp_path / "pipe.png"), tmp_path))


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "sub.png").mkdir()
    assert "regular file" in str(refused_at_once("sub.png", tmp_path))
    assert "regular file" in str(refused_at_once(str(tmp_path), tmp_path))


def test_a_nul_byte_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    assert "NUL" in str(refused_at_once("a.png\x00.txt", tmp_path))
    assert "NUL" in str(refused_at_once(str(tmp_path / "a\x00.png"), tmp_path))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero here")
def test_a_device_is_refused(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.png")  # leads outside: refused either way
    refused_at_once("zero.png", tmp_path)
    assert "regular file" in str(refused_at_once("/dev/zero", Path("/dev")))
