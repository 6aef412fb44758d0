"""Resumable jobs run by RQ workers (``pip install 'asgi-sse[rq]'``).

The blocking function, ``func(*args, on_progress)``, runs unchanged in a plain
``rq worker``: what RQ runs is :func:`perform`, which makes each of its reports
an event of the job's log. The log lives in the queue's own Redis, and its
settings travel with the job, so there is nothing to set up on the worker::

    queue = Queue("reports", connection=Redis.from_url(url))
    jobs = RQJobs(queue)
    job_id = await jobs.enqueue(build_report, pages=20)   # watchable at once
    return EventStreamResponse(jobs.watch(job_id))       # from any web process

An RQ job's id is the asgi-sse job's, so RQ's own tools (``rq info``,
``Job.fetch(job_id)``, its result) keep working as usual.
"""

from __future__ import annotations

import copy
import inspect
import pickle
from collections.abc import Callable
from contextlib import suppress
from typing import Any, cast

import anyio

try:
    import redis.asyncio as aioredis
    from redis import connection as sync_connection
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.retry import Retry as SyncRetry
    from rq import Queue, get_current_job
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import cancel_job
except ImportError:  # pragma: no cover (the message is the point)
    raise ImportError("asgi_sse.resumable.rq needs RQ: pip install 'asgi-sse[rq]'") from None

from .._exceptions import JobCancelled
from .._jobs import Job
from ._engine import EngineJobs, perform_attempt
from ._log import Retention
from ._store import JobExists, JobLost

__all__ = ["RQJobs", "perform"]


class RQJobs(EngineJobs):
    """:class:`~asgi_sse.resumable.Jobs` whose jobs RQ workers run, from
    ``queue``; their logs are kept in the queue's Redis (``prefix``, ``lease``
    and ``block`` as for :class:`~asgi_sse.resumable.redis.RedisBackend`).
    ``grace``: a job nobody watches for that long is cancelled, and one that
    waited that long in the queue unwatched never runs."""

    def __init__(
        self,
        queue: Queue,
        *,
        prefix: str = "asgi-sse:",
        lease: float = 3.0,
        block: float = 1.0,
        retention: Retention | None = None,
        grace: float = 10.0,
    ) -> None:
        client = _async_twin(queue.connection)
        super().__init__(
            client, prefix=prefix, lease=lease, block=block, retention=retention, grace=grace
        )
        self.queue = queue

    async def enqueue(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Put ``func(*args, on_progress, **kwargs)`` on the queue and return the
        job's id, watchable at once: a watcher is told its place in the queue
        (``queued``) until a worker starts it. ``func`` must be importable by
        the worker, its arguments picklable (RQ's default serializer). Raises
        :class:`BackendUnavailable` if Redis cannot be reached (answer 503)."""
        return await self.enqueue_call(func, args, kwargs)

    async def enqueue_call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        keep_running: bool = False,
        **options: Any,
    ) -> str:
        """:meth:`enqueue`, with RQ's own options (``retry=Retry(max=3)``,
        ``job_timeout``, ``result_ttl``...) as for ``Queue.enqueue_call``;
        ``keep_running`` as for :meth:`Jobs.start`."""
        if "job_id" in options:
            raise TypeError("the job id is asgi-sse's: enqueue_call returns it")
        return await self._enqueue(
            func, tuple(args), dict(kwargs or {}), keep_running=keep_running, options=options
        )

    def _submit(self, call: dict[str, Any], options: dict[str, Any]) -> None:
        try:
            self.queue.enqueue_call(perform, kwargs=call, job_id=call["job_id"], **options)
        except (TypeError, AttributeError, ValueError, pickle.PicklingError) as exc:  # pickle's
            raise TypeError(f"RQ cannot send this job to a worker: {exc}") from exc

    def _function(self, task: Any) -> Callable[..., Any]:
        if not callable(task):
            raise TypeError(f"RQ runs functions, got {task!r}")
        return cast("Callable[..., Any]", task)

    def _position(self, call: dict[str, Any], options: dict[str, Any]) -> int | None:
        index = self.queue.get_job_position(call["job_id"])
        return None if index is None else index + 1

    def _withdraw(self, job_id: str) -> None:
        with suppress(NoSuchJobError, InvalidJobOperation):  # started or gone meanwhile
            cancel_job(job_id, self.queue.connection)


def _async_twin(connection: Any) -> Redis:
    """An asyncio client to the server that a sync redis-py client talks to, the
    same way (TCP, TLS or a Unix socket) and with its settings."""
    pool = connection.connection_pool
    kind = pool.connection_class
    twin: type[AbstractConnection] = aioredis.Connection
    if issubclass(kind, sync_connection.UnixDomainSocketConnection):
        twin = aioredis.UnixDomainSocketConnection
    elif issubclass(kind, sync_connection.SSLConnection):
        twin = aioredis.SSLConnection
    known = {name for c in twin.__mro__ if "__init__" in vars(c) for name in _parameters(c)}
    given = pool.connection_kwargs
    kwargs = {name: value for name, value in given.items() if name in known}
    kwargs.pop("decode_responses", None)  # the log is bytes
    retry = kwargs.get("retry")
    if isinstance(retry, SyncRetry):  # the same policy, in the kind an asyncio client awaits
        backoff = copy.copy(retry._backoff)  # its own: a backoff may keep state
        errors, check = retry._supported_errors, getattr(retry, "_is_retryable", None)
        kwargs["retry"] = AsyncRetry(backoff, retry._retries, errors, *([check] if check else []))
    return Redis.from_pool(aioredis.ConnectionPool(connection_class=twin, **kwargs))  # owns it


def _parameters(cls: type) -> list[str]:
    return list(inspect.signature(cls.__init__).parameters)  # type: ignore[misc]


def perform(
    func: Callable[..., Any],
    job_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    settings: dict[str, Any],
) -> Any:
    """What an RQ worker runs for a job of :class:`RQJobs`: one attempt at it,
    its reports published as they come; returns its result for RQ to keep.

    A failure RQ will retry (``retry=Retry(...)``) says ``retrying`` in the
    log, and the next attempt continues it; every delivery takes the job
    over, since RQ runs a job once at a time. A cancelled job is not retried.
    """
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("asgi_sse.resumable.rq.perform runs in an RQ worker")

    def retry_if(exc: BaseException) -> bool:
        # Not a job stopped, nor an attempt refused (its job has ended, or is gone).
        ours = isinstance(exc, (JobCancelled, JobExists, JobLost))
        return not ours and (rq_job.retries_left or 0) > 0

    client = _async_twin(rq_job.connection)
    job = Job(func, *args, **kwargs)
    try:
        return anyio.run(
            lambda: perform_attempt(
                client, settings, job, job_id, redelivered=True, retry_if=retry_if
            )
        )
    except Exception as exc:
        if not retry_if(exc):
            rq_job.retries_left = 0  # stopped, or not to be run again: RQ must not retry it
        raise
