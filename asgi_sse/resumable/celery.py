"""Resumable jobs run by Celery workers (``pip install 'asgi-sse[celery]'``).

The blocking function, ``func(*args, on_progress)``, becomes a Celery task with
one decorator, and each of its reports an event of the job's log::

    app = Celery("reports", broker=REDIS_URL)     # tasks.py, imported by both sides

    @progress_task(app)
    def build_report(pages: int, on_progress): ...

    jobs = CeleryJobs(app)                        # the web side
    job_id = await jobs.enqueue(build_report, pages=20)
    return EventStreamResponse(jobs.watch(job_id))

The log lives in Redis: the broker's, or ``app.conf.asgi_sse_redis_url`` for a
broker that is not Redis. The task's id is the job's, and the task stays a Celery
task: its result backend, ``AsyncResult(job_id)``, ``autoretry_for`` and
``acks_late`` work as usual, and ``build_report.delay(20)`` runs it with no log.
Pools that run tasks in processes or threads (prefork, threads, solo) are
supported; gevent and eventlet are not (each attempt runs an event loop).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import anyio

try:
    from celery import Celery, Task, states
    from celery.exceptions import Ignore, Retry
    from kombu.exceptions import EncodeError, OperationalError
    from redis import Redis as SyncRedis
    from redis.asyncio import Redis
except ImportError:  # pragma: no cover (the message is the point)
    raise ImportError(
        "asgi_sse.resumable.celery needs Celery: pip install 'asgi-sse[celery]'"
    ) from None

from .._exceptions import JobCancelled
from .._jobs import Job, _signature
from ._engine import EngineJobs, perform_attempt
from ._log import Retention
from ._store import BackendUnavailable, JobExists, JobLost

__all__ = ["CeleryJobs", "log_url", "progress_task"]

#: Task name: the function it runs, for every task made by :func:`progress_task`.
_PROGRESS: dict[str, Callable[..., Any]] = {}
_REDIS = ("redis://", "rediss://", "unix://")


def log_url(app: Celery) -> str:
    """Where both sides keep jobs' logs: configured once, on the Celery app."""
    url = app.conf.get("asgi_sse_redis_url") or app.conf.broker_url or ""
    if not url.startswith(_REDIS):
        raise ValueError(
            "asgi-sse keeps job logs in Redis: the broker is not Redis, so set"
            " app.conf.asgi_sse_redis_url = 'redis://...'"
        )
    return str(url)


def progress_task(app: Celery, **options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Make ``func(*args, on_progress, **kwargs)`` a Celery task of ``app`` (with
    Celery's task ``options``: ``autoretry_for``, ``acks_late``, ``queue``...)
    that :meth:`CeleryJobs.enqueue` streams."""

    def register(func: Callable[..., Any]) -> Task:
        _signature(func)  # not a blocking function that takes on_progress: a TypeError now
        name = options.pop("name", f"{func.__module__}.{func.__qualname__}")

        def run(
            self: Task, *args: Any, _asgi_sse: dict[str, Any] | None = None, **kwargs: Any
        ) -> Any:
            if _asgi_sse is None:  # a plain call (delay, a chain): there is no log
                return func(*args, on_progress=_unwatched, **kwargs)
            return _perform(self, app, Job(func, *args, **kwargs), **_asgi_sse)

        # Named as the function (Celery names the task's class after it), but not
        # wrapping it: Celery checks a call's arguments against the signature.
        run.__name__, run.__qualname__ = func.__name__, func.__qualname__
        run.__module__, run.__doc__ = func.__module__, func.__doc__
        _PROGRESS[name] = func
        task: Task = app.task(bind=True, name=name, **options)(run)
        return task

    return register


class _Unwatched:
    """The ``on_progress`` of a progress task called as a plain task."""

    cancelled = False

    def __call__(self, step: str, details: Any = None) -> None:
        pass


_unwatched = _Unwatched()


class CeleryJobs(EngineJobs):
    """:class:`~asgi_sse.resumable.Jobs` whose jobs Celery workers of ``app`` run
    (``prefix``, ``lease`` and ``block`` as for
    :class:`~asgi_sse.resumable.redis.RedisBackend`). ``grace``: a job nobody
    watches for that long is cancelled, and one that waited that long in the
    queue unwatched never runs."""

    def __init__(
        self,
        app: Celery,
        *,
        prefix: str = "asgi-sse:",
        lease: float = 3.0,
        block: float = 1.0,
        retention: Retention | None = None,
        grace: float = 10.0,
    ) -> None:
        self.app = app
        self._url = log_url(app)
        client = Redis.from_url(self._url)
        super().__init__(
            client, prefix=prefix, lease=lease, block=block, retention=retention, grace=grace
        )

    async def enqueue(self, task: Task, /, *args: Any, **kwargs: Any) -> str:
        """Send ``task`` (made by :func:`progress_task`) with these arguments and
        return the job's id, watchable at once: a watcher is told ``queued``
        (with its place, on a Redis broker) until a worker starts it. The
        arguments must suit the task's serializer (JSON by default). Raises
        :class:`BackendUnavailable` if Redis or the broker cannot be reached."""
        return await self.apply_async(task, args, kwargs)

    async def apply_async(
        self,
        task: Task,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        keep_running: bool = False,
        **options: Any,
    ) -> str:
        """:meth:`enqueue`, with Celery's own options (``queue``, ``countdown``,
        ``priority``...) as for ``Task.apply_async``."""
        if "task_id" in options:
            raise TypeError("the task id is asgi-sse's: apply_async returns it")
        return await self._enqueue(
            task, tuple(args), dict(kwargs or {}), keep_running=keep_running, options=options
        )

    def _function(self, task: Any) -> Callable[..., Any]:
        func = _PROGRESS.get(getattr(task, "name", None) or "")
        if func is None:
            raise TypeError(f"{task!r} is not a progress task: make it with @progress_task(app)")
        return func

    def _submit(self, call: dict[str, Any], options: dict[str, Any]) -> None:
        job = {"job_id": call["job_id"], "settings": call["settings"]}
        kwargs = {**call["kwargs"], "_asgi_sse": job}
        try:
            call["func"].apply_async(call["args"], kwargs, task_id=call["job_id"], **options)
        except EncodeError as exc:  # what the task's serializer (JSON by default) cannot hold
            raise TypeError(f"Celery cannot send this job to a worker: {exc}") from exc
        except OperationalError as exc:  # kombu's word for a broker it cannot reach
            raise BackendUnavailable(f"the Celery broker cannot be reached: {exc}") from exc

    def _position(self, call: dict[str, Any], options: dict[str, Any]) -> int | None:
        """Where a Redis broker holds it: the newest of its queue's list (kombu's
        Redis transport pushes on the left, workers take from the right). Its
        queue is the one Celery routes it to (``queue=``, the task's own,
        ``task_routes``), as ``apply_async`` does."""
        broker = self.app.conf.broker_url or ""
        if not broker.startswith(_REDIS):
            return None
        task = call["func"]
        given = {"queue": task.queue, **options} if getattr(task, "queue", None) else options
        route = self.app.amqp.router.route(dict(given), task.name, call["args"], call["kwargs"])
        queue = route.get("queue")
        name = getattr(queue, "name", queue) or self.app.conf.task_default_queue
        with SyncRedis.from_url(broker) as client:
            waiting = int(client.llen(name))
        return waiting or None  # 0: a worker took it meanwhile

    def _withdraw(self, job_id: str) -> None:
        self.app.control.revoke(job_id)


def _perform(task: Task, app: Celery, job: Job[Any], job_id: str, settings: dict[str, Any]) -> Any:
    """One delivery of a progress task, in its worker. Every delivery may take
    the job over: Celery delivers a task again after its worker died (or a
    broker's visibility timeout), and one whose publisher still renews its
    lease keeps the job (a delivery that waits at most a lease, then is ignored)."""
    client = Redis.from_url(log_url(app))
    retry_if = partial(_will_retry, task)
    try:
        return anyio.run(
            lambda: perform_attempt(
                client, settings, job, job_id, redelivered=True, retry_if=retry_if
            )
        )
    except JobCancelled:  # cancelled or abandoned: Celery's word for it is revoked
        with suppress(Exception):  # (a result backend that keeps no states)
            if task.backend.get_state(job_id) not in states.READY_STATES:  # (a late delivery)
                task.backend.mark_as_revoked(job_id, "JobCancelled", request=task.request)
        raise Ignore() from None
    except JobExists:  # another delivery has it, or had it to its end: its state stands
        raise Ignore() from None
    except JobLost as exc:  # never to run again: say so (unless it has ended), retry nothing
        with suppress(Exception):
            if task.backend.get_state(job_id) not in states.READY_STATES:  # a late redelivery
                task.backend.mark_as_failure(job_id, exc, request=task.request)
        raise Ignore() from None


def _will_retry(task: Task, exc: BaseException) -> bool:
    """Whether Celery's ``autoretry_for`` will run this failure again: as
    ``celery.app.autoretry`` decides, with the same limit (``retry_kwargs``'
    ``max_retries``, or one a retry has overridden, or the task's)."""
    if isinstance(exc, (Ignore, Retry, JobCancelled, JobExists, JobLost)):
        return False
    if not isinstance(exc, tuple(getattr(task, "autoretry_for", ()) or ())):
        return False
    if isinstance(exc, tuple(getattr(task, "dont_autoretry_for", ()) or ())):
        return False
    limit = (getattr(task, "retry_kwargs", None) or {}).get("max_retries")
    limit = getattr(task, "override_max_retries", limit)
    if limit is None:
        limit = task.max_retries
    return limit is None or task.request.retries < limit
