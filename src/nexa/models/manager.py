"""Turns a resolved model into a loaded engine (through engines/loader.py); the server's only mutable state."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexa.config import Settings
from nexa.engines.loader import load_checked
from nexa.errors import NotFound, StartupError
from nexa.models.types import ModelType, ResolvedModel

if TYPE_CHECKING:
    from nexa.engines.base import Engine, Task  # the engine interface, for types only
    from nexa.models.store import ModelStore

log = logging.getLogger("nexa.models")


def resolve_model(settings: Settings, store: ModelStore) -> ResolvedModel:
    """The store's answer, with --projector (if given) making it a MULTIMODAL model."""
    if not settings.projector:
        return store.resolve(settings.model, source=settings.source, model_type=settings.model_type)
    if settings.model_type not in (None, ModelType.MULTIMODAL):
        raise StartupError(
            f"--projector is for vision models: drop it, or use -mt MULTIMODAL instead of {settings.model_type.value}."
        )
    # Resolve the language model alone (a local folder need not hold a projector then), and
    # pair it with the named one; catalogue names keep their own type check.
    as_type = None if settings.source == "auto" else ModelType.NLP
    model = store.resolve(settings.model, source=settings.source, model_type=as_type)
    return dataclasses.replace(model, model_type=ModelType.MULTIMODAL, projector=Path(settings.projector))


class ModelManager:
    """Owns the loaded engine; routers ask it for an engine that can do a task."""

    def __init__(self, engine: Engine, model: ResolvedModel | None = None):
        self.engine = engine
        self.model = model
        self.created = int(time.time())

    @classmethod
    def load(cls, model: ResolvedModel, settings: Settings) -> ModelManager:
        return cls(load_checked(model, settings), model)

    @property
    def model_id(self) -> str:
        return self.engine.name

    def get(self, task: Task, endpoint: str) -> Engine:
        self.engine.require(task, endpoint)
        return self.engine

    def list_models(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "nexa",
            "tasks": sorted(t.value for t in self.engine.tasks),
        }
        if self.model is not None:
            entry["model_type"] = self.model.model_type.value
            entry["path"] = str(self.model.path)
        entry.update(self.engine.describe())
        return [entry]

    def find(self, model_id: str) -> dict[str, Any]:
        for entry in self.list_models():
            if entry["id"] == model_id:
                return entry
        raise NotFound(f"The model '{model_id}' is not loaded on this server.", param="model", code="model_not_found")

    def close(self) -> None:
        self.engine.close()
