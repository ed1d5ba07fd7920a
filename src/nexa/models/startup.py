"""What the command line names, made ready to serve: its models resolved through the store, and
the factory that loads a model into this process."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from nexa.config import Settings
from nexa.engines.loader import load_engine
from nexa.errors import StartupError
from nexa.models.servable import dir_model
from nexa.models.types import ModelType, ResolvedModel

if TYPE_CHECKING:
    from nexa.engines.base import Engine
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


def load_in_process(model: ResolvedModel, settings: Settings) -> Engine:
    """The factory that loads a model into this process; any failure is one StartupError line."""
    log.info("loading %s (%s) from %s", model.name, model.model_type.value, model.path)
    started = time.perf_counter()
    try:
        engine = load_engine(model, settings)
    except StartupError:
        raise
    except Exception as exc:  # a corrupt or unsupported file: say so in one line
        raise StartupError(
            f"Could not load {model.path}: {exc}. Check that the file is a complete model of "
            f"type {model.model_type.value} (re-download it with `nexa pull`, or pass -mt)."
        ) from exc
    log.info("model ready in %.1fs", time.perf_counter() - started)
    return engine


def type_of(ref: str, settings: Settings) -> ModelType | None:
    """-mt, else for the models after the first with -lp, what the files say (as in --models-dir),
    so `nexa server chat.gguf whisper/ minilm.gguf -lp` serves each as what it is."""
    if settings.model_type is not None or settings.source != "local":
        return settings.model_type
    found = dir_model(Path(ref).expanduser().resolve())
    return found.model_type if found is not None else None


def model_factory(settings: Settings) -> Callable[[ResolvedModel, Settings], Engine]:
    """How the server loads a model: in a worker process of its own (nexa/workers), or with
    --no-workers into this process."""
    if not settings.workers:
        return load_in_process
    from nexa.workers.remote import RemoteEngine

    # A RemoteEngine answers as the engine it runs (not a subclass: its attributes come from the worker).
    return cast(Callable[[ResolvedModel, Settings], "Engine"], RemoteEngine.start)
