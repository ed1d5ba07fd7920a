"""Speech settings that need no loaded model: the compute type chosen per model size, and the
speech flags of the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexa.cli import build_parser, settings_from_args
from nexa.engines.whisper import choose_compute_type
from nexa.errors import StartupError
from nexa.models.types import ResolvedModel


def test_compute_type_choice(whisper_model: ResolvedModel, tmp_path: Path) -> None:
    # tiny and base run in float32 on a CPU, larger models in int8 (see engines/whisper.py)
    assert choose_compute_type("cpu", None, whisper_model.path) == "float32"
    with open(tmp_path / "model.bin", "wb") as f:
        f.truncate(484 * 2**20)  # the size of whisper small's weights, as a sparse file
    assert choose_compute_type("cpu", None, tmp_path) == "int8"
    assert choose_compute_type("cpu", None) == "int8"
    assert choose_compute_type("cpu", "float32") == "float32"
    with pytest.raises(StartupError, match="compute-type"):
        choose_compute_type("cpu", "float13")


def test_cli_speech_flags() -> None:
    args = build_parser().parse_args(
        ["server", "faster-whisper-tiny.en", "--max-upload-mb", "5", "--compute-type", "float32",
         "--whisper-batch-size", "0"]
    )
    settings = settings_from_args(args)
    assert (settings.max_upload_mb, settings.whisper_compute_type, settings.whisper_batch_size) == (5, "float32", 0)
    defaults = settings_from_args(build_parser().parse_args(["server", "faster-whisper-tiny.en"]))
    assert (defaults.max_upload_mb, defaults.whisper_compute_type, defaults.whisper_batch_size) == (25, None, 8)
    with pytest.raises(StartupError):
        settings_from_args(build_parser().parse_args(["server", "x", "--max-upload-mb", "0"]))
