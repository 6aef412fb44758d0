"""Stream the progress of blocking work to browsers as Server-Sent Events, from any ASGI app.

The layers, bottom up: ``_events`` and ``_encoder`` are sans-IO (the event model
and the wire format); ``_bridge`` carries encoded events from worker threads to
the event loop over anyio memory object streams; ``_jobs`` runs a source (a
blocking job or an iterable) into that bridge; ``_hub`` holds app-wide policy
(admission, counters, shutdown) without knowing ASGI. Resumable jobs add
``_log`` (sans-IO: ids, ``Last-Event-ID``, retention), ``_store`` (the backend
interface and the in-memory backend; ``asgi_sse.redis`` is another) and
``_resumable`` (publishing a job to a backend, following it). On top, speaking
ASGI: ``_response`` (the stream), ``_middleware`` (the hub in every scope,
lifespan) and ``_app`` (a blocking function as a whole app).
"""

from ._app import progress_app
from ._encoder import HEARTBEAT, Encoder
from ._events import ServerSentEvent
from ._exceptions import JobCancelled
from ._http import Headers, Refusal
from ._hub import Stats
from ._jobs import DEFAULT_THREADS, Job, Reporter, default_error_data, default_limiter
from ._log import Retention
from ._middleware import EventStreamMiddleware
from ._response import (
    DEFAULT_BUFFER_BYTES,
    SHUTDOWN_ERROR,
    EventStream,
    Source,
    StreamOptions,
    stream_progress,
)
from ._resumable import ABANDONED_ERROR, Jobs
from ._store import Backend, BackendUnavailable, JobExists, JobInfo, JobLost, MemoryBackend, Page
from ._watch import Watch

__all__ = [
    "ABANDONED_ERROR",
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_THREADS",
    "HEARTBEAT",
    "SHUTDOWN_ERROR",
    "Backend",
    "BackendUnavailable",
    "Encoder",
    "EventStream",
    "EventStreamMiddleware",
    "Headers",
    "Job",
    "JobCancelled",
    "JobExists",
    "JobInfo",
    "JobLost",
    "Jobs",
    "MemoryBackend",
    "Page",
    "Refusal",
    "Reporter",
    "Retention",
    "ServerSentEvent",
    "Source",
    "Stats",
    "StreamOptions",
    "Watch",
    "default_error_data",
    "default_limiter",
    "progress_app",
    "stream_progress",
]
