"""Resumable jobs: jobs that outlive their requests, watched by any number of
clients from their ``Last-Event-ID``, in this process or, with a shared backend
(:mod:`asgi_sse.resumable.redis`), from any process.

Built on the core and plugged into it as a source like any other: the core
never imports this package. The layers, bottom up: ``_log`` (sans-IO: ids,
``Last-Event-ID``, retention), ``_store`` (the backend interface and the
in-memory backend), ``_jobs`` (publishing a job's run to a backend) and
``_watch`` (a client following a log).
"""

from ._jobs import ABANDONED_ERROR, Jobs
from ._log import Retention
from ._store import Backend, BackendUnavailable, JobExists, JobInfo, JobLost, MemoryBackend, Page
from ._watch import Watch

__all__ = [
    "ABANDONED_ERROR",
    "Backend",
    "BackendUnavailable",
    "JobExists",
    "JobInfo",
    "JobLost",
    "Jobs",
    "MemoryBackend",
    "Page",
    "Retention",
    "Watch",
]
