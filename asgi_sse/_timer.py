"""The one timer of a stream: when a heartbeat is due, and when a send is overdue.

Sans-IO: times in, decisions out. One timer per stream does both jobs, so an
idle stream wakes once per heartbeat and a busy one not at all between them.
The times are ``time.monotonic()``, read once per send: anyio's
``current_time()`` finds its backend on every call, which the hot path cannot
afford, and the timer needs no more than a steady clock.
"""

from __future__ import annotations

from enum import Enum
from math import inf

__all__ = ["Due", "Timer"]


class Due(Enum):
    NOTHING = 0
    HEARTBEAT = 1  #: ``heartbeat`` seconds without a send began
    GIVE_UP = 2  #: one send has taken ``send_timeout`` seconds: the client stopped reading


class Timer:
    """``heartbeat`` and ``send_timeout`` in seconds, either None for never.

    The stream notes when each send begins (:meth:`sending`) and ends
    (:meth:`sent`); the timer says how long to sleep (:meth:`delay`) and what
    is due on waking (:meth:`due`).
    """

    __slots__ = ("busy", "heartbeat", "limit", "sent_at")

    def __init__(self, heartbeat: float | None, send_timeout: float | None, now: float) -> None:
        self.heartbeat = heartbeat
        self.limit = send_timeout
        self.busy = False  # a send is under way...
        self.sent_at = now  # ...since then, or the last one began then

    def sending(self, now: float) -> None:
        self.busy = True
        self.sent_at = now

    def sent(self) -> None:
        self.busy = False

    def delay(self, now: float) -> float:
        """Seconds until there may be something to do."""
        heartbeat, limit = self.heartbeat, self.limit
        if self.busy:
            # Its deadline, or the heartbeat if sooner (counted from the send's
            # start, or from now once that has passed): nothing wakes the timer
            # when the send ends, and a silence may follow it.
            deadline = inf if limit is None else max(self.sent_at + limit - now, 0.0)
            if heartbeat is None:
                return deadline
            beat = self.sent_at + heartbeat - now
            return min(deadline, beat if beat > 0 else heartbeat)
        due = inf if heartbeat is None else self.sent_at + heartbeat - now
        if limit is not None:
            due = min(due, limit)  # a send may begin at any moment
        return max(due, 0.0)

    def due(self, now: float) -> Due:
        if self.busy:
            if self.limit is not None and now - self.sent_at >= self.limit:
                return Due.GIVE_UP
        elif self.heartbeat is not None and now - self.sent_at >= self.heartbeat:
            self.sent_at = now  # one ping per silence
            return Due.HEARTBEAT
        return Due.NOTHING
