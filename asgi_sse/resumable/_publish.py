"""One attempt at a resumable job: its run, published batch by batch to its log.

The publisher is the same run as a plain stream's (a :class:`Job` run into a
channel, under the same :class:`RunOptions`), drained by one task that appends
each batch to the backend. The attempt numbers every event after the log's
last (its :class:`Claim`), in channel order, so an event's place in the
channel gives its id in the log. If the backend is unreachable the task
retries the same batch, the channel fills and the job waits in its next
report: backpressure, not loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

from anyio import CapacityLimiter, EndOfStream, create_task_group, current_time, sleep

from .._bridge import Channel
from .._exceptions import JobCancelled
from .._jobs import Job, JobRun
from .._run import SHUTDOWN_ERROR, RunOptions
from ._log import Retention, Trimmer
from ._store import Backend, BackendUnavailable, Claim, JobExists, JobLost, retrying

__all__ = ["ABANDONED_ERROR", "CANCELLED_ERROR", "Attempt", "Publisher"]

logger = logging.getLogger("asgi_sse")

#: The data of the ``error`` event that ends a job nobody watched for its grace period.
ABANDONED_ERROR = {"type": "JobAbandoned"}
#: The data of the ``error`` event that ends a job cancelled with ``Jobs.cancel``.
CANCELLED_ERROR = {"type": "JobCancelled"}


class Attempt(JobRun):
    """A job's run in one attempt. It keeps what the job returned or raised,
    for a job engine that runs it; and a failure that the engine will retry
    (``retry_if``) ends this attempt with a ``retrying`` event, not the job."""

    __slots__ = (
        "claim",
        "completed",
        "exception",
        "fenced",
        "result",
        "retried",
        "retry_if",
        "stopped",
    )

    def __init__(
        self,
        job: Job[Any],
        channel: Channel,
        options: RunOptions,
        what: str,
        *,
        claim: Claim,
        retry_if: Callable[[BaseException], bool] | None = None,
    ) -> None:
        super().__init__(job, channel, options, what, log=True)
        self.claim = claim
        self.retry_if = retry_if
        self.result: Any = None
        self.exception: BaseException | None = None
        self.completed = False  # the job returned (rather than raised, or never ran)
        self.retried = False
        self.stopped = False  # ended early: cancelled, abandoned, or at shutdown
        #: Shut out of the log: by a later attempt, or a cancel (superseded), or lost.
        self.fenced: Literal["superseded", "lost"] | None = None
        self.reporter.last_id = claim.last_id
        if claim.taken_over:  # delivered again: its last attempt's worker died
            self.say("retrying", {"type": "WorkerLost", "attempt": claim.attempt - 1})

    def outcome(self) -> Any:
        """What its job engine is told: the job's result, or what it raised;
        for an attempt that did not end the job, why (the log has the rest)."""
        if self.fenced == "superseded":
            raise JobExists(f"{self.what} was superseded by a later attempt or a cancel")
        if self.fenced is not None:
            raise JobLost(f"{self.what} was declared lost while it ran")
        if self.stopped:  # cancelled, abandoned, shut down: the engine must agree with the log
            raise JobCancelled(f"{self.what} was stopped before its end")
        if self.exception is not None:
            raise self.exception
        if not self.completed:
            raise JobLost(f"{self.what} could not be published")
        return self.result

    def say(self, event: str, data: Any) -> None:
        """An event of the attempt itself, numbered in line with the job's."""
        with self.reporter.numbering() as next_id:
            self.channel.put_nowait(self.options.encoder.message(event, next_id, data))
            self.reporter.last_id = next_id

    def farewell(self, data: Any = SHUTDOWN_ERROR) -> bytes:
        self.stopped = True
        return super().farewell(data)

    async def _produce(self, limiter: CapacityLimiter) -> Any:
        try:
            self.result = await super()._produce(limiter)
        except BaseException as exc:
            self.exception = exc
            raise
        self.completed = True
        return self.result

    def _error(self, exc: BaseException, next_id: int | None) -> bytes:
        # A job that returned is not run again, even if its result cannot be sent.
        if not self.completed and self._will_retry(exc):
            self.retried = True
            data = {"type": type(exc).__name__, "attempt": self.claim.attempt}
            return self.options.encoder.message("retrying", next_id, data)
        return super()._error(exc, next_id)

    def _will_retry(self, exc: BaseException) -> bool:
        if self.retry_if is None:
            return False
        try:
            return bool(self.retry_if(exc))
        except Exception:  # the job's end must still be written: as not retried
            logger.exception("%s: retry_if failed; ending the job with its error", self.what)
            return False


class Publisher:
    """Copies an attempt's channel to the job's log until the channel ends, then
    records the end (or, for a retried attempt, hands the job back)."""

    def __init__(
        self, backend: Backend, job_id: str, run: Attempt, retention: Retention, grace: float | None
    ) -> None:
        self.backend = backend
        self.job_id = job_id
        self.run = run
        self.trimmer = Trimmer(retention)
        self.grace = grace  # None: keep running unwatched

    async def __call__(self) -> None:
        """Publish until the channel ends, then mark the end: at once, without
        waiting for a job that was stopped to reach its next report."""
        run, backend, job_id = self.run, self.backend, self.job_id
        async with create_task_group() as helpers:
            if self.grace is not None:
                helpers.start_soon(self._cancel_unwatched, self.grace)
            helpers.start_soon(self._cancel_when_asked)
            helpers.start_soon(self._expire)
            end_id = await self._publish()
            helpers.cancel_scope.cancel()
        if end_id and run.fenced is None:
            try:
                if run.retried:
                    end = end_id + 1  # its end instead, if it was cancelled as it failed
                    cancelled = end, run.options.encoder.message("error", end, CANCELLED_ERROR)
                    if not await retrying(backend.release, job_id, cancelled):
                        run.stopped = True
                else:
                    await retrying(backend.finish, job_id, end_id, self.trimmer.retention.max_age)
            except JobLost:  # its end is not the log's: it was lost, or another's, meanwhile
                self._fenced()
        if run.fenced is not None:
            run.fenced = await self._fenced_by()

    async def _publish(self) -> int:
        """Append every batch the job makes; return the last (terminal) id."""
        channel, trimmer = self.run.channel, self.trimmer
        last = self.run.claim.last_id
        while True:
            try:
                batch = await channel.receive()
            except EndOfStream:
                return last
            if not batch:
                continue
            now = current_time()
            events = []
            first = trimmer.first
            for frame in batch:
                last += 1
                events.append((last, frame))
                first = trimmer.add(last, len(frame), now)
            try:
                await retrying(self.backend.append, self.job_id, events, first)
            except JobLost:  # lost (its watchers were told) or taken over by a later attempt
                self._fenced()
                return 0

    async def _cancel_unwatched(self, grace: float) -> None:
        await retrying(self.backend.wait_unwatched, self.job_id, grace)
        logger.info("job %s had no watcher for %ss: cancelling it", self.job_id, grace)
        self.run.channel.end(partial(self.run.farewell, ABANDONED_ERROR))

    async def _cancel_when_asked(self) -> None:
        try:
            await retrying(self.backend.wait_cancelled, self.job_id)
        except JobLost:
            self._fenced()
            self.run.channel.cancel()  # its next report raises JobCancelled
            return
        logger.info("job %s was cancelled", self.job_id)
        self.run.channel.end(partial(self.run.farewell, CANCELLED_ERROR))

    def _fenced(self) -> None:
        logger.warning("job %s is no longer this attempt's; stopping it", self.job_id)
        self.run.fenced = "lost"  # until :meth:`_fenced_by` knows better

    async def _fenced_by(self) -> Literal["superseded", "lost"]:
        try:
            info = await self.backend.info(self.job_id)
        except BackendUnavailable:
            return "lost"
        moved_on = info is not None and info.state in ("running", "ended")
        return "superseded" if moved_on else "lost"

    async def _expire(self) -> None:
        """Drop events that age out while the job is silent (appends trim the rest)."""
        trimmer = self.trimmer
        while True:
            await sleep(trimmer.retention.max_age / 4)
            first = trimmer.first
            if trimmer.expire(current_time()) != first:
                try:
                    await retrying(self.backend.append, self.job_id, (), trimmer.first)
                except JobLost:
                    self._fenced()
                    self.run.channel.cancel()  # its next report raises JobCancelled
                    return
