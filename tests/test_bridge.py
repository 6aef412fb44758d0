"""The thread-to-loop hand-off: complete, ordered, bounded, and stoppable."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
from anyio import EndOfStream, to_thread
from conftest import BOUND

from asgi_sse import JobCancelled
from asgi_sse._bridge import Channel
from asgi_sse._run import RunOptions

pytestmark = pytest.mark.anyio


async def drain(channel: Channel) -> list[list[bytes]]:
    batches = []
    while True:
        try:
            batches.append(await channel.receive())
        except EndOfStream:
            return batches


async def test_a_fast_producer_loses_nothing_and_never_exceeds_the_bound() -> None:
    channel = Channel(max_buffer_bytes=16 * 8)  # sixteen 8-byte chunks
    count = 20_000

    def produce() -> None:
        for i in range(count):
            channel.put(b"%07d," % i)

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await to_thread.run_sync(produce)
            channel.close(b"end")

        tg.start_soon(run)
        batches = await drain(channel)

    chunks = [chunk for batch in batches for chunk in batch]
    assert chunks == [b"%07d," % i for i in range(count)] + [b"end"]
    assert max(len(batch) for batch in batches) <= 16 + 1  # + the last event
    # The producer outran the loop, filled the batch and waited: that is the bound at work.
    assert any(len(batch) == 16 for batch in batches)


async def test_a_slow_producers_event_is_handed_over_at_once() -> None:
    channel = Channel(max_buffer_bytes=1024)
    acknowledged = [threading.Event() for _ in range(5)]

    def produce() -> None:
        for i, ack in enumerate(acknowledged):
            channel.put(b"%d" % i)
            # Event i must reach the loop without a later put to push it along.
            assert ack.wait(BOUND), f"event {i} was held back"

    async with anyio.create_task_group() as tg:
        tg.start_soon(to_thread.run_sync, produce)
        for i, ack in enumerate(acknowledged):
            assert await channel.receive() == [b"%d" % i]
            ack.set()
    channel.close()
    with pytest.raises(EndOfStream):
        await channel.receive()


async def test_cancel_wakes_a_producer_waiting_on_a_full_batch() -> None:
    channel = Channel(max_buffer_bytes=2)  # two 1-byte chunks
    outcome: list[str] = []
    blocked = threading.Event()

    def produce() -> None:
        channel.put(b"1")
        channel.put(b"2")
        blocked.set()
        try:
            channel.put(b"3")  # full: waits until the loop takes the batch, or cancels
        except JobCancelled:
            outcome.append("cancelled")
        try:
            channel.put(b"4")
        except JobCancelled:
            outcome.append("still cancelled")

    async with anyio.create_task_group() as tg:
        tg.start_soon(to_thread.run_sync, produce)
        await to_thread.run_sync(blocked.wait, BOUND)
        channel.cancel()
    assert outcome == ["cancelled", "still cancelled"]
    assert channel.cancelled


async def test_a_chunk_larger_than_the_bound_still_goes_through_alone() -> None:
    channel = Channel(max_buffer_bytes=10)
    big = b"x" * 100

    def produce() -> None:
        channel.put(big)
        channel.put(b"small")  # waits until the big one is taken

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await to_thread.run_sync(produce)
            channel.close()

        tg.start_soon(run)
        batches = await drain(channel)
    assert batches == [[big], [b"small"]]


async def test_a_thread_that_reports_after_the_end_is_told_to_stop() -> None:
    channel = Channel(max_buffer_bytes=4)
    channel.close()
    with pytest.raises(JobCancelled, match="the job returned before this report"):
        await to_thread.run_sync(channel.put, b"late")
    with pytest.raises(EndOfStream):
        await channel.receive()


async def test_many_producer_threads_keep_their_own_order() -> None:
    channel = Channel(max_buffer_bytes=64)
    threads, per_thread = 4, 2_000

    def produce(name: int) -> None:
        for i in range(per_thread):
            channel.put(b"%d:%d" % (name, i))

    async def run() -> None:
        async with anyio.create_task_group() as producers:
            for name in range(threads):
                producers.start_soon(to_thread.run_sync, produce, name)
        channel.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        batches = await drain(channel)
    chunks = [chunk for batch in batches for chunk in batch]
    for name in range(threads):
        mine = [c for c in chunks if c.startswith(b"%d:" % name)]
        assert mine == [b"%d:%d" % (name, i) for i in range(per_thread)]


async def test_an_async_producer_is_held_to_the_bound_too() -> None:
    channel = Channel(max_buffer_bytes=6)  # three 2-byte chunks

    async def produce() -> None:
        for i in range(100):
            await channel.aput(b"%02d" % i)
        channel.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        batches = []
        while True:
            try:
                batches.append(await channel.receive())
            except EndOfStream:
                break
            await anyio.sleep(0)  # a slow consumer: the producer gets ahead
    assert [c for b in batches for c in b] == [b"%02d" % i for i in range(100)]
    assert max(map(len, batches)) <= 3


@pytest.mark.parametrize("bound", [0, -1])
def test_the_bound_must_be_positive_and_is_checked_once_where_options_are(bound: int) -> None:
    with pytest.raises(ValueError, match="max_buffer_bytes must be at least 1"):
        RunOptions(max_buffer_bytes=bound)


@pytest.mark.parametrize("bound", [1.5, True, "1"])
def test_the_bound_is_a_number_of_bytes(bound: object) -> None:
    with pytest.raises(TypeError, match="max_buffer_bytes must be an int"):
        RunOptions(max_buffer_bytes=bound)  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_receiver_cancelled_just_after_it_was_woken_loses_nothing() -> None:
    """asyncio servers cancel the app's task natively (``task.cancel()``: a
    graceful timeout), which anyio cannot see coming: in the same instant a
    delivery wakes it, the wake-up is lost, but what it was woken for must still
    be taken, in order."""
    channel = Channel(1024)
    parked = anyio.Event()

    async def receive() -> None:
        parked.set()
        await channel.receive()

    task = asyncio.ensure_future(receive())
    await parked.wait()
    await anyio.lowlevel.checkpoint()  # it is parked on the stream now
    channel.put_nowait(b"one")  # wakes it...
    task.cancel()  # ...and cancels it before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    channel.put_nowait(b"two")
    try:
        assert channel.take_rest() == [b"one", b"two"]
    finally:
        channel.cancel()
