"""Stream the progress of blocking work to browsers as Server-Sent Events, from any ASGI app.

The layers, bottom up: ``_events`` and ``_encoder`` are sans-IO (the event model
and the wire format); ``_bridge`` carries encoded events from worker threads to
the event loop over anyio memory object streams; ``_jobs`` runs a source (a
blocking job or an iterable) into that bridge; ``_response`` is the only module
that speaks ASGI.
"""

from ._encoder import HEARTBEAT, Encoder
from ._events import ServerSentEvent
from ._exceptions import JobCancelled
from ._jobs import DEFAULT_THREADS, Job, Reporter, Source, default_error_data, default_limiter
from ._response import DEFAULT_BUFFER_BYTES, EventStream, stream_progress

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_THREADS",
    "HEARTBEAT",
    "Encoder",
    "EventStream",
    "Job",
    "JobCancelled",
    "Reporter",
    "ServerSentEvent",
    "Source",
    "default_error_data",
    "default_limiter",
    "stream_progress",
]
