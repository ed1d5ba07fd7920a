"""The loaded models: one load per model however many requests wait for it, a lease per request
in flight, unloading after keep-alive, least-recently-used eviction under --max-models and
--max-memory.

The engines come from a factory, `(ResolvedModel, Settings) -> Engine`: today the in-process
loader, a worker process's proxy tomorrow. Engine facts the factory may add are read with
getattr: `alive` (False once a worker died: the next request loads the model again), `pid`, and
`rss_bytes()` (memory in use; the file size on disk stands in for engines without it).

The pool is thread-safe rather than tied to one event loop: it outlives loops (the tests'
clients run each in a loop of its own, one manager serves several apps), so its state sits under
one lock that is never held across I/O, loads and closes run in threads of their own, requests
await a load through a concurrent future, and the keep-alive timer is a thread, which needs no
lifespan to run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nexa.config import Settings
from nexa.engines.base import Engine
from nexa.errors import NexaError, Overloaded, StartupError
from nexa.models.servable import disk_size
from nexa.models.types import ResolvedModel

log = logging.getLogger("nexa.models")

Factory = Callable[[ResolvedModel, Settings], Engine]
T = TypeVar("T")

LOADED, LOADING, NOT_LOADED, UNLOADING = "loaded", "loading", "not_loaded", "unloading"


async def in_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a thread of its own (a download or a load may take minutes), from any event loop."""
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, name="nexa-models", daemon=True).start()
    return await asyncio.wrap_future(done)


class LoadFailed(NexaError):
    """A model could not be loaded for a request: its reason, not cached (the next request retries)."""

    def __init__(self, model_id: str, reason: str):
        super().__init__(f"Could not load the model '{model_id}': {reason}", param="model", code="model_load_failed")


@dataclass(eq=False)
class Slot:
    """A model that is loaded or loading."""

    id: str
    model: ResolvedModel | None  # None: an engine handed in loaded, which cannot be loaded again
    settings: Settings
    keep_alive: float  # seconds idle before unloading, unless a request said otherwise; < 0: never
    engine: Engine | None = None
    loading: Future[Engine] | None = None
    leases: int = 0  # requests in flight
    waiters: int = 0  # requests waiting for the load
    last_used: float = field(default_factory=time.monotonic)
    expires: float | None = None  # when idle: the monotonic time it unloads; None: never
    unload_when_idle: bool = False

    @property
    def state(self) -> str:
        if self.loading is not None:
            return LOADING
        return UNLOADING if self.unload_when_idle else LOADED

    @property
    def idle(self) -> bool:
        return self.loading is None and self.leases == 0 and self.waiters == 0

    def memory(self) -> int:
        rss = getattr(self.engine, "rss_bytes", None)
        if rss is not None:
            try:
                return int(rss())
            except Exception:  # a worker that just died: its file size stands in
                pass
        return disk_size(self.model) if self.model is not None else 0


class Lease:
    """One request's use of a model: the model is not evicted or unloaded until it is released."""

    def __init__(self, pool: ModelPool, slot: Slot, keep_alive: float | None):
        self.pool, self.slot, self.keep_alive = pool, slot, keep_alive
        self.engine: Engine = slot.engine  # type: ignore[assignment]
        self.released = False

    def release(self) -> None:
        self.pool._release(self)


def alive(engine: Engine) -> bool:
    return bool(getattr(engine, "alive", True))


class ModelPool:
    def __init__(self, factory: Factory, *, max_models: int | None, max_memory: int | None, max_queue: int):
        self.factory = factory
        self.max_models, self.max_memory, self.max_queue = max_models, max_memory, max_queue
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the keep-alive thread sleeps on it
        self._slots: dict[str, Slot] = {}
        self._reaper: threading.Thread | None = None
        self._closed = False

    # -- what is loaded -------------------------------------------------------------------------
    def slots(self) -> list[Slot]:
        with self._lock:
            return list(self._slots.values())

    def slot(self, model_id: str) -> Slot | None:
        with self._lock:
            return self._slots.get(model_id)

    def state(self, model_id: str) -> str:
        slot = self.slot(model_id)
        return NOT_LOADED if slot is None else slot.state

    # -- loading --------------------------------------------------------------------------------
    def adopt(
        self, model_id: str, model: ResolvedModel | None, settings: Settings, engine: Engine, keep_alive: float
    ) -> None:
        """An engine loaded elsewhere (at start-up, or handed in by tests) joins the pool, idle."""
        slot = Slot(model_id, model, settings, keep_alive, engine=engine)
        with self._lock:
            self._slots[model_id] = slot
            due = self._became_idle(slot, None)
        self._close(due)

    def load_now(self, model_id: str, model: ResolvedModel, settings: Settings, keep_alive: float) -> bool:
        """Load in this thread if there is room without evicting anything (start-up preloading)."""
        with self._lock:
            if model_id in self._slots or not self._fits(model, []):
                return model_id in self._slots
        self.adopt(model_id, model, settings, self.factory(model, settings), keep_alive)
        return True

    async def acquire(
        self, model_id: str, model: ResolvedModel | None, settings: Settings, keep_alive: float,
        request_keep_alive: float | None = None,
    ) -> Lease:
        """A lease on the model, loading it first (once, however many requests wait) if needed."""
        dead: Slot | None = None
        with self._lock:
            if self._closed:
                raise Overloaded("The server is shutting down.")
            slot = self._slots.get(model_id)
            if slot is not None and slot.engine is not None and not alive(slot.engine):
                log.warning("%s: its worker (pid %s) has died; loading it again", model_id,
                            getattr(slot.engine, "pid", None))
                dead, slot = self._slots.pop(model_id), None
            if slot is not None and slot.loading is None:
                return self._lease(slot, request_keep_alive)
            if slot is None:
                if model is None:
                    raise NexaError(f"The model '{model_id}' was handed in loaded and cannot be loaded again.")
                victims = self._make_room(model)
                load: Future[Engine] = Future()
                load.set_running_or_notify_cancel()  # so a waiter that gives up cannot cancel the others' load
                slot = Slot(model_id, model, settings, keep_alive, loading=load)
                self._slots[model_id] = slot
                loader = threading.Thread(target=self._load, args=(slot, victims), name=f"load-{model_id}", daemon=True)
                loader.start()
            elif slot.waiters > self.max_queue:
                raise Overloaded(
                    f"{slot.waiters - 1} requests are already waiting for '{model_id}' to load "
                    f"(--max-queue {self.max_queue}); retry shortly."
                )
            slot.waiters += 1
            loading = slot.loading
        if dead is not None:
            self._close_later([dead])
        assert loading is not None
        try:
            await asyncio.wrap_future(loading)
        except BaseException:  # the load failed, or this request gave up waiting
            with self._lock:
                slot.waiters -= 1
                due = self._became_idle(slot, None) if slot.idle else []
            self._close_later(due)
            raise
        with self._lock:
            lease = self._lease(slot, request_keep_alive)
            slot.waiters -= 1
            return lease

    def _load(self, slot: Slot, victims: list[Slot]) -> None:
        assert slot.model is not None and slot.loading is not None
        self._close(victims)  # their memory back before the new model takes its own
        started = time.perf_counter()
        try:
            engine = self.factory(slot.model, slot.settings)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, StartupError) else f"{type(exc).__name__}: {exc}"
            log.error("%s failed to load: %s", slot.id, reason)
            with self._lock:
                if self._slots.get(slot.id) is slot:
                    del self._slots[slot.id]
            slot.loading.set_exception(LoadFailed(slot.id, reason))
            return
        log.info("%s loaded in %.1fs", slot.id, time.perf_counter() - started)
        with self._lock:
            slot.engine, loading, slot.loading = engine, slot.loading, None
            slot.last_used = time.monotonic()
            closed = self._closed
            over = [] if closed else self._over_memory(slot)
            if not closed and slot.idle:  # every request that waited for it gave up meanwhile
                over += self._became_idle(slot, None)
        if closed:
            self._close([slot])
        self._close(over)
        loading.set_result(engine)

    # -- leases and keep-alive ------------------------------------------------------------------
    def _lease(self, slot: Slot, keep_alive: float | None) -> Lease:
        slot.leases += 1
        slot.expires = None
        slot.last_used = time.monotonic()
        return Lease(self, slot, keep_alive)

    def _release(self, lease: Lease) -> None:
        with self._lock:
            if lease.released:
                return
            lease.released = True
            slot = lease.slot
            slot.leases -= 1
            slot.last_used = time.monotonic()
            due = self._became_idle(slot, lease.keep_alive) if slot.idle else []
        self._close_later(due)

    def _became_idle(self, slot: Slot, keep_alive: float | None) -> list[Slot]:
        """Start the idle clock (lock held); a slot already due is taken out and returned."""
        if self._slots.get(slot.id) is not slot or slot.model is None:
            return []  # unloaded already, or cannot be loaded again: never expires
        seconds = 0.0 if slot.unload_when_idle else slot.keep_alive if keep_alive is None else keep_alive
        slot.expires = None if seconds < 0 else time.monotonic() + seconds
        if slot.expires is not None and seconds == 0:
            del self._slots[slot.id]
            return [slot]
        if slot.expires is not None:
            self._start_reaper()
            self._wake.notify_all()
        return []

    def _start_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            self._reaper = threading.Thread(target=self._reap, name="nexa-keep-alive", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                due = [s for s in self._slots.values() if s.idle and s.expires is not None and s.expires <= now]
                for s in due:
                    del self._slots[s.id]
                if not due:
                    deadlines = [s.expires for s in self._slots.values() if s.idle and s.expires is not None]
                    # Capped: a client may ask for a keep_alive of 1e300 s, past what a timed wait takes.
                    self._wake.wait(timeout=min(min(deadlines) - now, 3600.0) if deadlines else None)
                    continue
            for s in due:
                log.info("%s: idle past its keep-alive; unloading", s.id)
            self._close(due)

    # -- eviction -------------------------------------------------------------------------------
    def _fits(self, model: ResolvedModel, victims: list[Slot]) -> bool:
        kept = [s for s in self._slots.values() if s not in victims]
        if self.max_models is not None and len(kept) + 1 > self.max_models:
            return False
        if self.max_memory is not None and kept:
            return sum(s.memory() for s in kept) + disk_size(model) <= self.max_memory
        return True

    def _make_room(self, model: ResolvedModel) -> list[Slot]:
        """The idle models to unload, least recently used first, so that `model` fits (lock held).

        Models with requests in flight are never chosen; when even unloading every idle one is
        not enough, the request gets a 503 at once (OpenAI clients retry it) rather than waiting.
        A model larger than --max-memory on its own is still loaded once nothing else is."""
        idle = sorted((s for s in self._slots.values() if s.idle and s.model is not None), key=lambda s: s.last_used)
        victims: list[Slot] = []
        while not self._fits(model, victims) and idle:
            victims.append(idle.pop(0))
        if not self._fits(model, victims):
            busy = [s.id for s in self._slots.values() if s not in victims]
            limit = f"--max-models {self.max_models}" if self.max_models is not None else "--max-memory"
            raise Overloaded(
                f"No room to load '{model.name}' ({limit}): the loaded models ({', '.join(busy)}) are all serving "
                "requests; retry shortly."
            )
        for s in victims:
            log.info("%s: unloading (least recently used) to make room for %s", s.id, model.name)
            del self._slots[s.id]
        return victims

    def _over_memory(self, loaded: Slot) -> list[Slot]:
        """After a load, the idle models to unload if the real memory use passed --max-memory (lock held)."""
        if self.max_memory is None:
            return []
        idle = sorted((s for s in self._slots.values() if s.idle and s is not loaded and s.model is not None),
                      key=lambda s: s.last_used)
        used = sum(s.memory() for s in self._slots.values())
        victims = []
        while used > self.max_memory and idle:
            victim = idle.pop(0)
            used -= victim.memory()
            del self._slots[victim.id]
            victims.append(victim)
        return victims

    # -- unloading ------------------------------------------------------------------------------
    async def unload(self, model_id: str) -> str:
        """Unload now if idle; with requests in flight, as soon as the last one ends. Returns the state."""
        with self._lock:
            slot = self._slots.get(model_id)
            if slot is None:
                return NOT_LOADED
            if slot.model is None:
                raise NexaError(f"The model '{model_id}' was handed to the server loaded and cannot be unloaded.")
            if not slot.idle:
                slot.unload_when_idle = True
                return slot.state
            del self._slots[model_id]
        await in_own_thread(self._close, [slot])
        return NOT_LOADED

    def _close_later(self, slots: list[Slot]) -> None:
        if slots:
            threading.Thread(target=self._close, args=(slots,), name="nexa-unload", daemon=True).start()

    def _close(self, slots: list[Slot]) -> None:
        for slot in slots:
            if slot.engine is None:
                continue
            try:
                slot.engine.close()
                log.info("%s unloaded", slot.id)
            except Exception:
                log.exception("%s: closing its engine failed", slot.id)

    def close(self) -> None:
        """Unload everything (server shutdown); a load still running closes its engine when done."""
        with self._lock:
            self._closed = True
            slots = [s for s in self._slots.values() if s.loading is None]
            self._slots.clear()
            self._wake.notify_all()
        self._close(slots)
