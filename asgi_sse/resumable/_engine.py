"""What the doors to job engines (:mod:`.celery`, :mod:`.rq`) share: the web side
that hands a job to the engine, and the worker side that runs one attempt of it.

The job's log is in Redis (:class:`RedisBackend`); its settings travel with
the task, so a worker needs nothing set up beyond the engine's own. The web
side records the job before the engine can start it, so a watcher may come at
once and is told ``queued``; each delivery of the task is an attempt
(:meth:`Jobs.perform`), and the log's claim decides whether it runs: a job
cancelled, abandoned or ended while it waited never does, whatever the engine
still delivers. No timer moves events: the worker's reports are appended as
they come, and watchers block on the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any

from anyio import to_thread
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from .._jobs import Job
from ._jobs import Jobs
from ._log import Retention
from ._store import BackendUnavailable
from .redis import RedisBackend

__all__ = ["EngineJobs", "Settings", "perform_attempt"]

logger = logging.getLogger("asgi_sse")


@dataclass(frozen=True)
class Settings:
    """How a job's log is kept, sent with each task so its worker keeps it alike."""

    prefix: str
    lease: float
    block: float
    retention: Mapping[str, Any]
    grace: float
    keep_running: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EngineJobs(Jobs):
    """:class:`Jobs` whose jobs a job engine runs. A subclass says how to hand a
    task to its engine (:meth:`_submit`), where it waits (:meth:`_position`)
    and how to withdraw one still waiting (:meth:`_withdraw`); all three are
    blocking calls of the engine's own client, run in a thread."""

    backend: RedisBackend

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "asgi-sse:",
        lease: float = 3.0,
        block: float = 1.0,
        retention: Retention | None = None,
        grace: float = 10.0,
    ) -> None:
        super().__init__(
            RedisBackend(client, prefix=prefix, lease=lease, block=block),
            retention=retention,
            grace=grace,
        )

    def _settings(self, keep_running: bool) -> Settings:
        backend = self.backend
        retention = asdict(self.retention)
        return Settings(
            backend.prefix, backend.lease, backend.block, retention, self.grace, keep_running
        )

    async def _enqueue(
        self,
        task: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        keep_running: bool,
        options: dict[str, Any],
    ) -> str:
        # A call that cannot work fails here, with a TypeError: checked against the
        # function the task runs (a Celery task's own signature takes anything).
        Job(self._function(task), *args, **kwargs)
        job_id = await self.create()  # watchable from now on, before any worker has it
        settings = self._settings(keep_running).to_dict()
        call = {
            "func": task,
            "job_id": job_id,
            "args": args,
            "kwargs": kwargs,
            "settings": settings,
        }
        try:
            await to_thread.run_sync(self._submit, call, options)
        except Exception as exc:
            with suppress(Exception):  # it will never run: its record ends here (JobCancelled)
                await self._cancel(job_id)
            if isinstance(exc, _UNREACHABLE):
                raise BackendUnavailable(f"the job engine cannot be reached: {exc}") from exc
            raise
        try:  # queued now: its place is news, not a condition of success
            position = await to_thread.run_sync(self._position, call, options)
            await self.note_queued(job_id, position)
        except Exception:
            logger.warning("job %s: could not tell its place in the queue", job_id, exc_info=True)
        return job_id

    async def cancel(self, job_id: str) -> bool:
        """As :meth:`Jobs.cancel`; a job still in the engine's queue is also
        taken out of it, so that no worker even starts it."""
        done = await self._cancel(job_id)
        if done == "ended":
            await to_thread.run_sync(self._withdraw, job_id)
        return done != "over"

    def _function(self, task: Any) -> Callable[..., Any]:
        """The blocking function that ``task`` runs (a TypeError if it is not one)."""
        raise NotImplementedError

    def _submit(self, call: dict[str, Any], options: dict[str, Any]) -> None:
        """Hand the engine a task that calls the worker side's ``perform(**call)``,
        with the engine's own ``options``, under the job's id: a TypeError for
        a call it cannot send, :class:`BackendUnavailable` if it is unreachable."""
        raise NotImplementedError

    def _position(self, call: dict[str, Any], options: dict[str, Any]) -> int | None:
        """The job's place in the engine's queue (1: next), if the engine can tell."""
        return None

    def _withdraw(self, job_id: str) -> None:
        raise NotImplementedError


_UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


async def perform_attempt(
    client: Redis,
    settings: Mapping[str, Any],
    job: Job[Any],
    job_id: str,
    *,
    redelivered: bool,
    retry_if: Callable[[BaseException], bool],
) -> Any:
    """One delivery of a task, in its worker: the job runs in a thread of this
    event loop and publishes to its log; returns its result or raises."""
    s = Settings(**settings)
    backend = RedisBackend(client, prefix=s.prefix, lease=s.lease, block=s.block)
    jobs = Jobs(backend, retention=Retention(**s.retention), grace=s.grace)
    try:
        return await jobs.perform(
            job, id=job_id, redelivered=redelivered, retry_if=retry_if, keep_running=s.keep_running
        )
    finally:
        await client.aclose()
