"""The registry (hub/model_list.json): which downloaded files answer which names.

One typed entry per set of files, keyed by the name `nexa list` shows. Its JSON is what the
store has always written (the same nine keys, sorted, indented), so existing caches keep working.
An entry counts only while its files are there with the sizes recorded (`RegistryEntry.intact`).
Entries this code did not write (another tool's, or hand-edited ones it cannot read) are kept
in the file as they are, but never resolved, listed or removed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexa.models import download as dl
from nexa.models.catalogue import Catalogue
from nexa.models.cleanup import forget_hf_metadata
from nexa.models.types import ModelType, ResolvedModel

log = logging.getLogger("nexa.store")


@dataclass(frozen=True)
class Fetched:
    """What a source put on disk, before it is registered."""

    path: Path  # the model file, or the folder that is the model
    source: str  # "hf", "ms" or "pypi": the entry's `source`
    projector: Path | None = None
    file: str | None = None  # the file (or folder) chosen in a repository; part of the default name


@dataclass
class RegistryEntry:
    type: str  # how the files are laid out (see `layout_of`), for the engine to pick a loader
    location: str  # the model file or folder, absolute
    run_type: str  # a ModelType value
    projector: str | None
    source: str
    size: int  # bytes: the file's, or the sum over `files`
    refs: list[str] = field(default_factory=list)  # "{prefix}{source}:{ref}" keys that resolve to it
    files: dict[str, int] | None = None  # folder models: relative path -> size
    projector_size: int | None = None

    @classmethod
    def from_files(cls, fetched: Fetched, model_type: ModelType) -> RegistryEntry:
        path = fetched.path.resolve()
        projector = fetched.projector.resolve() if fetched.projector else None
        files: dict[str, int] | None = None
        if path.is_dir():
            files = {str(p.relative_to(path)): p.stat().st_size for p in dl.iter_files(path)}
        return cls(
            type=layout_of(path),
            location=str(path),
            run_type=model_type.value,
            projector=str(projector) if projector else None,
            source=fetched.source,
            size=sum(files.values()) if files is not None else path.stat().st_size,
            files=files,
            projector_size=projector.stat().st_size if projector else None,
        )

    @classmethod
    def from_json(cls, raw: Any) -> RegistryEntry | None:
        """The entry, or None when `raw` is not one this code wrote."""
        if not isinstance(raw, dict):
            return None
        checks: dict[str, type | tuple[type, ...]] = {
            "type": str,
            "location": str,
            "run_type": str,
            "projector": (str, type(None)),
            "source": str,
            "size": int,
            "refs": list,
        }
        if any(not isinstance(raw.get(key, ...), kind) for key, kind in checks.items()):
            return None
        if not all(isinstance(ref, str) for ref in raw["refs"]):
            return None
        if raw["run_type"] not in {t.value for t in ModelType}:  # a later nexa's kind of model: kept, not read
            return None
        files, projector_size = raw.get("files"), raw.get("projector_size")
        if files is not None and not (
            isinstance(files, dict) and all(isinstance(size, int) for size in files.values())
        ):
            return None
        if projector_size is not None and not isinstance(projector_size, int):
            return None
        return cls(**{key: raw[key] for key in checks}, files=files, projector_size=projector_size)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "location": self.location,
            "run_type": self.run_type,
            "projector": self.projector,
            "source": self.source,
            "size": self.size,
            "refs": self.refs,
        }
        if self.files is not None:
            out["files"] = self.files
        if self.projector_size is not None:
            out["projector_size"] = self.projector_size
        return out

    def _expected_sizes(self) -> list[tuple[Path, int | None]]:
        loc = Path(self.location)
        pairs: list[tuple[Path, int | None]] = (
            [(loc, self.size)] if self.files is None else [(loc / rel, size) for rel, size in self.files.items()]
        )
        if self.projector:
            pairs.append((Path(self.projector), self.projector_size))
        return pairs

    def intact(self) -> bool:
        """Whether the files this entry names are there with the recorded sizes."""
        try:
            if self.files is not None and not Path(self.location).is_dir():
                return False
            return all(path.is_file() and path.stat().st_size == size for path, size in self._expected_sizes())
        except OSError:
            return False

    def changed_files(self) -> list[Path]:
        """Files still there whose size no longer matches (a truncated or replaced download)."""
        return [path for path, size in self._expected_sizes() if path.is_file() and path.stat().st_size != size]

    def to_model(self, name: str, chat_format: str | None) -> ResolvedModel:
        return ResolvedModel(
            name=name,
            path=Path(self.location),
            model_type=ModelType(self.run_type),
            chat_format=chat_format,
            projector=Path(self.projector) if self.projector else None,
        )


class Registry:
    """model_list.json, read afresh for every operation (other processes may write it too)."""

    def __init__(self, path: Path):
        self.path = path
        self.hub = path.parent

    def entries(self) -> dict[str, RegistryEntry]:
        return self._read()[0]

    def cached(self, ref_key: str, model_type: ModelType) -> tuple[str, RegistryEntry] | None:
        """The entry `ref_key` resolved to before, if its files are still intact.

        A damaged entry's changed files are deleted on the way, so no downloader resumes from them
        or mistakes them for complete.
        """
        for name, entry in self.entries().items():
            if ref_key not in entry.refs or entry.run_type != model_type.value:
                continue
            if entry.intact():
                return name, entry
            log.warning("%s: cached files are missing or changed; downloading again", name)
            for path in entry.changed_files():
                path.unlink()
                forget_hf_metadata(self.hub, path)
        return None

    def register(self, name: str, ref_key: str, entry: RegistryEntry) -> tuple[str, RegistryEntry]:
        """Record `entry` as answering `ref_key`; returns the name it is registered under."""
        entries, foreign = self._read()  # re-read: another process may have registered meanwhile
        # One entry per set of files: `gemma` and `gemma:Q4_K_M` are the same download.
        for other_name, other in entries.items():
            if other.location == entry.location and other.projector == entry.projector:
                name = other_name
                break
        previous = entries.get(name)
        entry.refs = sorted(set(previous.refs if previous else ()) | {ref_key})
        entries[name] = entry
        self._write(entries, foreign)
        return name, entry

    def drop(self, name: str) -> None:
        entries, foreign = self._read()
        entries.pop(name, None)
        self._write(entries, foreign)

    def _read(self) -> tuple[dict[str, RegistryEntry], dict[str, Any]]:
        """(entries, raw JSON of the entries this code cannot read, kept to be written back)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as e:
            log.warning("Ignoring unreadable registry %s (%s); models will be fetched again", self.path, e)
            return {}, {}
        entries: dict[str, RegistryEntry] = {}
        foreign: dict[str, Any] = {}
        for name, raw in (data if isinstance(data, dict) else {}).items():
            entry = RegistryEntry.from_json(raw)
            if entry is None:
                foreign[name] = raw
            else:
                entries[name] = entry
        return entries, foreign

    def _write(self, entries: dict[str, RegistryEntry], foreign: dict[str, Any]) -> None:
        self.hub.mkdir(parents=True, exist_ok=True)
        data = {**foreign, **{name: entry.to_json() for name, entry in entries.items()}}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)  # readers never see a half-written registry


def key_for(entries: dict[str, RegistryEntry], name: str, catalogue: Catalogue) -> str | None:
    """The entry `nexa remove NAME` means: its own name, or any ref (or catalogue alias) it was pulled by."""
    if name in entries:
        return name
    candidates = {name.lower()}
    hit = catalogue.split_tag(name)
    if hit is not None:
        entry, tag = hit
        candidates.add((f"{entry.name}:{tag}" if tag else entry.name).lower())
    for key, registered in entries.items():
        refs = {r.split(":", 1)[1].lower() for r in registered.refs}
        if key.lower() in candidates or refs & candidates:
            return key
    return None


def layout_of(path: Path) -> str:
    """The entry's `type`: how the files are laid out, for the engine to pick a loader."""
    if path.is_file():
        suffix = path.suffix.lower().lstrip(".")
        return suffix if suffix in ("gguf", "safetensors", "ckpt", "onnx", "bin") else "file"
    if (path / "model.bin").exists():
        return "bin"  # CTranslate2
    if any(path.glob("*.onnx")):
        return "onnx"
    return "hf"
