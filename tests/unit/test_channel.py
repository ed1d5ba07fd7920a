"""channel.Stream: a producer thread's items read blocking, or awaited on an event loop with
no thread in between (how streamed tokens reach the server's loop)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nexa.channel import END, Channel, Stream


def test_read_blocking_in_order_then_end() -> None:
    channel = Channel()
    ended: list[bool] = []
    for item in (1, 2, 3, END):
        channel.put(item)
    assert list(Stream(channel, ended=ended.append)) == [1, 2, 3]
    assert ended == [False]


def test_handed_to_the_loop_keeps_order_across_the_switch() -> None:
    # Items put before the loop takes the stream over come first; the rest arrive from a thread
    # while the consumer awaits.
    channel = Channel()
    channel.put(0)
    channel.put(1)

    def produce() -> None:
        for i in range(2, 500):
            channel.put(i)
        channel.put(END)

    async def consume() -> list[int]:
        threading.Thread(target=produce).start()
        return [x async for x in Stream[int](channel)]

    assert asyncio.run(consume()) == list(range(500))


def test_an_error_put_in_the_stream_is_raised_on_the_loop() -> None:
    channel = Channel()
    channel.put("a")
    channel.put(ValueError("the engine failed"))

    async def consume() -> list[str]:
        return [x async for x in Stream[str](channel)]

    with pytest.raises(ValueError, match="the engine failed"):
        asyncio.run(consume())


def test_a_consumer_that_leaves_early_tells_the_producer() -> None:
    channel = Channel()
    ended: list[bool] = []
    for i in range(5):
        channel.put(i)

    async def consume() -> None:
        items = Stream[int](channel, ended=ended.append).__aiter__()
        assert await items.__anext__() == 0
        await items.aclose()

    asyncio.run(consume())
    assert ended == [True]
    again = Channel()
    again.put(1)
    blocking = Stream(again, ended=ended.append)
    next(blocking)
    blocking.close()
    assert ended == [True, True]


def test_forwarded_items_keep_their_order_across_the_switch() -> None:
    # A model worker forwards a scheduler's stream to its socket: items put before `forward`
    # go first, then each put reaches the function in the producer's thread, in order.
    channel = Channel()
    channel.put(0)
    channel.put(1)
    got: list[object] = []
    started = threading.Event()

    def produce() -> None:
        started.set()
        for i in range(2, 2000):
            channel.put(i)
        channel.put(END)

    producer = threading.Thread(target=produce)
    producer.start()
    started.wait()
    channel.forward(got.append)
    producer.join()
    assert got == [*range(2000), END]
    assert Stream(channel).plain and not Stream(channel, decode=str).plain
