"""App-wide policy shared by every event stream of an app: the worker-thread
limiter, admission (a cap on running streams, and a waiting line told its
place), live counters, and ending every stream at shutdown.

It knows nothing of ASGI messages: the middleware puts a hub in each request's
scope, and a stream that finds one there follows it. A stream without a hub
uses its own defaults, so nothing here is on the path of an app that does not
install the middleware.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import monotonic
from typing import Any, Protocol

from anyio import CapacityLimiter, Event, current_time, move_on_after

from ._observe import Observer, Observers, StreamRecord, news

__all__ = ["SCOPE_KEY", "Governed", "Hub", "Stats", "Ticket"]

logger = logging.getLogger("asgi_sse")

#: Where the middleware puts its hub in a request's scope.
SCOPE_KEY = "asgi_sse.hub"


@dataclass(frozen=True)
class Stats:
    """A snapshot of the middleware's counters, plain data to serve or log
    (``dataclasses.asdict(stats)`` or ``msgspec.json.encode(stats)``)."""

    open_streams: int  #: streams whose response is running, queued or not
    queued_jobs: int  #: streams waiting for a slot (told their place by ``queued`` events)
    running_jobs: int  #: streams whose job holds a slot
    events_sent: int  #: events the server took (its send returned), heartbeats not counted
    bytes_sent: int  #: bytes of events and heartbeats the server took
    disconnects: int  #: clients that left before their stream ended
    send_timeouts: int  #: clients dropped because they stopped reading
    refused: int  #: streams refused with 503 (full, or shutting down)


def _nothing_yet() -> None:
    """A stream admitted but not yet started has nothing to end."""


class Ticket:
    """One admitted stream (or resumable job): how to end it early, and its
    place in line."""

    __slots__ = (
        "admitted",
        "end",
        "holding",
        "job_id",
        "on_position",
        "position",
        "record",
        "turn",
        "waited",
    )

    def __init__(self, job_id: str | None = None) -> None:
        self.end: Callable[[], None] = _nothing_yet
        self.job_id = job_id  # a resumable job's, for its observers
        self.admitted = 0.0
        self.record: StreamRecord | None = None  # what observers see of its stream
        self.waited: float | None = None  # when it began to wait for a slot
        self.turn: Event | None = None  # set when a slot is handed over
        self.holding = False  # its job holds a slot
        self.position = 0
        self.on_position: Callable[[int], None] | None = None


class Governed(Protocol):
    """Work that runs under an app's policy without a request of its own (the
    resumable jobs of :mod:`asgi_sse.resumable`): the middleware hands it its hub."""

    def govern_by(self, hub: Hub) -> None: ...


class Hub:
    """Admission and shutdown for all streams of one app (see the middleware)."""

    def __init__(
        self,
        *,
        max_streams: int | None,
        queue: int,
        threads: int,
        retry_after: int,
        observers: Sequence[Observer] = (),
    ) -> None:
        if max_streams is not None and max_streams < 1:
            raise ValueError(f"max_streams must be at least 1 or None, got {max_streams!r}")
        if queue < 0:
            raise ValueError(f"queue must not be negative, got {queue!r}")
        if queue and max_streams is None:
            raise ValueError("a queue needs max_streams: without a cap nobody ever waits")
        if retry_after < 0:
            raise ValueError(f"retry_after must not be negative, got {retry_after!r}")
        self.max_streams = max_streams
        self.queue = queue
        self.retry_after = retry_after
        # Created outside an event loop, anyio binds it to the loop that first uses it.
        self.limiter = CapacityLimiter(threads)
        self.closing = False
        self._open: set[Ticket] = set()
        self._draining: set[Ticket] = set()  # streams gone whose jobs still hold a slot
        self._deadline: float | None = None  # when shutdown stops waiting
        self._waiting: deque[Ticket] = deque()
        self._running = 0
        self._idle: Event | None = None
        self.events_sent = 0
        self.bytes_sent = 0
        self.observers = Observers(observers)
        self.disconnects = 0
        self.send_timeouts = 0
        self.refused = 0
        self.observers.attach(self.stats)  # last: stats() works from here

    def stats(self) -> Stats:
        return Stats(
            open_streams=len(self._open),
            queued_jobs=len(self._waiting),
            running_jobs=self._running,
            events_sent=self.events_sent,
            bytes_sent=self.bytes_sent,
            disconnects=self.disconnects,
            send_timeouts=self.send_timeouts,
            refused=self.refused,
        )

    def full(self) -> bool:
        """Would a new stream be refused now?"""
        if self.closing:
            return True
        if self.max_streams is None:
            return False
        return len(self._open) >= self.max_streams + self.queue

    def refuses(self) -> bool:
        """Would a new stream be refused now? A yes is counted."""
        if self.full():
            self.refused += 1
            return True
        return False

    def admit(self) -> Ticket | None:
        """Register a stream, or count a refusal and return None. Shutdown
        calls the ticket's ``end`` (set once the stream runs)."""
        if self.refuses():
            return None
        ticket = Ticket()
        ticket.admitted = monotonic()
        self._open.add(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        self._open.discard(ticket)
        if ticket.record is not None:
            self.observers.closed(ticket.record)
        if ticket.holding:
            self._draining.add(ticket)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not (self._open or self._draining) and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def idle(self) -> None:
        """Return once no stream is open and no stream's job holds a slot.

        Both: a stream can leave before its job returns (a client that left, a
        server that cancelled the request natively, which no anyio shield stops),
        and shutdown must wait for the job's thread too. (Resumable jobs outlive
        their requests: their ``Jobs`` waits for them.)
        """
        while self._open or self._draining:
            if self._idle is None:
                self._idle = Event()
            await self._idle.wait()

    @asynccontextmanager
    async def slot(self, ticket: Ticket, on_position: Callable[[int], None]) -> AsyncIterator[None]:
        """Hold one of ``max_streams`` slots while the job runs; first come, first served.

        While it waits, ``on_position(n)`` is called whenever its place changes
        (1 is next).
        """
        if self.max_streams is None or (self._running < self.max_streams and not self._waiting):
            self._running += 1
        else:
            ticket.turn = Event()
            ticket.on_position = on_position
            ticket.waited = monotonic()
            self._waiting.append(ticket)
            self._announce()
            try:
                await ticket.turn.wait()
            except BaseException:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                    self._announce()
                else:  # the slot was handed over as we were cancelled: pass it on
                    self._release()
                raise
        ticket.holding = True
        try:
            yield
        finally:
            ticket.holding = False
            self._draining.discard(ticket)
            self._release()
            self._maybe_idle()

    def _release(self) -> None:
        if self._waiting:  # hand the slot over: the running count stays the same
            turn = self._waiting.popleft().turn
            assert turn is not None
            turn.set()
            self._announce()
        else:
            self._running -= 1

    def _announce(self) -> None:
        for place, ticket in enumerate(self._waiting, start=1):
            if ticket.position != place and ticket.on_position is not None:
                ticket.position = place
                ticket.on_position(place)

    # -- what is counted, and what observers see (see _observe) ------------------

    def running(self, ticket: Ticket, request: Mapping[str, Any], job_id: str | None) -> None:
        """An admitted stream runs: open its record, if anyone observes."""
        if self.observers:
            ticket.record = self.observers.opened(request, job_id, ticket.admitted)

    def sent(self, batch: list[bytes], events: int, size: int, ticket: Ticket | None) -> None:
        """A batch the server took, ``size`` bytes of ``events`` (not heartbeats):
        counted per batch, never per event."""
        self.events_sent += events
        self.bytes_sent += size
        record = None if ticket is None else ticket.record
        if record is not None:
            if not batch[-1].startswith(b":"):  # a heartbeat says nothing of the end
                record.last = batch[-1]
            if record.first_event is None and any(map(news, batch)):
                record.first_event = monotonic()

    async def shutdown(self, grace: float) -> None:
        """Refuse new streams, end every open one with a final event (which stops
        its job), and wait up to ``grace`` seconds for them to finish. Called
        again (a signal, then the lifespan), it waits only for what is left."""
        first = self._deadline is None
        if self._deadline is None:
            self.closing = True
            self._deadline = current_time() + grace
            for ticket in list(self._open):
                ticket.end()
        with move_on_after(self._deadline - current_time()):
            await self.idle()
        if first and (self._open or self._draining):
            logger.warning(
                "%d event stream(s) open or finishing %ss after shutdown began: their"
                " jobs have not returned (a job must report or check on_progress.cancelled)",
                len(self._open | self._draining),
                grace,
            )
