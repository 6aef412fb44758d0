"""Encoded events from producers (worker threads or tasks) to the event loop.

Events gather in one bounded batch under a lock; the loop is woken over an
anyio memory object stream and takes the whole batch at a time. A producer that
finds the loop parked waiting schedules one wake-up and carries on: every event
it adds before the loop runs leaves in the same batch, and while the loop is
busy sending, it takes the batch itself when it comes back. So a slow producer's
event leaves at once and a fast producer never waits for the loop; a full batch
makes it wait (backpressure) instead of growing memory.

The wake-up must not block the producer: ``from_thread.run_sync`` waits for the
loop, about 50 us here, and would cap a stream near 20 k events/s. anyio has no
public fire-and-forget call into the loop, so :func:`_call_soon` uses the
backend's own (asyncio's ``call_soon_threadsafe``, trio's ``run_sync_soon``)
through anyio's event loop token.

Nothing polls and nothing times out. A chunk is in ``_batch`` until the loop
takes it, and only the loop takes it, so a receiver cancelled at any point
(after it was woken, too) loses nothing and order is kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import suppress

import anyio
from anyio import (
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
    create_memory_object_stream,
    from_thread,
)
from anyio.lowlevel import EventLoopToken, checkpoint, current_token

from ._exceptions import JobCancelled

__all__ = ["Channel"]


def _call_soon(token: EventLoopToken) -> Callable[[Callable[[], None]], object]:
    """Schedule a callback in the loop from any thread, without waiting for it."""
    native = token.native_token
    for name in ("call_soon_threadsafe", "run_sync_soon"):  # asyncio, trio
        schedule = getattr(native, name, None)
        if callable(schedule):
            return schedule  # type: ignore[no-any-return]
    return lambda callback: from_thread.run_sync(callback, token=token)  # correct, slower


class Channel:
    """A bounded, ordered hand-off of byte chunks, closed by the producer side
    (no more chunks) or cancelled by the consumer side (nobody is listening).

    The bound is in bytes, which is what memory is: producers wait while the
    batch holds ``max_buffer_bytes`` or more. A chunk larger than the bound still
    goes through, alone.
    """

    def __init__(self, max_buffer_bytes: int) -> None:
        if max_buffer_bytes < 1:
            raise ValueError(f"max_buffer_bytes must be at least 1, got {max_buffer_bytes}")
        self._max = max_buffer_bytes
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._batch: list[bytes] = []
        self._producers_waiting = 0  # threads in _wait_for_room
        self._size = 0  # bytes in _batch
        self._waiting = False  # the loop is parked on the stream and nothing is in flight
        self._in_flight = False  # a delivery is scheduled and has not run yet
        self._stranded = False  # a receive was interrupted: a wake-up may wait in the buffer
        self._closed = False  # no more chunks will be added
        self._cancelled = False  # nobody is listening: chunks are dropped
        self._stopped = False  # producers must stop (cancelled, or ended early)
        self.numbered = 0  # how many chunks put_numbered has added
        self._space: anyio.Event | None = None
        self._call_soon = _call_soon(current_token())
        self._loop_thread = threading.get_ident()
        # Wake-ups only (chunks stay in _batch), one at most in flight: a buffer of one.
        self._send, self._receive = create_memory_object_stream[None](1)

    @property
    def cancelled(self) -> bool:
        """True once producers must stop: their next ``put`` raises :class:`JobCancelled`."""
        return self._stopped

    # -- producer side ---------------------------------------------------------

    def put(self, chunk: bytes) -> None:
        """Add a chunk from a worker thread, waiting while the batch is full.

        Raises :class:`JobCancelled` once nobody is listening any more.
        """
        with self._lock:
            if self._size >= self._max:
                self._wait_for_room()
            self._check_open()
            wake = self._append(chunk)
        if wake:
            self._call_soon(self._deliver)

    def put_numbered(self, template: bytes, payload: bytes) -> None:
        """Like :meth:`put`, for ``template % (n, payload)`` where ``n`` counts these
        chunks from 1: numbered under the same lock that orders them, so numbers
        follow the order on the wire even with several producer threads.
        """
        with self._lock:
            if self._size >= self._max:
                self._wait_for_room()
            self._check_open()
            wake = self._append(template % (self.numbered + 1, payload))
            self.numbered += 1
        if wake:
            self._call_soon(self._deliver)

    def _wait_for_room(self) -> None:
        if threading.get_ident() == self._loop_thread:
            return  # only the loop empties the batch: waiting here would freeze it for good
        self._producers_waiting += 1
        try:
            while self._size >= self._max and not self._stopped:
                self._not_full.wait()
        finally:
            self._producers_waiting -= 1

    async def aput(self, chunk: bytes) -> None:
        """Add a chunk from a task in the event loop, waiting while the batch is full."""
        await checkpoint()
        while True:
            with self._lock:
                if self._size < self._max or self._stopped:
                    self._check_open()
                    wake = self._append(chunk)
                    break
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()
        if wake:
            self._deliver()

    async def aput_many(self, chunks: Sequence[bytes]) -> None:
        """Add several chunks from the event loop as one batch, waiting while the
        batch is full (then they go in together, past the bound: a replay of a
        log is bounded by the log). One wake-up, so they leave in one send."""
        await checkpoint()
        while True:
            with self._lock:
                if self._size < self._max or self._stopped:
                    self._check_open()
                    wake = False
                    for chunk in chunks:
                        wake = self._append(chunk) or wake
                    break
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()
        if wake:
            self._deliver()

    def put_nowait(self, chunk: bytes) -> None:
        """Add a chunk from the event loop past the bound (a heartbeat, the last
        event); quietly does nothing once the channel is closed or cancelled."""
        with self._lock:
            if self._closed or self._cancelled:
                return
            wake = self._append(chunk)
        if wake:
            self._deliver()

    def close(self, last: bytes | None = None) -> None:
        """End the channel from the event loop, after an optional last chunk."""
        if last is not None:
            self.put_nowait(last)
        with self._lock:
            self._closed = True
            in_flight = self._in_flight
        if not in_flight:  # else the delivery in flight closes the stream after it
            self._send.close()

    def end(self, last: Callable[[int], bytes | None]) -> None:
        """From the loop: stop the producers now, but deliver what they have put
        so far and then ``last(numbered)`` (a stream ended early, e.g. at
        shutdown). It is called once no producer can number another chunk, so
        the last event's id cannot clash with one of theirs."""
        with self._lock:
            if self._closed or self._cancelled:
                return
            self._stopped = True
            self._not_full.notify_all()
            numbered = self.numbered
        self._wake_async_producer()
        self.close(last(numbered))

    def _check_open(self) -> None:
        """Under the lock, for producers: refuse a chunk nobody will send."""
        if self._cancelled:
            raise JobCancelled("the event stream is closed")
        if self._stopped:
            raise JobCancelled("the event stream was ended early")
        if self._closed:
            raise JobCancelled("the event stream has ended: the job returned before this report")

    def _append(self, chunk: bytes) -> bool:
        """Append under the lock; True if the caller must wake the parked loop."""
        self._batch.append(chunk)
        self._size += len(chunk)
        if not self._waiting:
            return False
        self._waiting = False
        self._in_flight = True
        return True

    def _deliver(self) -> None:
        """In the loop: wake the parked receiver, which takes the batch itself.

        Only a wake-up crosses the stream, never the batch: a receiver cancelled
        just after it was woken (a server's graceful timeout) drops what it was
        handed, so the chunks must stay in ``_batch`` until a receiver takes them.
        """
        with self._lock:
            self._in_flight = False
            if self._cancelled:
                return
            closed = self._closed
        with suppress(WouldBlock):  # a stale wake-up waits in the buffer: one is enough
            self._send.send_nowait(None)
        if closed:
            self._send.close()

    def _take(self) -> list[bytes]:
        """Under the lock: empty the batch and let waiting producers go on."""
        batch, self._batch, self._size = self._batch, [], 0
        if self._producers_waiting:  # notify_all costs microseconds even with nobody waiting
            self._not_full.notify_all()
        return batch

    def _wake_async_producer(self) -> None:
        if self._space is not None:
            self._space.set()
            self._space = None

    # -- consumer side (event loop) -------------------------------------------

    async def receive(self) -> list[bytes]:
        """Wait for, and take, every chunk ready so far.

        Raises :class:`anyio.EndOfStream` once the channel is closed and drained,
        or cancelled.
        """
        with self._lock:
            batch = self._take_ready()
            if batch is None:
                self._waiting = True
        if batch is None:
            try:
                await self._receive.receive()
            except (EndOfStream, ClosedResourceError):
                self._receive.close()
                raise EndOfStream from None
            except BaseException:
                # Interrupted: the chunks are still in the batch. A wake-up in
                # flight may land in the stream's buffer; the next look drops it.
                with self._lock:
                    self._waiting = False
                    self._stranded = True
                raise
            with self._lock:
                batch = self._take()  # empty if a direct take came first
        self._wake_async_producer()
        return batch

    def _take_ready(self) -> list[bytes] | None:
        """Under the lock: the batch, if anything is in it."""
        if self._stranded:  # only after an interrupted receive: keep the hot path free
            self._stranded = False
            with suppress(WouldBlock, EndOfStream, ClosedResourceError):
                self._receive.receive_nowait()  # a stale wake-up
        return self._take() if self._batch else None

    def take_rest(self) -> list[bytes]:
        """From the loop, when the stream must end now: stop the producers and
        take every chunk not yet received, in order."""
        with self._lock:
            self._stopped = True
            rest = []
            while (batch := self._take_ready()) is not None:
                rest += batch
        self._wake_async_producer()
        return rest

    def cancel(self) -> None:
        """Stop every producer: their next ``put`` raises :class:`JobCancelled`."""
        with self._lock:
            self._cancelled = self._stopped = True
            self._take()
        self._receive.close()
        self._send.close()
        self._wake_async_producer()
