"""Where resumable jobs keep their logs: the interface every backend implements.

A job's log is a sequence of encoded events numbered 1, 2, 3... by its one
publisher, ended by a terminal event whose id the publisher records with
:meth:`Backend.finish`. Watchers read it with a cursor (:meth:`Backend.read`
returns the events after an id), so replay and live delivery are one read
loop: there is no moment between "history" and "subscription" in which an
event could fall, and no event is read twice.

A job runs in attempts: each claims the log (:meth:`Backend.publishing`) and
numbers its events after the last one there, so a job that a job engine runs
again (a retry, a task delivered again after its worker died) continues one
log, its ids increasing, with no event twice.

A third backend (NATS JetStream, Postgres with LISTEN/NOTIFY) implements the
methods of :class:`Backend`; ``tests/test_store.py`` runs the same contract
tests against every backend.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from anyio import sleep

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
    "Cancel",
    "Claim",
    "EndedByCancel",
    "JobExists",
    "JobInfo",
    "JobLost",
    "Page",
    "retrying",
]

State = Literal["pending", "running", "ended", "lost"]
#: What :meth:`Backend.cancel` did: ended a pending job; found it moved on (look
#: again); told its publisher; or nothing, the job being over.
Cancel = Literal["ended", "moved", "told", "over"]


class JobExists(Exception):
    """A job with this id already exists (or already has a publisher)."""


class EndedByCancel(JobExists):
    """The job has ended, and by a cancel, not by an attempt's own end: a job
    engine's late delivery (after its worker died) is a cancelled task."""


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


@dataclass(frozen=True, slots=True)
class Claim:
    """An attempt's hold on a job's log, from :meth:`Backend.publishing`."""

    #: The log's last id before this attempt: its events are numbered after it.
    last_id: int
    #: 1 for the first attempt, 2 for the next...
    attempt: int
    #: The job was running elsewhere, and this attempt replaced its publisher.
    taken_over: bool = False
    #: Nobody watched the job for its grace period while it waited: end it, do not run it.
    abandoned: bool = False
    #: The job was cancelled (a cancel is for good, even one that raced a retry): end it.
    cancelled: bool = False


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

    def publishing(
        self, job_id: str, *, takeover: bool = False, grace: float | None = None
    ) -> AbstractAsyncContextManager[Claim]:
        """Be the job's one publisher while inside. Raises :class:`JobExists` if
        it has ended or has a publisher (:class:`EndedByCancel` if a cancel
        ended it), :class:`JobLost` if it is unknown or lost. With
        ``takeover`` (a job engine delivered the job again), a publisher
        elsewhere whose lease runs out within one lease is presumed dead and
        shut out (it can write nothing more); one that renews it is alive, and
        keeps the job. A pending job unwatched for ``grace`` seconds is claimed
        :attr:`Claim.abandoned`. Leaving without :meth:`finish` or
        :meth:`release` marks the job lost."""

    async def release(self, job_id: str, cancelled: tuple[int, bytes]) -> bool:
        """Stop publishing without an end: the job waits for its next attempt
        (True). If it was cancelled meanwhile, it ends with ``cancelled`` (the
        next id) instead (False). Raises :class:`JobLost` if the job is no
        longer this attempt's."""

    async def note(self, job_id: str, event: tuple[int, bytes]) -> bool:
        """Add an event to a job that has no publisher yet (its place in an
        engine's queue), if its id is the next; False if not (it has moved on)."""

    async def cancel(self, job_id: str, event: tuple[int, bytes]) -> Cancel:
        """Cancel the job, for good: a pending one ends with ``event`` (the next
        id), a running one is told (:meth:`wait_cancelled`), and any later
        attempt is claimed :attr:`Claim.cancelled`."""

    async def wait_cancelled(self, job_id: str) -> None:
        """Return once the job this process publishes is cancelled; raise
        :class:`JobLost` once it is no longer this attempt's (shut out by a
        later one, or declared lost)."""

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
