"""Resumable jobs: a job runs detached from any one request and publishes its
events to a log in a :class:`Backend` (see ``_publish``); each client watches
the log from where it left off (a :class:`Watch`). A job runs here, in another
process (:meth:`Jobs.run`), or on a job engine (:meth:`Jobs.perform`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

from anyio import TASK_STATUS_IGNORED, CapacityLimiter, Event, create_task_group, move_on_after
from anyio.abc import TaskGroup, TaskStatus

from .._bridge import Channel
from .._encoder import Encoder
from .._exceptions import JobCancelled
from .._hub import Hub, Ticket
from .._jobs import Job, JobRun
from .._run import (
    DEFAULT_BUFFER_BYTES,
    SHUTDOWN_ERROR,
    RunOptions,
    default_encoder,
    run_under,
)
from ._log import Retention, check_job_id, new_job_id
from ._memory import MemoryBackend
from ._publish import ABANDONED_ERROR, CANCELLED_ERROR, Attempt, Publisher
from ._store import Backend, Cancel, EndedByCancel, JobExists, JobLost
from ._watch import Watch

__all__ = ["Jobs"]

logger = logging.getLogger("asgi_sse")


class Jobs:
    """Run jobs that outlive their requests, and stream them to any number of
    clients that may come and go.

    A job started here runs in a worker thread of this process and publishes to
    ``backend`` (by default in memory, for this process only); clients watch it
    by id with :meth:`watch`, and one that reconnects with ``Last-Event-ID``
    gets what it missed, then the live events.

    Enter it (``async with jobs:``) for as long as the app serves, in its
    lifespan: the jobs run in its task group, and leaving it ends them with an
    ``error`` event (``{"type": "ServerShutdown"}``) after what they reported.

    - ``retention``: how much of each log is kept, and for how long after the
      end (``start`` and ``run`` take one per job too).
    - ``grace``: seconds a job may go unwatched before it is cancelled (and ended
      with ``{"type": "JobAbandoned"}``), so that a quick reconnect finds it
      still running; ``start(..., keep_running=True)`` opts a job out.
    - ``limiter``, ``encoder``, ``on_error``, ``max_buffer_bytes``: as for
      :class:`~asgi_sse.EventStream`. Given to ``EventStreamMiddleware(...,
      jobs=jobs)``, jobs use the app's limiter (unless given one) and wait in
      line for its ``max_streams`` slots, their watchers told their place.
    - ``shutdown_grace``: seconds that leaving waits for jobs to stop (at
      their next report) and their ends to be recorded, before cancelling them.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        retention: Retention | None = None,
        grace: float = 10.0,
        limiter: CapacityLimiter | None = None,
        encoder: Encoder | None = None,
        on_error: Callable[[Exception], Any] | None = None,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        shutdown_grace: float = 10.0,
    ) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be a number of seconds, at least 0, got {grace!r}")
        self.options = RunOptions(limiter, encoder or default_encoder, on_error, max_buffer_bytes)
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.retention = retention or Retention()
        self.grace = grace
        self.shutdown_grace = shutdown_grace
        self._hub: Hub | None = None
        self._tg: TaskGroup | None = None
        self._idle: Event | None = None  # set when the last running job has ended
        self._running: dict[str, JobRun] = {}

    def govern_by(self, hub: Hub) -> None:
        """Run under an app's policy (``EventStreamMiddleware(..., jobs=jobs)``)."""
        self._hub = hub

    async def __aenter__(self) -> None:
        # None, not self: Starlette's lifespan takes a non-None value for state
        # to merge, so ``lifespan=lambda app: jobs`` works as it is.
        if self._tg is not None:
            raise RuntimeError("this Jobs is already running")
        tg = create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._idle = Event()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        for run in list(self._running.values()):
            run.channel.end(partial(run.farewell, SHUTDOWN_ERROR))
        # Jobs stop at their next report, and their ends are recorded; past the
        # grace (a job that never reports, an unreachable backend) they are
        # cancelled, and a shared backend sees them lost.
        with move_on_after(self.shutdown_grace):
            while self._running:
                self._idle = Event()
                await self._idle.wait()
        tg.cancel_scope.cancel()
        return await tg.__aexit__(*exc_info)

    async def create(self, id: str | None = None) -> str:
        """Record a job that another process will run (:meth:`run` with this id),
        so that clients can watch it at once; they wait until it starts. Returns
        its id. Raises :class:`BackendUnavailable` if the backend cannot be
        reached (answer 503), :class:`JobExists` for an ``id`` already taken."""
        job_id = new_job_id() if id is None else check_job_id(id)
        await self.backend.create(job_id, self.retention.max_age)  # an outage: the caller's 503
        return job_id

    async def start(
        self,
        job: Job[Any],
        *,
        id: str | None = None,
        keep_running: bool = False,
        retention: Retention | None = None,
    ) -> str:
        """Start ``job`` in the background and return its id (``id``, or a new
        unguessable one). An ``id`` that :meth:`create` recorded is taken over;
        one that already runs raises :class:`JobExists`."""
        tg = self._tg
        if tg is None:
            raise RuntimeError(
                "Jobs is not running: enter it (async with jobs) in the app's lifespan"
            )
        job_id = await self._claimable(job, id)
        if self._tg is not tg:
            raise RuntimeError("Jobs stopped while this job was being started")
        await tg.start(self._run, job, job_id, keep_running, retention or self.retention)
        return job_id

    async def run(
        self,
        job: Job[Any],
        *,
        id: str | None = None,
        keep_running: bool = False,
        retention: Retention | None = None,
    ) -> str:
        """Run ``job`` here and now, returning its id once it has ended: for a
        worker process that publishes to a shared backend (no web framework,
        no ``async with`` needed)."""
        job_id = await self._claimable(job, id)
        await self._run(job, job_id, keep_running, retention or self.retention)
        return job_id

    async def _claimable(self, job: Job[Any], id: str | None) -> str:
        if not isinstance(job, Job):
            raise TypeError(f"a resumable job is a Job, got {type(job).__name__}")
        if id is None:
            return await self.create()
        with suppress(JobExists):  # recorded by create(): take it over
            await self.create(id)  # (publishing() refuses one that runs)
        return id

    async def perform(
        self,
        job: Job[Any],
        *,
        id: str,
        redelivered: bool = False,
        retry_if: Callable[[BaseException], bool] | None = None,
        keep_running: bool = False,
    ) -> Any:
        """Run one attempt of job ``id`` (recorded by :meth:`create`) for a job
        engine, and return what the job returned or raise what it raised, as
        the engine expects of a task. ``redelivered``: the engine delivers it
        again (its worker may have died), so this attempt may take over from
        the last. ``retry_if(exc)``: whether the engine will run a failure
        again; the log then says ``retrying`` rather than ending. An attempt
        that does not end the job raises :class:`JobCancelled` (cancelled,
        abandoned, or ended by a cancel before it came), :class:`JobExists`
        (it has ended, or another attempt has it) or :class:`JobLost`
        (unknown, or lost)."""
        try:
            run = await self._run(
                job,
                check_job_id(id),
                keep_running,
                self.retention,
                takeover=redelivered,
                retry_if=retry_if,
            )
        except EndedByCancel as exc:  # delivered late: its engine records it cancelled
            raise JobCancelled(str(exc)) from None
        return run.outcome()

    async def _run(
        self,
        job: Job[Any],
        job_id: str,
        keep_running: bool,
        retention: Retention,
        *,
        takeover: bool = False,
        retry_if: Callable[[BaseException], bool] | None = None,
        task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
    ) -> Attempt:
        grace = None if keep_running else self.grace
        async with self.backend.publishing(job_id, takeover=takeover, grace=grace) as claim:
            task_status.started()
            channel = Channel(self.options.max_buffer_bytes)
            what = f"resumable job {job_id} ({job!r})"
            run = Attempt(job, channel, self.options, what, claim=claim, retry_if=retry_if)
            self._running[job_id] = run
            if claim.abandoned or claim.cancelled:  # it never runs
                farewell = ABANDONED_ERROR if claim.abandoned else CANCELLED_ERROR
                channel.end(partial(run.farewell, farewell))
            try:
                async with create_task_group() as tg:
                    tg.start_soon(self._source, run, job_id)
                    try:
                        await Publisher(self.backend, job_id, run, retention, grace)()
                    finally:
                        # Tell the job before the task group waits for its thread
                        # (after a normal end, nobody is left to tell), and stop
                        # one still waiting in line.
                        channel.cancel()
                        tg.cancel_scope.cancel()
            except Exception:
                # The job's own failures are its error event; this is the log's
                # (a backend bug, say). The job ends lost, and no other job with it.
                logger.exception("job %s could not be published; it is lost", job_id)
                run.fenced = "lost"  # its engine is told so, whatever the job then raised
            finally:
                del self._running[job_id]
                if not self._running and self._idle is not None:
                    self._idle.set()
        return run

    async def _source(self, run: JobRun, job_id: str) -> None:
        """Under the app's policy, if any: its limiter, and a slot waited for in
        line like a stream's (the log says ``queued``)."""
        ticket = None if self._hub is None else Ticket(job_id)  # in line, not among the streams
        await run_under(run, run.channel, self.options.limiter, self._hub, ticket)

    async def cancel(self, job_id: str) -> bool:
        """Cancel job ``job_id``, wherever it runs: one still waiting (in an
        engine's queue) ends at once with ``error {"type": "JobCancelled"}`` and
        never runs; a running one gets :class:`JobCancelled` at its next report
        (and ``on_progress.cancelled`` turns true), then ends with that event.
        Returns False if it had already ended; raises :class:`JobLost` for an
        unknown job, :class:`BackendUnavailable` if the backend cannot be reached."""
        return await self._cancel(job_id) != "over"

    async def _cancel(self, job_id: str) -> Cancel:
        run = self._running.get(job_id)
        if run is not None:  # at once; the cancel in the log below makes it for good
            run.channel.end(partial(run.farewell, CANCELLED_ERROR))
        while True:
            info = await self.backend.info(check_job_id(job_id))
            if info is None:
                raise JobLost(f"no job {job_id!r}")
            end = info.last_id + 1
            event = (end, self.options.encoder.message("error", end, CANCELLED_ERROR))
            done = await self.backend.cancel(job_id, event)
            if done != "moved":
                return done

    async def note_queued(self, job_id: str, position: int | None) -> None:
        """Tell the watchers of a job still waiting for an engine's worker its
        place in the engine's queue (1: next), if the engine can tell: a
        ``queued`` event, unless the job has started meanwhile."""
        info = await self.backend.info(job_id)
        if info is not None and info.state == "pending":
            data = {} if position is None else {"position": position}
            next_id = info.last_id + 1
            await self.backend.note(
                job_id, (next_id, self.options.encoder.message("queued", next_id, data))
            )

    def watch(self, job_id: str, *, retry: int | None = None) -> Watch:
        """Job ``job_id`` as a source for :class:`~asgi_sse.EventStream` (or an
        adapter's response). It resumes after the request's ``Last-Event-ID``
        header or ``last_event_id`` query parameter; ``retry`` (milliseconds)
        tells the browser how soon to reconnect."""
        return Watch(self.backend, job_id, retry=retry)
