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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CANCELS", "JobRecord", "Observer", "Outcome", "StreamRecord", "outcome_of"]

#: How a stream or job ended: its terminal event, or none (its client left, or was
#: dropped, before the end; for a job, it was stopped because nobody listened).
Outcome = Literal["completed", "failed", "cancelled", "lost", "none"]

#: The ``error`` types that say a job was stopped, not that it failed.
CANCELS = frozenset({"JobCancelled", "JobAbandoned", "ServerShutdown"})


def outcome_of(frame: bytes | None) -> tuple[Outcome, str | None]:
    """A stream's outcome, and the error's type, from the last event it sent."""
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
    if event != b"error":
        return "none", None
    try:
        kind = json.loads(data).get("type")
    except (ValueError, AttributeError):
        kind = None
    kind = kind if isinstance(kind, str) else None
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
    opened: float
    first_event: float | None = None  #: when its first event was handed to the server
    closed: float | None = None
    outcome: Outcome | None = None  #: set when it closes
    error: str | None = None  #: the ``type`` of its ``error`` event, if it ended with one
    last: bytes | None = None  #: the last event sent so far
    #: Each observer's own (a span, say), by observer.
    marks: dict[object, Any] = field(default_factory=dict)


@dataclass(eq=False)
class JobRecord:
    """One run of a stream's source that takes a slot (a job, an iterable), or of
    a resumable job started in this process (``stream`` None)."""

    stream: StreamRecord | None
    queued: float | None  #: when it began to wait for a slot, if it had to
    started: float
    ended: float | None = None
    outcome: Outcome | None = None
    error: str | None = None
    marks: dict[object, Any] = field(default_factory=dict)


class Observer:
    """Override what you need. Every hook is called on the event loop, once per
    stream or job, and must not block; one that raises is logged and the stream
    goes on."""

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
        """A job's run returned: its terminal event is written, or it was stopped."""
