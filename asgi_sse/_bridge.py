"""Encoded events from producers (worker threads or tasks) to the event loop.

Chunks gather in one bounded batch under a lock, and the loop takes the whole
batch at a time. A producer that finds the loop parked schedules one wake-up
and carries on: every chunk it adds before the loop runs leaves in the same
batch, and while the loop is busy sending, it takes the batch itself when it
comes back. So a slow producer's chunk leaves at once and a fast producer never
waits for the loop; a full batch makes it wait (backpressure) instead of
growing memory.

The wake-up is a bare :class:`anyio.Event` set from the loop's own callback
queue, never the chunks: a consumer cancelled right after it was woken (a
server's graceful timeout cancels tasks natively) loses nothing, because a
chunk stays in the batch until the consumer takes it. It must not block the
producer either: ``from_thread.run_sync`` waits for the loop, about 50 us, and
would cap a stream near 20 k events/s. anyio has no public fire-and-forget call
into the loop, so :func:`_call_soon` uses the backend's own (asyncio's
``call_soon_threadsafe``, trio's ``run_sync_soon``) through anyio's token.

Numbering is not the bridge's business: it hands over bytes, in order (a
coalescing channel drops superseded ones: see ``_latest``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from anyio import EndOfStream, Event, from_thread, lowlevel
from anyio.lowlevel import RunVar, current_token

from ._exceptions import JobCancelled
from ._latest import Latest

__all__ = ["Channel"]

_Schedule = Callable[[Callable[[], object]], object]
_loop_var: RunVar[tuple[_Schedule, Callable[[], Event]]] = RunVar("asgi_sse.bridge")


def _for_this_loop() -> tuple[_Schedule, Callable[[], Event]]:
    """How to schedule a callback in the current loop from any thread without
    waiting, and the backend's own :class:`anyio.Event` class, looked up once
    per loop: ``Event()`` finds its backend on every call, and the bridge makes
    one per wake-up."""
    try:
        return _loop_var.get()
    except LookupError:
        pass
    token = current_token()
    native = token.native_token
    for name in ("call_soon_threadsafe", "run_sync_soon"):  # asyncio, trio
        schedule = getattr(native, name, None)
        if callable(schedule):
            break
    else:  # another backend: correct, slower
        schedule = lambda callback: from_thread.run_sync(callback, token=token)  # noqa: E731
    found = (schedule, type(Event()))
    _loop_var.set(found)
    return found


_ENDED = "the event stream has ended: the job returned before this report"


class Channel:
    """A bounded, ordered hand-off of byte chunks, closed by the producer side
    (no more chunks) or cancelled by the consumer side (nobody is listening).

    The bound is in bytes, which is what memory is: producers wait while the
    batch holds ``max_buffer_bytes`` or more. A chunk larger than the bound still
    goes through, alone.
    """

    __slots__ = (
        "_batch",
        "_call_soon",
        "_closed",
        "_event",
        "_latest",
        "_lock",
        "_loop_thread",
        "_max",
        "_parked",
        "_room",
        "_size",
        "_space",
        "_stop",
        "_waiters",
        "last",
    )

    def __init__(self, max_buffer_bytes: int, *, coalesce: bool = False) -> None:
        self._max = max_buffer_bytes
        self._latest = Latest() if coalesce else None
        self._lock = threading.Lock()
        self._batch: list[bytes] = []
        self._size = 0  # bytes in _batch
        self._parked: Event | None = None  # the consumer waits on it for the next chunk
        self._stop: str | None = None  # why producers must stop; None while they may put
        self._closed = False  # nothing comes after the batch
        self.last: bytes | None = None  # the last chunk it closed with: how its run ended
        self._room: threading.Condition | None = None  # made when a thread first waits
        self._waiters = 0  # threads waiting for room
        self._space: Event | None = None  # an async producer waits for room
        self._call_soon, self._event = _for_this_loop()
        self._loop_thread = threading.get_ident()

    @property
    def cancelled(self) -> bool:
        """True once producers must stop: their next ``put`` raises :class:`JobCancelled`."""
        return self._stop is not None

    # -- producer side ---------------------------------------------------------

    def put(self, chunk: bytes, key: str | None = None) -> None:
        """Add a chunk from a worker thread, waiting while the batch is full (on a
        coalescing channel, a chunk with a ``key`` never waits: it supersedes;
        elsewhere the key means nothing).

        Raises :class:`JobCancelled` once nobody is listening any more.
        """
        with self._lock:
            if key is not None and self._latest is not None:
                if self._stop is not None:
                    raise JobCancelled(self._stop)
                self._add(chunk, key)
            else:
                if self._stop is not None or self._size >= self._max:
                    self._wait_for_room()
                self._batch.append(chunk)  # (what _add does, inline: this is the hot path)
                self._size += len(chunk)
            parked = self._parked
            if parked is None:
                return
            self._parked = None
        self._call_soon(parked.set)

    def _add(self, chunk: bytes, key: str | None) -> None:
        """Under the lock: add, superseding the key's unsent chunk if full (coalescing)."""
        latest = self._latest
        if key is not None and latest is not None:
            if self._size >= self._max:
                self._size -= latest.supersede(self._batch, key)
            latest.places[key] = len(self._batch)
        self._batch.append(chunk)
        self._size += len(chunk)

    def _wait_for_room(self) -> None:
        """Under the lock: wait while the batch is full; raise once stopped."""
        if self._stop is None and threading.get_ident() != self._loop_thread:
            # (Only the loop empties the batch: on it, waiting would freeze it for good.)
            if self._room is None:
                self._room = threading.Condition(self._lock)
            self._waiters += 1
            try:
                while self._size >= self._max and self._stop is None:
                    self._room.wait()
            finally:
                self._waiters -= 1
        if self._stop is not None:
            raise JobCancelled(self._stop)

    async def aput(self, chunk: bytes) -> None:
        """Add a chunk from a task in the event loop, waiting while the batch is full."""
        await self.aput_many((chunk,))

    async def aput_many(
        self, chunks: Sequence[bytes], keys: Sequence[str | None] | None = None
    ) -> None:
        """Add chunks from the event loop as one batch (one wake-up: one send),
        waiting while the batch is full, then past the bound (a log's replay is
        bounded by the log); it yields after, so the receiver goes first. Coalescing,
        ``keys`` (None: must arrive) supersede as :meth:`put`'s: all keyed, no wait."""
        if keys is not None and len(keys) != len(chunks):
            raise ValueError(f"{len(keys)} keys for {len(chunks)} chunks")
        await lowlevel.checkpoint_if_cancelled()
        keyed = keys if self._latest is not None else None
        while True:
            with self._lock:
                if self._stop is not None:
                    raise JobCancelled(self._stop)
                if keyed is None:
                    if self._size < self._max:  # (a replay's pages: no call per chunk)
                        self._batch += chunks
                        self._size += sum(map(len, chunks))
                        break
                elif self._size < self._max or None not in keyed:
                    for chunk, key in zip(chunks, keyed, strict=True):
                        self._add(chunk, key)
                    break
            if self._space is None:
                self._space = Event()
            await self._space.wait()
        self._wake()
        await lowlevel.cancel_shielded_checkpoint()

    def put_nowait(self, chunk: bytes) -> None:
        """Add a chunk from the event loop past the bound (a heartbeat, a place in
        line); quietly does nothing once the channel is closed."""
        with self._lock:
            if self._closed:
                return
            self._add(chunk, None)
        self._wake()

    def close(self, last: bytes | None = None) -> None:
        """From the loop: no more chunks, after an optional ``last`` one."""
        with self._lock:
            if self._closed:
                return
            if last is not None:
                self._batch.append(last)
            self.last = last
            self._closed = True
            self._stop = self._stop or _ENDED
        self._wake()

    def end(self, last: Callable[[], bytes | None], *, early: bool = True) -> None:
        """From the loop: stop the producers now, deliver what they put, then
        ``last()``: a stream ended early (shutdown), or (``early=False``) a job's
        own end. ``last`` is called once no producer can add a chunk (one waiting
        for room is refused first): no chunk of theirs overtakes it or takes its id."""
        if self._halt("the event stream was ended early" if early else _ENDED):
            self.close(last())

    @property
    def closed(self) -> bool:
        """True once the last chunk is in: nothing comes after the batch."""
        return self._closed

    def take_rest(self) -> list[bytes]:
        """From the loop, when the stream must end now: stop the producers and
        take every chunk not yet received, in order."""
        self._halt("the event stream was ended early")
        with self._lock:
            return self._take()

    def cancel(self) -> None:
        """Nobody listens: drop what waits and stop every producer (their next
        ``put`` raises :class:`JobCancelled`); the consumer sees the end."""
        self._halt("the event stream is closed")
        with self._lock:
            self._closed = True
            self._take()
        self._wake()

    def _halt(self, reason: str) -> bool:
        """Stop the producers; False if the channel had already ended."""
        with self._lock:
            if self._closed:
                return False
            self._stop = self._stop or reason
            if self._room is not None:
                self._room.notify_all()
        if self._space is not None:
            self._space.set()
        return True

    def _wake(self) -> None:
        """In the loop: wake the parked consumer, if any."""
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.set()

    def _take(self) -> list[bytes]:
        """Under the lock: empty the batch and let waiting producers go on."""
        batch, self._batch, self._size = self._batch, [], 0
        if self._waiters:  # notify_all costs microseconds even with nobody waiting
            self._room.notify_all()  # type: ignore[union-attr]
        return batch if self._latest is None else self._latest.sent(batch)

    # -- consumer side (event loop) -------------------------------------------

    async def receive(self) -> list[bytes]:
        """Wait for, and take, every chunk ready so far; :class:`anyio.EndOfStream`
        once the channel is closed and drained, or cancelled."""
        while True:
            with self._lock:
                if self._batch:  # (what _take does, inline: this is the hot path)
                    batch, self._batch, self._size = self._batch, [], 0
                    if self._waiters:
                        self._room.notify_all()  # type: ignore[union-attr]
                    if self._latest is not None:
                        batch = self._latest.sent(batch)
                    break
                if self._closed:
                    raise EndOfStream
                parked = self._parked = self._event()
            try:
                await parked.wait()
            except BaseException:
                with self._lock:  # interrupted: the chunks stay in the batch
                    if self._parked is parked:
                        self._parked = None
                raise
        if self._space is not None:
            space, self._space = self._space, None
            space.set()
        return batch
