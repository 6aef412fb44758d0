"""The rules of a resumable job's event log, sans-IO: job ids, ``Last-Event-ID``,
and which events a bounded log keeps.

Every backend applies the same rules, so they live here once: the publisher of a
job (the only writer of its log) asks :class:`Trimmer` for the first event to
keep after each append, and the backend drops everything before it. Standard
library only.
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from dataclasses import dataclass

__all__ = [
    "MAX_EVENT_ID",
    "BadEventId",
    "Retention",
    "Trimmer",
    "check_job_id",
    "new_job_id",
    "parse_event_id",
]

#: Event ids of a resumable job are 1, 2, 3... and never reach this.
MAX_EVENT_ID = 2**63 - 1

_JOB_ID = re.compile(r"[A-Za-z0-9_.:~-]{1,128}")
_EVENT_ID = re.compile(r"0|[1-9][0-9]{0,18}")


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a job's log is kept for clients that reconnect.

    Events are dropped oldest first once the log holds more than ``max_events``
    events or ``max_bytes`` bytes of encoded events, or once they are older than
    ``max_age`` seconds; the newest event is always kept, so a late client still
    gets the job's latest state. A finished job is forgotten ``max_age`` seconds
    after its last event: until then a reconnect replays what is kept, after
    that it gets 404.
    """

    max_events: int = 1000
    max_bytes: int = 1024 * 1024
    max_age: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_events", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.max_age, bool) or not (
            isinstance(self.max_age, (int, float)) and self.max_age > 0
        ):
            raise ValueError(f"max_age must be a positive number of seconds, got {self.max_age!r}")


class Trimmer:
    """The publisher's account of its job's log: which events are kept, by
    count, bytes and age. Ids are consecutive from 1, so the log is described
    by its first kept id; the backend drops every event before it."""

    __slots__ = ("_bytes", "_kept", "first", "retention")

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self._kept: deque[tuple[int, int, float]] = deque()  # (id, size, time appended)
        self._bytes = 0
        self.first = 1  # the first id kept

    def add(self, event_id: int, size: int, now: float) -> int:
        """Count an appended event; return the first id to keep."""
        self._kept.append((event_id, size, now))
        self._bytes += size
        r = self.retention
        while len(self._kept) > 1 and (len(self._kept) > r.max_events or self._bytes > r.max_bytes):
            self._drop()
        return self.expire(now)

    def expire(self, now: float) -> int:
        """Drop what has aged out, the newest event excepted; return the first id to keep."""
        horizon = now - self.retention.max_age
        while len(self._kept) > 1 and self._kept[0][2] <= horizon:
            self._drop()
        return self.first

    def _drop(self) -> None:
        event_id, size, _ = self._kept.popleft()
        self._bytes -= size
        self.first = event_id + 1


class BadEventId(ValueError):
    """A ``Last-Event-ID`` that this server never sent."""


def parse_event_id(value: str | None) -> int:
    """The id of the last event a client has, from ``Last-Event-ID``; 0 for none.

    Only what asgi-sse sends is accepted (a plain decimal, no sign, no leading
    zero, no spaces), so a forged or foreign id is refused rather than read as
    some other place in the log.
    """
    if value is None or value == "":  # an EventSource sends "" after an `id:` with no value
        return 0
    if len(value) > 19 or not _EVENT_ID.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise BadEventId(f"Last-Event-ID must be an event id this server sent, got {shown!r}")
    number = int(value)
    if number > MAX_EVENT_ID:
        raise BadEventId(f"Last-Event-ID {value} is out of range")
    return number


def check_job_id(job_id: str) -> str:
    """Job ids go into URLs and storage keys: 1 to 128 URL-safe characters,
    not ``.`` or ``..``."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or job_id in (".", ".."):
        # "." and ".." are path segments: in a URL they move up a level.
        shown = job_id if not isinstance(job_id, str) or len(job_id) <= 40 else job_id[:40] + "..."
        raise ValueError(f"a job id is 1 to 128 of A-Z a-z 0-9 _ . : ~ -, got {shown!r}")
    return job_id


def new_job_id() -> str:
    """An unguessable id: anyone who knows a job's id can watch it."""
    return secrets.token_urlsafe(16)
