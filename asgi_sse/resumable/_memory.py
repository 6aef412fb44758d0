"""The in-memory backend: the default, with nothing to set up."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from anyio import Event, current_time, move_on_after

from ._store import Cancel, Claim, EndedByCancel, JobExists, JobInfo, JobLost, Page, State

__all__ = ["MemoryBackend"]


class _Log:
    __slots__ = (
        "attempts",
        "cancel",
        "cancelled",
        "changed",
        "cut",
        "end_id",
        "events",
        "expires",
        "keep",
        "last_id",
        "presence",
        "since",
        "state",
        "watchers",
    )

    def __init__(self, keep: float, now: float) -> None:
        self.keep = keep  # how long it is kept without a publisher
        self.since = now  # pending and unwatched since
        self.attempts = 0
        self.cancel = False  # asked to cancel: for good, whatever attempt comes next
        self.cut = False  # ended by a cancel (not by an attempt's own end)
        self.cancelled = Event()  # set to cancel the running attempt
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
        log = self._logs[job_id] = _Log(keep, self._clock())
        self._expire_in(log, job_id, keep)

    @asynccontextmanager
    async def publishing(
        self, job_id: str, *, takeover: bool = False, grace: float | None = None
    ) -> AsyncIterator[Claim]:
        """``takeover`` changes nothing here: a publisher in this process is alive."""
        log = self._log(job_id)
        if log.state == "lost":
            raise JobLost(f"job {job_id!r} is lost")
        if log.state == "ended" and log.cut:
            raise EndedByCancel(f"job {job_id!r} was cancelled")
        if log.state != "pending":
            raise JobExists(f"job {job_id!r} already has a publisher or has ended")
        abandoned = grace is not None and not log.watchers and self._clock() - log.since >= grace
        log.state = "running"
        log.attempts += 1
        log.cancelled = Event()
        if log.cancel:
            log.cancelled.set()
        attempt = log.attempts
        try:
            yield Claim(log.last_id, attempt, abandoned=abandoned, cancelled=log.cancel)
        finally:
            if log.state == "running" and log.attempts == attempt:
                log.state = "lost"
                log.notify()
                self._expire_in(log, job_id, log.keep)

    async def release(self, job_id: str, cancelled: tuple[int, bytes]) -> bool:
        log = self._log(job_id)
        if log.state != "running":
            raise JobLost(f"job {job_id!r} is no longer this attempt's to publish")
        if log.cancel:
            log.cut = True
            await self.append(job_id, (cancelled,), 1)
            await self.finish(job_id, cancelled[0], log.keep)
            return False
        log.state = "pending"
        log.since = self._clock()
        self._expire_in(log, job_id, log.keep)
        return True

    async def note(self, job_id: str, event: tuple[int, bytes]) -> bool:
        log = self._log(job_id)
        if log.state != "pending" or event[0] != log.last_id + 1:
            return False
        await self.append(job_id, (event,), 1)
        return True

    async def cancel(self, job_id: str, event: tuple[int, bytes]) -> Cancel:
        log = self._log(job_id)
        if log.state not in ("running", "pending"):
            return "over"
        log.cancel = True
        if log.state == "running":
            log.cancelled.set()
            return "told"
        if not await self.note(job_id, event):
            return "moved"
        log.cut = True
        await self.finish(job_id, event[0], log.keep)
        return "ended"

    async def wait_cancelled(self, job_id: str) -> None:
        await self._log(job_id).cancelled.wait()

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

    def _count(self, log: _Log, change: int) -> None:
        log.watchers += change
        if not log.watchers and log.state == "pending":
            log.since = self._clock()
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
