"""The server's models: which one a request's `model` means, and a pool (models/pool.py) that
loads, leases and unloads them. The server's only mutable state.

Routing: a name matching a model the server knows (named on the command line, or loaded on
demand before), else a model in the local store or under --models-dir, else a catalogue name
(downloaded only with --allow-pull). A name that matches nothing, or no name, goes to the
default model (the first on the command line), or, when the default cannot do the task, to the
first other model named on the command line or loaded that can: OpenAI clients send
`whisper-1` or `text-embedding-3-small` and reach the speech or embedding model. With
--strict-model such a name is a 404 instead. The tasks a model supports are known before it is
loaded (engines.loader.model_tasks), so a request never loads a model of the wrong type.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexa.config import Settings
from nexa.engines.base import Task
from nexa.engines.loader import model_tasks
from nexa.errors import InvalidRequest, NexaError, NotFound, StartupError, UnsupportedTask
from nexa.models.pool import NOT_LOADED, Factory, Lease, LoadFailed, ModelPool, in_own_thread
from nexa.models.servable import Sources, disk_size, match
from nexa.models.startup import load_in_process, model_factory, resolve_model, type_of
from nexa.models.types import ModelType, ResolvedModel

if TYPE_CHECKING:
    from nexa.engines.base import Engine  # the engine interface, for types only
    from nexa.models.store import ModelStore

log = logging.getLogger("nexa.models")

COMMAND_LINE = "command line"
# A name that found nothing in the store or --models-dir is not looked up again for this long
# (OpenAI's clients send `gpt-4o-mini` with every request; each lookup reads the disk in a
# thread): a model pulled or copied there meanwhile is found once it has passed.
MISS_TTL_S = 5.0
MISSES_KEPT = 256
# The model types made for a task, preferred for it over others that can do it too.
SPECIALISTS: dict[Task, tuple[ModelType, ...]] = {Task.EMBEDDING: (ModelType.TEXT_EMBEDDING,)}


@dataclass(frozen=True)
class Known:
    """A model the server has routed to: named on the command line, or found for a request."""

    id: str
    model: ResolvedModel | None  # None: an engine handed in loaded (tests)
    settings: Settings
    keep_alive: float  # its idle time before unloading; < 0: never
    origin: str  # "command line", "store", "models dir" or "catalogue"
    tasks: frozenset[Task]


class ModelManager:
    """Routes requests to models and owns the pool that holds them.

    `ModelManager(engine, model)` and `ModelManager.load(model, settings)` serve that one model
    (plus --models-dir, if set); `ModelManager.start(settings)` is the command line's: every
    model it names, the local store and the catalogue. `factory` loads one model; the default
    loads it into this process."""

    def __init__(
        self,
        engine: Engine | None = None,
        model: ResolvedModel | None = None,
        *,
        settings: Settings | None = None,
        factory: Factory = load_in_process,
        store: ModelStore | None = None,
    ):
        self.settings = s = settings if settings is not None else Settings(**{})  # NEXA_* variables
        self.pool = ModelPool(factory, max_models=s.max_models, max_memory=s.max_memory, max_queue=s.max_queue)
        self.sources = Sources(store, s.models_dir, s.allow_pull)
        self.created = int(time.time())
        self.known: dict[str, Known] = {}  # the command line's first (the default first), then found ones
        self.default_id = ""
        self._lock = threading.Lock()
        self._misses: dict[str, float] = {}  # name -> when it last found nothing (MISS_TTL_S)
        self.pulling = threading.Lock()  # one download at a time (requests' pulls and /v1/download_model)
        if engine is not None:
            self.default_id = engine.name
            self.known[engine.name] = Known(engine.name, model, s, -1, COMMAND_LINE, engine.tasks)
            self.pool.adopt(engine.name, model, s, engine, -1)

    @classmethod
    def load(
        cls,
        model: ResolvedModel,
        settings: Settings,
        *,
        factory: Factory = load_in_process,
        store: ModelStore | None = None,
        more: Sequence[ResolvedModel] = (),
    ) -> ModelManager:
        """A manager with `model` loaded as the default, and `more` models it may load."""
        for extra in more:  # a model of no known engine fails here, before the long load
            model_tasks(extra, _own_settings(settings))
        manager = cls(factory(model, settings), model, settings=settings, factory=factory, store=store)
        for extra in more:
            manager._remember(extra, COMMAND_LINE)
        return manager

    @classmethod
    def start(cls, settings: Settings, factory: Factory | None = None) -> ModelManager:
        """The command line's manager: every model named is resolved, the first loaded, the others
        loaded too as far as --max-models and --max-memory leave room (the rest on first use)."""
        store, default, more = _command_line_models(settings)
        manager = cls.load(default, settings, factory=factory or model_factory(settings), store=store, more=more)
        manager.preload()
        return manager

    @classmethod
    def unloaded(cls, settings: Settings) -> ModelManager:
        """Every model the command line names, known (the first the default) and none loaded: a
        Ray Serve replica loads the models its requests name, as Ray's multiplexing sends them."""
        store, default, more = _command_line_models(settings)
        manager = cls(settings=settings, factory=model_factory(settings), store=store)
        manager.default_id = default.name  # with its own settings (--projector), as `load` keeps it
        manager.known[default.name] = Known(
            default.name, default, settings, -1, COMMAND_LINE, model_tasks(default, settings)
        )
        for model in more:
            manager._remember(model, COMMAND_LINE)
        return manager

    def preload(self) -> None:
        """Load the command line's other models now, in this thread, as far as the limits leave room."""
        for known in list(self.known.values())[1:]:
            if known.origin != COMMAND_LINE or known.model is None:
                continue
            if not self.pool.load_now(known.id, known.model, known.settings, -1):
                log.info("%s will load on first use (no room under --max-models/--max-memory)", known.id)

    # -- the default model, as the one-model server had it ----------------------------------------
    @property
    def model_id(self) -> str:
        return self.default_id

    @property
    def engine(self) -> Engine:
        """The default model's engine, if loaded."""
        slot = self.pool.slot(self.default_id)
        if slot is None or slot.engine is None:
            raise NexaError(f"The model '{self.default_id}' is not loaded.")
        return slot.engine

    # -- routing --------------------------------------------------------------------------------
    async def get(
        self,
        task: Task,
        endpoint: str,
        model: str | None = None,
        *,
        keep_alive: float | None = None,
        leases: list[Lease] | None = None,
    ) -> Engine:
        """The engine for a request, loaded if need be. Its lease goes into `leases`, which the
        caller releases once the response is sent (server/leases.py); without a list the lease
        ends at once. `keep_alive`: the request's own idle time for the model (Ollama's)."""
        known = await self.route(task, endpoint, model)
        lease = await self.pool.acquire(known.id, known.model, known.settings, known.keep_alive, keep_alive)
        if leases is not None:
            leases.append(lease)
        else:
            lease.release()
        lease.engine.require(task, endpoint)
        return lease.engine

    async def route(self, task: Task, endpoint: str, name: str | None) -> Known:
        """The model that serves a request naming `name` (see the module docstring)."""
        name = (name or "").strip()
        if name:
            known = self._match(name)
            if known is None and not self.sources.empty and not self._missed(name):
                known = await in_own_thread(self._find, name)
                if known is None:
                    self._miss(name)
            if known is not None:
                if task not in known.tasks:
                    raise self._refusal(known, task, endpoint, "Name a model of the right type in `model`.")
                return known
            if self.settings.strict_model:
                raise NotFound(
                    f"The model '{name}' is not served here (see GET /v1/models); --strict-model is on.",
                    param="model", code="model_not_found",
                )
        with self._lock:
            candidates = list(self.known.values())
        default = self.known[self.default_id]
        loaded = {slot.id for slot in self.pool.slots()}
        able = [k for k in candidates if (k.origin == COMMAND_LINE or k.id in loaded) and task in k.tasks]
        able.sort(key=lambda k: k.id != default.id)
        # A model made for the task first: a chat model can embed, but an embedding model is meant to.
        made_for = [k for k in able if k.model is not None and k.model.model_type in SPECIALISTS.get(task, ())]
        if made_for or able:
            return (made_for or able)[0]
        raise self._refusal(default, task, endpoint, "Start the server with a model of the right type.")

    def _refusal(self, known: Known, task: Task, endpoint: str, advice: str) -> UnsupportedTask:
        """Why `known` cannot serve `task`: a loaded engine's own words (an English-only Whisper
        says so), else the tasks its type supports."""
        slot = self.pool.slot(known.id)
        if slot is not None and slot.engine is not None:
            slot.engine.require(task, endpoint)
        can = ", ".join(sorted(t.value for t in known.tasks)) or "nothing"
        return UnsupportedTask(f"The model '{known.id}' cannot serve {endpoint} (it supports: {can}). {advice}")

    def _missed(self, name: str) -> bool:
        seen = self._misses.get(name)
        return seen is not None and time.monotonic() - seen < MISS_TTL_S

    def _miss(self, name: str) -> None:
        if len(self._misses) >= MISSES_KEPT:  # names are the clients': keep a bounded few
            self._misses.clear()
        self._misses[name] = time.monotonic()

    def _match(self, name: str) -> Known | None:
        with self._lock:
            hit = match(name, self.known)
            return None if hit is None else self.known[hit]

    def _find(self, name: str) -> Known | None:
        """A model of the store or --models-dir (or pulled, with --allow-pull) that `name` means."""
        found = self.sources.find(name)
        if found is None and self.sources.catalogue_name(name) is not None:
            if not self.sources.allow_pull:
                if self.settings.strict_model:
                    raise NotFound(
                        f"'{name}' is a catalogue model that is not downloaded: pass --allow-pull to let requests "
                        f"download models, or run `nexa pull {name}` first.",
                        param="model", code="model_not_found",
                    )
                return None
            with self.pulling:
                try:
                    found = self.sources.pull(name)
                except StartupError as exc:
                    raise LoadFailed(name, str(exc)) from None
        return None if found is None else self._remember(found.model, found.origin)

    def _remember(self, model: ResolvedModel, origin: str) -> Known:
        with self._lock:
            files = (model.path, model.projector)
            for known in self.known.values():  # `smollm2` and `smollm2-135m` are one model
                if known.model is not None and (known.model.path, known.model.projector) == files:
                    return known
        settings = _own_settings(self.settings)
        try:
            tasks = model_tasks(model, settings)
        except StartupError as exc:
            raise LoadFailed(model.name, str(exc)) from None
        keep_alive = -1 if origin == COMMAND_LINE else self.settings.keep_alive
        with self._lock:
            return self.known.setdefault(model.name, Known(model.name, model, settings, keep_alive, origin, tasks))

    # -- explicit loads and unloads -------------------------------------------------------------
    async def load_model(self, name: str, keep_alive: float | None = None) -> dict[str, Any]:
        known = self._match(name) or await in_own_thread(self._find, name)
        if known is None:
            raise _not_found(name)
        lease = await self.pool.acquire(known.id, known.model, known.settings, known.keep_alive, keep_alive)
        lease.release()
        return self.describe(known.id)

    async def load_request(self, body: Any) -> dict[str, Any]:
        """The original's /v1/load_model: a name, or with is_local_path a path inside --models-dir,
        or with is_huggingface/is_modelscope a repository (downloaded only with --allow-pull)."""
        flags = {"local": body.is_local_path, "hf": body.is_huggingface, "ms": body.is_modelscope}
        source = next((name for name, given in flags.items() if given), None)
        if source is None or not body.model_path:
            return await self.load_model(body.model_path or self.default_id, body.keep_alive)
        known = await in_own_thread(self._resolve_ref, body.model_path, source, body.model_type)
        lease = await self.pool.acquire(known.id, known.model, known.settings, known.keep_alive, body.keep_alive)
        lease.release()
        return self.describe(known.id)

    def _resolve_ref(self, ref: str, source: str, model_type: str | None) -> Known:
        from nexa.models.store import ModelStore

        if source == "local":
            # A client may not make the server read any file it likes: only what --models-dir holds.
            root = self.sources.models_dir
            if root is None or not Path(ref).resolve().is_relative_to(root.resolve()):
                raise InvalidRequest(
                    "is_local_path loads only models inside the server's --models-dir.", param="model_path"
                )
        store = self.sources.store or ModelStore(onnx=self.settings.onnx)
        try:
            kind = ModelType(model_type.upper()) if model_type else None
            model = store.resolve(ref, source=source, model_type=kind, download=self.sources.allow_pull)
        except (StartupError, ValueError) as exc:
            raise InvalidRequest(str(exc), param="model_path") from None
        return self._remember(model, "request")

    def downloads(self) -> dict[str, Any]:
        """The original's /v1/list_models: the store's registry entries."""
        store = self.sources.store
        if store is None:
            return {}
        return {name: entry.to_json() for name, entry in store.registry.entries().items() if entry.intact()}

    async def unload_model(self, name: str) -> dict[str, Any]:
        known = self._match(name)
        if known is None:
            return self.find(name)  # servable but never loaded: nothing to do
        await self.pool.unload(known.id)
        return self.describe(known.id)

    def using(self, path: Path) -> str | None:
        """The id of a loaded (or loading) model whose files are `path`, if any."""
        for known in list(self.known.values()):
            if known.model is not None and known.model.path == path and self.pool.state(known.id) != NOT_LOADED:
                return known.id
        return None

    def forget(self, path: Path) -> None:
        """A model's files were deleted: requests no longer route to it (the command line's stay known)."""
        with self._lock:
            for known in list(self.known.values()):
                if known.model is not None and known.model.path == path and known.origin != COMMAND_LINE:
                    del self.known[known.id]

    # -- what the server serves -----------------------------------------------------------------
    def list_models(self) -> list[dict[str, Any]]:
        """Every servable model: the known ones (the default first), then the store's and
        --models-dir's; blocking (it reads the store and the directory)."""
        cards = [self.describe(k) for k in list(self.known)]
        seen = {(c.get("path"), c["id"]) for c in cards}
        paths = {c.get("path") for c in cards}
        for model, origin in [(m, "store") for m in self.sources.stored()] + [
            (m, "models dir") for m in self.sources.in_models_dir()
        ]:
            if str(model.path) in paths or (str(model.path), model.name) in seen:
                continue
            paths.add(str(model.path))
            cards.append(self._card(model.name, model, origin, NOT_LOADED, None))
        return cards

    def describe(self, model_id: str) -> dict[str, Any]:
        known = self.known[model_id]
        slot = self.pool.slot(model_id)
        card = self._card(known.id, known.model, known.origin, self.pool.state(model_id), known.tasks)
        if slot is not None and slot.engine is not None:
            card.update(slot.engine.describe())
            pid = getattr(slot.engine, "pid", None)
            if pid is not None:
                card["pid"] = pid
        return card

    def _card(
        self, model_id: str, model: ResolvedModel | None, origin: str, state: str, tasks: frozenset[Task] | None
    ) -> dict[str, Any]:
        card: dict[str, Any] = {"id": model_id, "object": "model", "created": self.created, "owned_by": "nexa"}
        if tasks is None and model is not None:
            try:
                tasks = model_tasks(model, _own_settings(self.settings))
            except StartupError:
                tasks = frozenset()
        card["tasks"] = sorted(t.value for t in tasks or ())
        if model is not None:
            card.update(model_type=model.model_type.value, path=str(model.path), size=disk_size(model))
        card.update(state=state, origin=origin, default=model_id == self.default_id)
        return card

    def find(self, model_id: str) -> dict[str, Any]:
        """GET /v1/models/{id}: the card of a known model, or of one the store or --models-dir holds."""
        known = self._match(model_id)
        if known is not None:
            return self.describe(known.id)
        found = self.sources.find(model_id)  # names and aliases as requests use them
        if found is None:
            raise _not_found(model_id)
        for known in list(self.known.values()):
            if known.model is not None and known.model.path == found.model.path:
                return self.describe(known.id)
        return self._card(found.model.name, found.model, found.origin, NOT_LOADED, None)

    def loaded(self) -> list[dict[str, Any]]:
        """The models loaded or loading, for /health."""
        return [
            {
                "id": slot.id,
                "state": slot.state,
                "pid": getattr(slot.engine, "pid", None),
                "offload": getattr(slot.engine, "offload", None),
            }
            for slot in self.pool.slots()
        ]

    def stats(self) -> list[tuple[str, Any]]:
        """(id, EngineStats) of every loaded model that keeps stats, for /metrics."""
        out = []
        for slot in self.pool.slots():
            stats = slot.engine.stats() if slot.engine is not None else None
            if stats is not None:
                out.append((slot.id, stats))
        return out

    def close(self) -> None:
        self.pool.close()


def _command_line_models(settings: Settings) -> tuple[ModelStore, ResolvedModel, list[ResolvedModel]]:
    """The store, and the models the command line names: the default, then the others."""
    from nexa.models.store import ModelStore

    store = ModelStore(onnx=settings.onnx)
    default = resolve_model(settings, store)
    more = [store.resolve(ref, source=settings.source, model_type=type_of(ref, settings)) for ref in settings.models]
    return store, default, more


def _own_settings(settings: Settings) -> Settings:
    """A model other than the default: --projector is the default model's own."""
    return settings.model_copy(update={"projector": None}) if settings.projector else settings


def _not_found(name: str) -> NotFound:
    return NotFound(f"The model '{name}' is not served here (see GET /v1/models).", param="model",
                    code="model_not_found")
