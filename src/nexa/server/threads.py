"""Run blocking engine generators in a thread and consume them from the event loop.

The event loop never waits on an engine: items cross over through an asyncio queue.
When the consumer goes away (client disconnected, task cancelled), the engine sees
`cancel` set and stops at its next token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from starlette.requests import Request

from nexa.errors import ClientGone

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


async def iterate_in_thread(
    make: Callable[[threading.Event], Iterator[T]], cancel: threading.Event | None = None
) -> AsyncIterator[T]:
    """`cancel`: an event the caller already handed to the engine (one is made otherwise)."""
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

    threading.Thread(target=work, name="nexa-engine", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        cancel.set()


async def collect(request: Request, items: AsyncIterator[T], poll_s: float = 0.25) -> list[T]:
    """Gather a whole generation, cancelling it if the client disconnects meanwhile."""

    async def gather() -> list[T]:
        return [item async for item in items]

    async def stop() -> None:
        await items.aclose()  # type: ignore[attr-defined]

    return await _unless_disconnected(request, asyncio.ensure_future(gather()), stop, poll_s)


async def call_in_thread(request: Request, fn: Callable[[threading.Event], T], poll_s: float = 0.25) -> T:
    """fn(cancel) in a worker thread; `cancel` is set if the client disconnects meanwhile."""
    cancel = threading.Event()

    async def stop() -> None:
        cancel.set()

    return await _unless_disconnected(request, asyncio.ensure_future(asyncio.to_thread(fn, cancel)), stop, poll_s)


async def _unless_disconnected(
    request: Request, task: asyncio.Future[T], stop: Callable[[], Awaitable[None]], poll_s: float
) -> T:
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()  # a thread runs on until `stop` reaches it; nobody awaits its result
                await asyncio.gather(task, return_exceptions=True)
                await stop()
                raise ClientGone("The client disconnected; the work was stopped.")
    finally:
        if not task.done():
            task.cancel()
