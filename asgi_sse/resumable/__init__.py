"""Resumable jobs: jobs that outlive their requests, watched by any number of
clients from their ``Last-Event-ID``, in this process or, with a shared backend
(:mod:`asgi_sse.resumable.redis`), from any process.

Built on the core and plugged into it as a source like any other: the core
never imports this package. The layers, bottom up: ``_log`` (sans-IO: ids,
``Last-Event-ID``, retention), ``_store`` (the backend interface and the
in-memory backend, ``_memory``), ``_publish`` (an attempt at a job, published
to its log), ``_jobs`` (where jobs start, run and are cancelled) and ``_watch``
(a client following a log). The job engines' doors, :mod:`.celery` and
:mod:`.rq`, are built on ``Jobs`` alone.
"""

from ._jobs import Jobs
from ._log import Retention
from ._memory import MemoryBackend
from ._publish import ABANDONED_ERROR, CANCELLED_ERROR
from ._store import Backend, BackendUnavailable, Claim, JobExists, JobInfo, JobLost, Page
from ._watch import Watch

__all__ = [
    "ABANDONED_ERROR",
    "CANCELLED_ERROR",
    "Backend",
    "BackendUnavailable",
    "Claim",
    "JobExists",
    "JobInfo",
    "JobLost",
    "Jobs",
    "MemoryBackend",
    "Page",
    "Retention",
    "Watch",
]
