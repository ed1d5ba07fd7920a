"""The one bridge between the event loop and blocking work: engine calls, decoding, tokenising.

Everything runs in a thread of its own (never the loop's shared executor, which long image or
audio jobs waiting on an engine's lock would otherwise fill), and crosses back through an
asyncio queue, so the event loop never waits on an engine. Three entry points:

- `in_thread(fn, *args)`: one blocking call, awaited.
- `iterate_in_thread(make)`: a blocking iterator, consumed as an async iterator. When the
  consumer goes away (client disconnected, task cancelled), the engine sees `cancel` set and
  stops at its next item.
- `iterate(items, cancel)`: an iterator an engine already returned. A `channel.Stream` (the
  text scheduler's results, a model worker's stream) is read on the loop itself, handed over
  by the thread that produces it; anything else goes through `iterate_in_thread`.
- `collect(client, items)`: a whole async iterator, stopped early if the client disconnects.

CPU-heavy preprocessing (decoding input images) goes through a `Pool` instead: a few threads
and a capped queue, so that a flood of large images cannot take every core from the requests
already admitted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from nexa.channel import Stream
from nexa.errors import ClientGone, Overloaded

T = TypeVar("T")
_DONE = object()


class Client(Protocol):
    """What `collect` needs of a request: Starlette's Request has it."""

    async def is_disconnected(self) -> bool: ...


class _Handoff:
    def __init__(self, stream: Stream[Any]):
        self.stream = stream


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


async def iterate_in_thread(
    make: Callable[[threading.Event], Iterator[T]], cancel: threading.Event | None = None
) -> AsyncGenerator[T, None]:
    """`make(cancel)` runs in the worker thread. `cancel`: an event the caller already handed
    to the engine (one is made otherwise)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancel = cancel or threading.Event()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
            cancel.set()

    def work() -> None:
        items = None
        try:
            items = make(cancel)
            if isinstance(items, Stream):  # read on the loop from here on: no thread needed
                put(_Handoff(items))
                items = None
                return
            for item in items:
                put(item)
                if cancel.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator left early runs its cleanup now, not at GC
                close()
            put(_DONE)

    threading.Thread(target=work, name="nexa-worker", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            if isinstance(item, _Handoff):
                inner = iterate(item.stream, cancel)
                try:
                    async for x in inner:
                        yield x
                finally:
                    await inner.aclose()
                return
            yield item  # type: ignore[misc]
    finally:
        cancel.set()


def iterate(items: Iterator[T], cancel: threading.Event) -> AsyncGenerator[T, None]:
    """An engine's iterator consumed on the loop: a Stream's own async iterator (no layer in
    between, once per token), anything else through a thread. The caller sets `cancel` and
    closes the iterator (`aclose`) when it is done: a model worker is then told to stop at once."""
    if isinstance(items, Stream):
        return items.__aiter__()
    return iterate_in_thread(lambda _: items, cancel)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread: a call is an iterator of one result."""
    (result,) = [r async for r in iterate_in_thread(lambda _: iter((fn(*args),)))]
    return result


async def collect(client: Client, items: AsyncIterator[T], poll_s: float = 0.25) -> list[T]:
    """Gather a whole iterator, stopping it (and so its engine) if the client disconnects meanwhile."""

    async def gather() -> list[T]:
        return [item async for item in items]

    task = asyncio.ensure_future(gather())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await client.is_disconnected():
                task.cancel()  # the worker runs on until its next item sees `cancel`; nobody awaits it
                await asyncio.gather(task, return_exceptions=True)
                await items.aclose()  # type: ignore[attr-defined]
                raise ClientGone("The client disconnected; the work was stopped.")
    finally:
        if not task.done():
            task.cancel()


class Pool:
    """At most `workers` calls at once and `max_waiting` more waiting for a thread; past that a
    caller gets Overloaded (503 with Retry-After) at once, as text requests do past --max-queue."""

    def __init__(self, workers: int, max_waiting: int):
        self.workers, self.max_waiting = workers, max_waiting
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="nexa-preprocess")
        self._guard = threading.Lock()
        self._admitted = 0  # running and waiting: released when the call ends, not when its caller leaves

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._guard:
            if self._admitted >= self.workers + self.max_waiting:
                raise Overloaded(
                    f"{self._admitted - self.workers} requests are already waiting to have their images decoded "
                    f"(--preprocess-threads {self.workers}, --max-queue {self.max_waiting}); retry shortly."
                )
            self._admitted += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        # A caller that goes away cancels its call if no thread has taken it yet.
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[Any] | None) -> None:
        with self._guard:
            self._admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
