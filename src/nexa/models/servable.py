"""What a request's `model` may name beyond the models the server was started with: the local
store (`nexa list`), the files under --models-dir, and catalogue names (pulled only with
--allow-pull); plus the name matching every lookup shares.

A name matches an id exactly, else case-insensitively, else without a `:tag`, a path or a
.gguf extension (`SmolLM2-135M:latest`, `org/smollm2-135m.gguf`), so the names clients send
reach the model they mean.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nexa.engines.speech import is_kokoro_folder
from nexa.errors import StartupError
from nexa.models import download as dl
from nexa.models.catalogue import DIFFUSION_EXTS
from nexa.models.gguf_header import gguf_architecture, is_projector
from nexa.models.local import resolve_local
from nexa.models.types import ModelType, ResolvedModel

if TYPE_CHECKING:
    from nexa.models.store import ModelStore

log = logging.getLogger("nexa.models")

# llama.cpp architectures that only embed (their GGUFs cannot chat).
EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert"}
)


def short_name(name: str) -> str:
    """`Org/SmolLM2-135M.gguf:Q4` -> `smollm2-135m`: the part of a name that says which model."""
    base = name.strip().lower().removeprefix("onnx:").rsplit("/", 1)[-1]
    return base.split(":", 1)[0].removesuffix(".gguf")


def match(name: str, ids: Iterable[str]) -> str | None:
    """The id `name` means: exact, then case-insensitive, then by short name; the first wins."""
    ids = list(ids)
    for key in (str.strip, lambda s: s.strip().lower(), short_name):
        wanted = key(name)
        hit = next((i for i in ids if key(i) == wanted), None)
        if hit is not None:
            return hit
    return None


def disk_size(model: ResolvedModel) -> int:
    """Bytes on disk: the model file or folder, its projector and extra files."""
    paths = [model.path, *([model.projector] if model.projector else []), *model.extra_files.values()]
    total = 0
    for path in paths:
        try:
            total += sum(p.stat().st_size for p in dl.iter_files(path)) if path.is_dir() else path.stat().st_size
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class Found:
    model: ResolvedModel
    origin: str  # "store", "models dir" or "catalogue" (pulled)


class Sources:
    """The store, --models-dir and the catalogue, for a manager that serves more than it was given.

    `store` None: no store and no catalogue (a manager built around given models, as the tests
    build them); the models directory is read afresh on each lookup, so files dropped into it are
    servable without a restart."""

    def __init__(self, store: ModelStore | None, models_dir: str | None, allow_pull: bool):
        self.store = store
        self.models_dir = Path(models_dir) if models_dir else None
        self.allow_pull = allow_pull

    @property
    def empty(self) -> bool:
        """Nothing beyond the models given: no lookup is worth a thread."""
        return self.store is None and self.models_dir is None

    def stored(self) -> builtins.list[ResolvedModel]:
        """The store's intact downloads of this variant (GGUF, or ONNX for `nexa server onnx`)."""
        if self.store is None:
            return []
        onnx = self.store.onnx
        out = []
        for name, entry in sorted(self.store.registry.entries().items()):
            if name.startswith("onnx:") == onnx and entry.intact():
                out.append(entry.to_model(name, None))
        return out

    def in_models_dir(self) -> builtins.list[ResolvedModel]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        found = [m for p in sorted(self.models_dir.iterdir()) if (m := dir_model(p)) is not None]
        return found

    def find(self, name: str) -> Found | None:
        """A downloaded or --models-dir model that `name` means; downloads nothing."""
        if self.store is not None:
            # Catalogue names, aliases and tags as `nexa pull` recorded them; then without the
            # tag (`smollm2:latest`, Ollama's spelling of "the usual one").
            for ref in dict.fromkeys([name, name.rpartition(":")[0] or name]):
                try:
                    return Found(self.store.resolve(ref, download=False), "store")
                except (StartupError, OSError, ValueError):  # a client's name that names nothing here
                    pass
            stored = {m.name.removeprefix("onnx:"): m for m in self.stored()}
            hit = match(name, stored)
            if hit is not None:
                return Found(stored[hit], "store")
        local = {m.name: m for m in self.in_models_dir()}
        hit = match(name, local)
        return Found(local[hit], "models dir") if hit is not None else None

    def catalogue_name(self, name: str) -> str | None:
        """The catalogue's name for `name` (a model that could be pulled), if it has one."""
        if self.store is None:
            return None
        hit = self.store.catalogue.split_tag(name)
        return None if hit is None else hit[0].name

    def pull(self, name: str) -> Found:
        assert self.store is not None
        log.info("pulling %s (--allow-pull)", name)
        return Found(self.store.pull(name), "catalogue")


def dir_model(path: Path) -> ResolvedModel | None:
    """The model a --models-dir entry holds, named by its file stem (or folder name), or None.

    The type comes from the files, as far as they tell: a CTranslate2 folder is speech, a Kokoro
    folder text to speech, a
    .safetensors/.ckpt file an image model, a GGUF whose architecture only embeds an embedding
    model, a folder with a model GGUF and a projector a vision model; any other GGUF is text."""
    try:
        if path.name.startswith("."):
            return None
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix == ".gguf" and not is_projector(path):
                arch = gguf_architecture(path)
                kind = ModelType.TEXT_EMBEDDING if arch in EMBEDDING_ARCHITECTURES else ModelType.NLP
                return ResolvedModel(path.stem, path, kind)
            if suffix in DIFFUSION_EXTS and suffix != ".gguf":
                return ResolvedModel(path.stem, path, ModelType.COMPUTER_VISION)
            return None
        if not path.is_dir():
            return None
        if (path / "model.bin").is_file():
            return ResolvedModel(path.name, path, ModelType.AUDIO)
        if is_kokoro_folder(path):
            return ResolvedModel(path.name, path, ModelType.TTS)
        ggufs = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
        models = [p for p in ggufs if not is_projector(p)]
        if not models:
            return None
        if len(models) < len(ggufs):
            return resolve_local(str(path), ModelType.MULTIMODAL)
        inner = dir_model(max(models, key=lambda p: p.stat().st_size))
        return None if inner is None else ResolvedModel(path.name, inner.path, inner.model_type)
    except (OSError, StartupError) as exc:
        log.warning("--models-dir: skipping %s (%s)", path, exc)
        return None
