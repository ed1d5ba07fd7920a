"""What a GGUF file is, from its header alone: `general.architecture`, whether it is a
vision projector (mmproj) rather than a language model, and how it pools (a reranker pools by rank).

Why not `gguf.GGUFReader` (the `gguf` package is a dependency, and the vision engine uses it on
projectors): it parses every key/value and every tensor description before it answers, building
numpy views item by item. Measured on a loaded 2-core machine: 6 s for SmolLM2-135M (49k-token
vocabulary), 16-44 s for a 256k-token vocabulary, against under a millisecond for this reader,
which stops at `general.architecture` (the `gguf` writer puts it first). `-lp` runs this on each
GGUF of a folder at every start. GGUFReader also refuses version-1 files, which this reader
reads. tests/unit/test_store.py checks that both give the same answers.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from nexa.models.catalogue import is_projector_name


def split_projectors(files: list[Path]) -> tuple[list[Path], list[Path]]:
    models: list[Path] = []
    projectors: list[Path] = []
    for f in files:
        (projectors if is_projector(f) else models).append(f)
    return models, projectors


def is_projector(path: Path) -> bool:
    """A GGUF is a projector when its metadata says clip (or, failing that, its name says mmproj)."""
    if path.suffix.lower() != ".gguf":
        return False
    arch = gguf_architecture(path)
    return arch == "clip" if arch is not None else is_projector_name(path.name)


# GGUF value types (ggml/gguf spec): fixed sizes, 8 = string, 9 = array.
_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_architecture(path: Path) -> str | None:
    """`general.architecture` from a GGUF header, reading no further than that key.

    Returns None for anything that is not a readable GGUF.
    """
    try:
        with path.open("rb") as f:
            count_fmt, n_kv = _gguf_preamble(f)
            for _ in range(n_kv):
                key = _gguf_str(f, count_fmt)
                (vtype,) = struct.unpack("<I", f.read(4))
                if key == "general.architecture" and vtype == 8:
                    return _gguf_str(f, count_fmt)
                _gguf_skip(f, vtype, count_fmt)
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return None
    return None


_INTEGERS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


def gguf_pooling_type(path: Path) -> int | None:
    """`{architecture}.pooling_type` (llama.cpp's enum: 1 mean, 2 cls, 3 last, 4 rank), or None.

    Reads no further than the first `tokenizer.` key: converters write the hyper-parameters
    before the vocabulary, whose strings (up to 256k of them) would each cost a read. A file
    that put it later reads as None here, and llama.cpp's own check refuses it at load."""
    arch = None
    try:
        with path.open("rb") as f:
            count_fmt, n_kv = _gguf_preamble(f)
            for _ in range(n_kv):
                key = _gguf_str(f, count_fmt)
                (vtype,) = struct.unpack("<I", f.read(4))
                if key.startswith("tokenizer."):
                    return None
                if key == "general.architecture" and vtype == 8:
                    arch = _gguf_str(f, count_fmt)
                elif arch is not None and key == f"{arch}.pooling_type" and vtype in _INTEGERS:
                    fmt = _INTEGERS[vtype]
                    (value,) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
                    return int(value)
                else:
                    _gguf_skip(f, vtype, count_fmt)
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return None
    return None


def _gguf_preamble(f: BinaryIO) -> tuple[str, int]:
    """The format of counts in this file's version, and its number of key/values."""
    if f.read(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    (version,) = struct.unpack("<I", f.read(4))
    count_fmt = "<I" if version == 1 else "<Q"
    size = struct.calcsize(count_fmt)
    struct.unpack(count_fmt, f.read(size))  # tensor count
    (n_kv,) = struct.unpack(count_fmt, f.read(size))
    return count_fmt, n_kv


def _gguf_str(f: BinaryIO, count_fmt: str) -> str:
    (n,) = struct.unpack(count_fmt, f.read(struct.calcsize(count_fmt)))
    if n > 1 << 20:
        raise ValueError("implausible GGUF string length")
    return f.read(n).decode("utf-8")


def _gguf_skip(f: BinaryIO, vtype: int, count_fmt: str) -> None:
    if vtype in _GGUF_FIXED:
        f.seek(_GGUF_FIXED[vtype], os.SEEK_CUR)
    elif vtype == 8:
        (n,) = struct.unpack(count_fmt, f.read(struct.calcsize(count_fmt)))
        f.seek(n, os.SEEK_CUR)
    elif vtype == 9:
        (item_type,) = struct.unpack("<I", f.read(4))
        (count,) = struct.unpack(count_fmt, f.read(struct.calcsize(count_fmt)))
        if item_type in _GGUF_FIXED:
            f.seek(_GGUF_FIXED[item_type] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _gguf_skip(f, item_type, count_fmt)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")
