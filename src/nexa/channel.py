"""A stream of results from one producer thread to one consumer, read either blocking (a
thread) or awaited on an event loop with no thread in between.

Why: a streamed token used to cross a thread of its own per request (iterating the blocking
iterator and calling the loop once per token). Here the producer (the text scheduler's thread,
or the thread reading a model worker's socket) appends to the stream, and wakes the loop only
when the consumer is actually waiting: tokens that arrive while the loop is busy are taken in
one go, for one wake-up. Until a consumer on a loop takes it over, items wait in a plain
SimpleQueue, so blocking callers (the worker, tests, benches) pay what they always paid.

Items are the values themselves; `END` ends the stream, and an exception put in it is raised
to the consumer.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
END: Any = object()


class Channel:
    def __init__(self, pump: Callable[[Channel], None] | None = None) -> None:
        """`pump(channel)` runs before a blocking `get` waits: a producer that is fed by the
        calling thread itself (a model worker's replies, read on the loop that waits) feeds
        the channel there."""
        self._blocking: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pump = pump
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._ready: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._forward: Callable[[Any], None] | None = None

    def forward(self, fn: Callable[[Any], None]) -> None:
        """From now on hand every item to `fn` in the producer's thread, those waiting first, in
        order: a model worker sends a stream's tokens from the scheduler's thread this way,
        without waking a thread per token. `fn` must not raise."""
        with self._lock:
            while not self._blocking.empty():
                fn(self._blocking.get_nowait())
            self._forward = fn

    def put(self, item: Any) -> None:
        forward = self._forward  # set once and never unset: read without the lock, once per token
        if forward is not None:
            forward(item)
            return
        with self._lock:
            if self._forward is not None:
                self._forward(item)
                return
            if self._loop is None:
                self._blocking.put(item)
                return
            self._ready.append(item)
            waiter, self._waiter = self._waiter, None
            if waiter is None:  # the consumer is busy; it takes this item with the others
                return
            loop = self._loop
        if threading.get_ident() == self._loop_thread:  # put on the loop itself: no wake-up to send
            _wake(waiter)
            return
        try:
            loop.call_soon_threadsafe(_wake, waiter)
        except RuntimeError:  # the loop has closed (shutting down): nobody is listening
            pass

    def get(self, timeout: float | None = None) -> Any:
        """The next item, blocking (queue.Empty after `timeout`)."""
        if self._pump is not None and self._blocking.empty():
            self._pump(self)
        return self._blocking.get(timeout=timeout)

    def empty(self) -> bool:
        """Whether a blocking `get` would wait."""
        return self._blocking.empty()

    async def batch(self) -> list[Any]:
        """Every item ready now, waiting for one if there is none. Binds the channel to the
        running loop on the first call: from then on, `get` sees nothing."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._loop is None:
                    self._loop, self._loop_thread = loop, threading.get_ident()
                    while not self._blocking.empty():
                        self._ready.append(self._blocking.get_nowait())
                if self._ready:
                    items = list(self._ready)
                    self._ready.clear()
                    return items
                waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:  # cancelled while waiting
                        self._waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _same(item: Any) -> Any:
    return item


class Stream(Generic[T]):
    """A channel's items as an iterator (blocking) and an async iterator (on a loop): one of
    the two, once. `decode` turns what the producer put into the item (or END, or raises);
    `ended(early)` runs once the consumer is done, `early` when it stopped before the end (to
    tell the producer); `poll` runs between items (and every 50 ms while a blocking reader
    waits), to notice a cancel event."""

    def __init__(
        self, channel: Channel, decode: Callable[[Any], Any] = _same,
        ended: Callable[[bool], None] | None = None, poll: Callable[[], None] | None = None,
    ):
        self.channel = channel
        self._decode = decode
        self._ended = ended
        self._poll = poll
        self._sync: Generator[T, None, None] | None = None

    @property
    def plain(self) -> bool:
        """Whether the items are the channel's own, with nothing to run as they pass."""
        return self._ended is None and self._poll is None and self._decode is _same

    def _check(self, item: Any) -> Any:
        if item is END:
            return END
        if isinstance(item, BaseException):
            raise item
        return self._decode(item)

    # -- blocking ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._sync is None:
            self._sync = self._blocking()
        return next(self._sync)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    def _blocking(self) -> Generator[T, None, None]:
        finished = False
        try:
            while True:
                try:
                    item = self._check(self._next_blocking())
                except BaseException:
                    finished = True
                    raise
                if item is END:
                    finished = True
                    return
                yield item
        finally:
            if self._ended is not None:
                self._ended(not finished)

    def _next_blocking(self) -> Any:
        if self._poll is None:
            return self.channel.get()
        while True:
            self._poll()
            try:
                return self.channel.get(timeout=0.05)
            except queue.Empty:
                continue

    # -- on the event loop ---------------------------------------------------------------------

    async def __aiter__(self) -> AsyncGenerator[T, None]:
        finished = False
        try:
            while True:
                if self._poll is not None:
                    self._poll()
                for raw in await self.channel.batch():
                    try:
                        item = self._check(raw)
                    except BaseException:
                        finished = True
                        raise
                    if item is END:
                        finished = True
                        return
                    yield item
        finally:
            if self._ended is not None:
                self._ended(not finished)

