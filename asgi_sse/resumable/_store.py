"""Where resumable jobs keep their logs: the interface every backend implements,
and the in-memory backend.

A job's log is a sequence of encoded events numbered 1, 2, 3... by its one
publisher, ended by a terminal event whose id the publisher records with
:meth:`Backend.finish`. Watchers read it with a cursor (:meth:`Backend.read`
returns the events after an id), so replay and live delivery are one read
loop: there is no moment between "history" and "subscription" in which an
event could fall, and no event is read twice.

A third backend (NATS JetStream, Postgres with LISTEN/NOTIFY) implements the
eight methods of :class:`Backend`; ``tests/test_store.py`` runs the same
contract tests against every backend.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from anyio import Event, current_time, move_on_after, sleep

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    P = ParamSpec("P")

logger = logging.getLogger("asgi_sse")
T = TypeVar("T")

#: The first and the longest pause between attempts to reach a backend.
BACKOFF = (0.05, 1.0)

__all__ = [
    "Backend",
    "BackendUnavailable",
    "JobExists",
    "JobInfo",
    "JobLost",
    "MemoryBackend",
    "Page",
    "retrying",
]

State = Literal["pending", "running", "ended", "lost"]


class JobExists(Exception):
    """A job with this id already exists (or already has a publisher)."""


class JobLost(Exception):
    """The job is gone: forgotten, or its publisher died before the end."""


class BackendUnavailable(Exception):
    """The backend cannot be reached right now; the caller retries."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What a reconnecting client's answer depends on."""

    #: pending (created, no publisher yet), running, ended, or lost (its
    #: publisher went away before the end).
    state: State
    #: The newest event's id (0 before the first).
    last_id: int
    #: The terminal event's id, once the job has ended.
    end_id: int | None


@dataclass(frozen=True, slots=True)
class Page:
    """Events after a cursor, oldest first, and the terminal id if known."""

    events: Sequence[tuple[int, bytes]]
    end_id: int | None


class Backend(Protocol):
    """Storage and notification for resumable jobs' logs.

    One publisher per job appends; any number of watchers, in any process the
    backend reaches, read. Methods raise :class:`BackendUnavailable` when the
    backend cannot be reached: callers retry, and nothing is lost, because
    appends are idempotent by id and reads are by cursor.
    """

    async def create(self, job_id: str, keep: float) -> None:
        """Record a new, pending job, forgotten after ``keep`` seconds without a
        publisher. Raises :class:`JobExists`."""

    def publishing(self, job_id: str) -> AbstractAsyncContextManager[None]:
        """Be the job's one publisher while inside. Raises :class:`JobExists` if
        it has one, :class:`JobLost` if it is unknown. Leaving without
        :meth:`finish` marks the job lost."""

    async def append(self, job_id: str, events: Sequence[tuple[int, bytes]], first: int) -> None:
        """Add events (ids consecutive, after the last) and drop those before
        ``first``. Appending ids already there is a no-op, so a retry is safe."""

    async def finish(self, job_id: str, end_id: int, keep: float) -> None:
        """Mark ``end_id`` (already appended) terminal; forget the job after ``keep`` seconds."""

    async def info(self, job_id: str) -> JobInfo | None:
        """The job's state, or None if it is unknown or forgotten."""

    async def read(self, job_id: str, after: int) -> Page:
        """Wait for events after id ``after`` (or the end), and return those kept.

        May return an empty page without the end (a backend waits in bounded
        steps); raises :class:`JobLost` once the job is gone.
        """

    def watching(self, job_id: str) -> AbstractAsyncContextManager[None]:
        """Count as one of the job's watchers while inside."""

    async def wait_unwatched(self, job_id: str, grace: float) -> None:
        """Return once the job has had no watcher for ``grace`` seconds."""


async def retrying(call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Await ``call`` until the backend answers: its operations are idempotent."""
    delay, longest = BACKOFF
    while True:
        try:
            return await call(*args, **kwargs)
        except BackendUnavailable as exc:
            logger.warning("job backend unavailable (%s); retrying in %.2fs", exc, delay)
        await sleep(delay)  # a pause between attempts, not a wait for an event
        delay = min(delay * 2, longest)


class _Log:
    __slots__ = (
        "changed",
        "end_id",
        "events",
        "expires",
        "keep",
        "last_id",
        "presence",
        "state",
        "watchers",
    )

    def __init__(self, keep: float) -> None:
        self.keep = keep  # how long it is kept without a publisher
        self.events: deque[tuple[int, bytes]] = deque()
        self.last_id = 0
        self.end_id: int | None = None
        self.state: State = "pending"
        self.expires = 0.0  # when to forget it, unless it is running
        self.watchers = 0
        self.changed = Event()  # replaced (after being set) on every append and state change
        self.presence = Event()  # likewise, whenever the number of watchers changes

    def notify(self) -> None:
        self.changed.set()
        self.changed = Event()


class MemoryBackend:
    """Logs in this process's memory: the default, with nothing to set up.

    Jobs are visible to this process only, so with several server processes a
    client must come back to the same one (or use a shared backend such as
    :class:`asgi_sse.resumable.redis.RedisBackend`). Must be used from one event loop.
    ``clock`` tells the time its logs expire by (tests pass one they can advance).
    """

    def __init__(self, *, clock: Callable[[], float] = current_time) -> None:
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._expiry: list[tuple[float, str]] = []  # (when, job id): a heap, checked lazily

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            log = self._logs.get(job_id)
            if log is not None and log.state != "running" and log.expires <= now:
                del self._logs[job_id]
                log.notify()  # watchers find it gone

    def _log(self, job_id: str) -> _Log:
        self._forget_expired()
        log = self._logs.get(job_id)
        if log is None:
            raise JobLost(f"no job {job_id!r}")
        return log

    def _expire_in(self, log: _Log, job_id: str, keep: float) -> None:
        log.expires = self._clock() + keep
        heapq.heappush(self._expiry, (log.expires, job_id))

    async def create(self, job_id: str, keep: float) -> None:
        self._forget_expired()
        if job_id in self._logs:
            raise JobExists(f"job {job_id!r} already exists")
        log = self._logs[job_id] = _Log(keep)
        self._expire_in(log, job_id, keep)

    @asynccontextmanager
    async def publishing(self, job_id: str) -> AsyncIterator[None]:
        log = self._log(job_id)
        if log.state != "pending":
            raise JobExists(f"job {job_id!r} already has a publisher")
        log.state = "running"
        try:
            yield
        finally:
            if log.state == "running":
                log.state = "lost"
                log.notify()
                self._expire_in(log, job_id, log.keep)

    async def append(self, job_id: str, events: Sequence[tuple[int, bytes]], first: int) -> None:
        log = self._log(job_id)
        kept = log.events
        for event in events:
            if event[0] > log.last_id:
                kept.append(event)
                log.last_id = event[0]
        while kept and kept[0][0] < first:
            kept.popleft()
        if events:
            log.notify()

    async def finish(self, job_id: str, end_id: int, keep: float) -> None:
        log = self._log(job_id)
        log.end_id = end_id
        log.state = "ended"
        self._expire_in(log, job_id, keep)
        log.notify()

    async def info(self, job_id: str) -> JobInfo | None:
        self._forget_expired()
        log = self._logs.get(job_id)
        return None if log is None else JobInfo(log.state, log.last_id, log.end_id)

    async def read(self, job_id: str, after: int) -> Page:
        while True:
            log = self._log(job_id)
            if log.last_id > after:
                events = []
                for event in reversed(log.events):  # the newest are wanted: start there
                    if event[0] <= after:
                        break
                    events.append(event)
                events.reverse()
                return Page(events, log.end_id)
            if log.end_id is not None:
                return Page((), log.end_id)
            if log.state == "lost":
                raise JobLost(f"job {job_id!r} lost its publisher")
            if log.state == "running":
                await log.changed.wait()
            else:  # pending: forgotten at ``expires`` unless it starts, and nothing says so
                with move_on_after(log.expires - self._clock()):
                    await log.changed.wait()

    @asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[None]:
        log = self._log(job_id)
        self._count(log, +1)
        try:
            yield
        finally:
            self._count(log, -1)

    @staticmethod
    def _count(log: _Log, change: int) -> None:
        log.watchers += change
        log.presence.set()
        log.presence = Event()

    async def wait_unwatched(self, job_id: str, grace: float) -> None:
        log = self._log(job_id)
        while True:
            if log.watchers:
                await log.presence.wait()
                continue
            with move_on_after(grace) as wait:
                await log.presence.wait()
            if wait.cancelled_caught:
                return
