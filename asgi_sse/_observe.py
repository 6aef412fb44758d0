"""What an app's metrics and traces see, sans-IO: one record per stream and one
per job, handed to the app's observers when each begins and when it ends.

Never per event: what a batch of events costs a stream is counted by the hub
(events and bytes sent), and read when an operator asks (a scrape), so a
stream that is observed costs a few attribute writes more than one that is not.
How a stream ended is read from its last event, as its client read it: the
same for a job in a thread, an iterable, or a resumable job's log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Literal, Protocol

__all__ = [
    "CANCELS",
    "JobRecord",
    "Observer",
    "Observers",
    "Outcome",
    "StreamRecord",
    "news",
    "outcome_of",
]

logger = logging.getLogger("asgi_sse")

#: How a stream or job ended: its terminal event, or none (its client left, or was
#: dropped, before the end; a job is then ``cancelled``: stopped, nobody listened).
#: ``retried``, a job's only: an attempt at a resumable job that failed and runs again.
Outcome = Literal["completed", "failed", "cancelled", "lost", "retried", "none"]

#: The ``error`` types that say a job was stopped, not that it failed.
CANCELS = frozenset({"JobCancelled", "JobAbandoned", "ServerShutdown"})


#: How the frames that are not the job's own begin: a heartbeat, a reconnection
#: delay, a place in line, a watch's word that its backend cannot be reached.
_NOT_NEWS = (b":", b"retry:", b"event: queued\n", b"event: unavailable\n")


def news(frame: bytes) -> bool:
    """Whether a frame tells its client something of the job (time to first
    event is time to the job's first word, not to the stream's own)."""
    return not frame.startswith(_NOT_NEWS)


def outcome_of(frame: bytes | None) -> tuple[Outcome, str | None]:
    """A stream's (or a run's) outcome, and the error's type, from its last event."""
    if frame is None:
        return "none", None
    event, data = b"message", b""
    for line in frame.split(b"\n"):
        if line.startswith(b"event:"):
            event = line[6:].strip()
        elif line.startswith(b"data:"):
            data = line[5:].strip()
    if event == b"completed":
        return "completed", None
    if event not in (b"error", b"retrying"):
        return "none", None
    try:  # a custom source's, or an on_error hook's, data may be anything
        kind = json.loads(data).get("type")
    except Exception:
        kind = None
    kind = kind if isinstance(kind, str) else None
    if event == b"retrying":
        return "retried", kind
    if kind == "JobLost":
        return "lost", kind
    return ("cancelled" if kind in CANCELS else "failed"), kind


@dataclass(eq=False)
class StreamRecord:
    """One event stream, from its admission to its end (times: ``time.monotonic()``)."""

    method: str
    path: str
    #: The resumable job it watches, if it watches one.
    job_id: str | None
    opened: float  #: when it was admitted
    #: When the server took its first event of the job (not a heartbeat, nor its place in line).
    first_event: float | None = None
    closed: float | None = None
    outcome: Outcome | None = None  #: set when it closes
    error: str | None = None  #: the ``type`` of its ``error`` event, if it ended with one
    last: bytes | None = None  #: the last event the server took so far
    #: Each observer's own (a span, say), by observer.
    marks: dict[object, Any] = field(default_factory=dict)


@dataclass(eq=False)
class JobRecord:
    """One run of a stream's source that takes a slot (a job, an iterable), or an
    attempt at a resumable job run by this process (``stream`` None, ``job_id`` set)."""

    stream: StreamRecord | None
    queued: float | None  #: when it began to wait for a slot, if it had to
    started: float
    job_id: str | None = None  #: a resumable job's
    ended: float | None = None
    outcome: Outcome | None = None
    error: str | None = None
    marks: dict[object, Any] = field(default_factory=dict)


class Observer:
    """Override what you need. Every hook is called on the event loop, once per
    stream or job, and must not block; one that raises is logged and the stream
    goes on. The job hooks run in the job's own task: a context variable set in
    ``job_started`` (a current span) is seen by the job's worker thread, and
    must be reset in ``job_ended``."""

    def attached(self, stats: Callable[[], Any]) -> None:
        """Called once, by the middleware it reports to: ``stats()`` is that
        app's :class:`~asgi_sse.Stats` now, for what is counted, not recorded."""

    def stream_opened(self, stream: StreamRecord) -> None:
        """A stream was admitted."""

    def stream_closed(self, stream: StreamRecord) -> None:
        """A stream ended: its last byte went out, or its client left, or was dropped."""

    def job_started(self, job: JobRecord) -> None:
        """A job took its slot (after waiting in line, if it had to)."""

    def job_ended(self, job: JobRecord) -> None:
        """A job's run returned: its terminal event is written, or it was stopped
        (``cancelled``: nobody listened, or the server cut it)."""


class Ends(Protocol):
    """What a run ends: its channel, closed with the run's last event (or None)."""

    @property
    def last(self) -> bytes | None: ...


class Observers:
    """An app's observers as one: each hook tells every one of them (the closing
    hooks in reverse order), and one that raises is logged, not let through."""

    __slots__ = ("each",)

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.each = tuple(observers)

    def __bool__(self) -> bool:
        return bool(self.each)

    def attach(self, stats: Callable[[], Any]) -> None:
        for observer in self.each:
            observer.attached(stats)

    def opened(self, request: Mapping[str, Any], job_id: str | None, at: float) -> StreamRecord:
        """The record of a stream admitted ``at``, whose source said yes."""
        method, path = request.get("method", "GET"), request.get("path", "")
        record = StreamRecord(method, path, job_id, at)
        self._tell("stream_opened", record)
        return record

    def closed(self, record: StreamRecord) -> None:
        record.closed = monotonic()
        record.outcome, record.error = outcome_of(record.last)
        if record.outcome == "retried":  # a watch between attempts: it saw no end
            record.outcome, record.error = "none", None
        self._tell("stream_closed", record, last=True)

    @contextmanager
    def job(
        self, stream: StreamRecord | None, job_id: str | None, queued: float | None, ends: Ends
    ) -> Iterator[None]:
        """Observe a run in its slot: its wait, its time, and how it ended (the
        last event of ``ends``; none is a run stopped, so ``cancelled``)."""
        record = JobRecord(stream, queued, monotonic(), job_id)
        self._tell("job_started", record)
        try:
            yield
        finally:
            record.ended = monotonic()
            record.outcome, record.error = outcome_of(ends.last)
            if record.outcome == "none":
                record.outcome = "cancelled"
            self._tell("job_ended", record, last=True)

    def _tell(self, hook: str, record: StreamRecord | JobRecord, *, last: bool = False) -> None:
        """Tell each observer; the closing hooks in reverse, so that what one
        set up in the opening hook (a context variable) is undone in order."""
        for observer in reversed(self.each) if last else self.each:
            try:
                getattr(observer, hook)(record)
            except Exception:
                logger.exception("observer %r failed in %s; the stream goes on", observer, hook)
