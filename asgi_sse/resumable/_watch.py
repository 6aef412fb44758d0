"""Following a resumable job's log from a client's ``Last-Event-ID``.

A :class:`Watch` is a source for :class:`~asgi_sse.EventStream` like any other,
so heartbeats, send timeouts, disconnects, the adapters and the middleware work
for it as for any stream. Its answer is decided before the response starts
(:meth:`Watch.open`), since 204, 400 and 404 are statuses; then its run copies
the log into the stream's channel with one cursor, replay and live alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from anyio import CapacityLimiter, move_on_after

from .._bridge import Channel
from .._encoder import Encoder
from .._exceptions import JobCancelled
from .._http import Refusal, error_response
from .._latest import progress_step
from .._run import RunOptions
from ._log import BadEventId, check_job_id, parse_event_id
from ._store import Backend, BackendUnavailable, JobInfo, JobLost, Page, retrying

__all__ = ["Watch"]

#: Seconds a new watch waits for an unreachable backend before answering 503.
DECIDE_WITHIN = 5.0

_LOST_ERROR = {"type": "JobLost"}
_UNAVAILABLE = {"type": "BackendUnavailable"}


@dataclass(frozen=True)
class Watch:
    """A resumable job to follow. For each request, :meth:`prepare` decides the
    status before the response starts, from the request's last event id, and
    the :class:`Follow` it returns copies the log from there."""

    backend: Backend
    job_id: str
    retry: int | None = None

    #: A watch runs no code of its own: no thread (limiter), no error of its job to turn
    #: into data (on_error); those are the :class:`Jobs` options where the job runs.
    #: ``coalesce`` is its own: the log keeps every event, and only what this client
    #: has not been sent yet gives way to a newer report of the same step.
    uses: ClassVar[frozenset[str]] = frozenset({"coalesce"})

    def __post_init__(self) -> None:
        if self.retry is not None and (
            isinstance(self.retry, bool) or not isinstance(self.retry, int) or self.retry < 0
        ):
            raise ValueError(
                f"retry must be a non-negative int of milliseconds, got {self.retry!r}"
            )

    async def open(
        self, scope: Mapping[str, Any], channel: Channel, options: RunOptions
    ) -> Refusal | _Follow:
        """Decide the answer: 400 for a bad ``Last-Event-ID``, 404 for an unknown
        job, 204 once the client has the terminal event, 503 if the backend
        cannot be reached for :data:`DECIDE_WITHIN` seconds, else where to resume."""
        try:
            after = parse_event_id(_last_event_id(scope))
            check_job_id(self.job_id)
        except BadEventId as exc:
            return error_response(400, "BadLastEventId", detail=str(exc))
        except ValueError:
            return error_response(404, "JobNotFound", detail="no such job")
        info = await self._info()
        if isinstance(info, Refusal):
            return info
        end_id = info.end_id if info.state == "ended" else None
        if info.state == "lost":
            end_id = info.last_id + 1  # the JobLost error a watcher sends
        if after > (info.last_id if end_id is None else end_id):
            detail = f"Last-Event-ID {after} is past this job's last event"
            return error_response(400, "BadLastEventId", detail=detail)
        if end_id is not None and after >= end_id:
            return Refusal(204, [("cache-control", "no-store")], b"")
        return _Follow(self, after, channel, options.encoder, coalesce=options.coalesce)

    async def _info(self) -> JobInfo | Refusal:
        """The job's state, or 404 (unknown) or 503 (the backend cannot be reached)."""
        with move_on_after(DECIDE_WITHIN):
            info = await retrying(self.backend.info, self.job_id)
            return info or error_response(404, "JobNotFound", detail="no such job")
        detail = "the job store cannot be reached"
        return error_response(503, "BackendUnavailable", [("retry-after", "1")], detail=detail)


class _Follow:
    """The run of a watch, inside the response: the log after ``after``."""

    __slots__ = ("after", "channel", "coalesce", "encoder", "watch")

    takes_slot = False  # it reads a log: no thread, so no slot to wait for

    def __init__(
        self, watch: Watch, after: int, channel: Channel, encoder: Encoder, *, coalesce: bool
    ) -> None:
        self.watch = watch
        self.after = after
        self.channel = channel
        self.encoder = encoder
        self.coalesce = coalesce

    def queued(self, position: int) -> None:
        """Never in line (:attr:`takes_slot`)."""

    def farewell(self) -> None:
        """None: the job goes on, and the client should reconnect (to another
        process) rather than take the stream's end for the job's."""

    async def __call__(self, limiter: CapacityLimiter) -> None:
        """Copy the log into the channel and close it after the terminal event;
        a job that disappears meanwhile ends with ``JobLost``."""
        channel = self.channel
        if self.watch.retry is not None:
            channel.put_nowait(b"retry: %d\n\n" % self.watch.retry)
        # What ends the copy is caught inside it: a backend's watching() may run
        # a task group, which would hand it on wrapped in an exception group.
        async with self.watch.backend.watching(self.watch.job_id):
            outcome = await self._copy(channel)
        if outcome == "lost":
            with suppress(JobCancelled):
                await channel.aput(self.encoder.message("error", self.after + 1, _LOST_ERROR))
        channel.close()

    async def _copy(self, channel: Channel) -> str:
        """Follow the cursor ``self.after`` to the terminal event, saying so
        wherever the log has a gap and while the backend cannot be reached.
        Returns how it ended: "end", "lost" (the job is gone) or "stopped" (the
        stream was ended, at shutdown: nobody to tell)."""
        try:
            return await self._follow(channel)
        except JobCancelled:
            return "stopped"

    async def _follow(self, channel: Channel) -> str:
        encoder = self.encoder
        while True:
            try:
                page = await self._read(channel)
            except JobLost:
                return "lost"
            events = page.events
            if events:
                frames = [frame for _, frame in events]
                if events[0][0] > self.after + 1:
                    gap = {
                        "type": "HistoryGone",
                        "last_event_id": self.after,
                        "next_id": events[0][0],
                    }
                    frames.insert(0, encoder.message("gap", None, gap))
                # One batch: a page leaves in one send. Coalescing, a client that is
                # behind gets each step's latest report, and the cursor still moves
                # past the rest: its Last-Event-ID means "up to here, each step's latest".
                keys = [progress_step(frame) for frame in frames] if self.coalesce else None
                await channel.aput_many(frames, keys)
                self.after = events[-1][0]
            if page.end_id is not None and self.after >= page.end_id:
                return "end"

    async def _read(self, channel: Channel) -> Page:
        """The next page. An outage is told to the client once, at its start,
        then waited out with the backend's usual retries."""
        backend, job_id = self.watch.backend, self.watch.job_id
        try:
            return await backend.read(job_id, self.after)
        except BackendUnavailable:
            await channel.aput(self.encoder.message("unavailable", None, _UNAVAILABLE))
            return await retrying(backend.read, job_id, self.after)


def _last_event_id(scope: Mapping[str, Any]) -> str | None:
    """The header a browser sends on reconnect, else the query parameter (for
    clients that cannot set headers). Given both, they must agree."""
    header = None
    for name, value in scope.get("headers", ()):
        if name == b"last-event-id":
            if header is not None:
                raise BadEventId("more than one Last-Event-ID header")
            header = value.decode("latin-1")
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    query = [value for key, value in pairs if key == "last_event_id"]
    if len(query) > 1:
        raise BadEventId("more than one last_event_id parameter")
    if query and header is not None and query[0] != header:
        raise BadEventId("the Last-Event-ID header and the last_event_id parameter differ")
    return header if header is not None else (query[0] if query else None)
