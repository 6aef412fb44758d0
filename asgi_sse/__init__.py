"""Stream the progress of blocking work to browsers as Server-Sent Events, from any ASGI app.

The layers, bottom up: ``_events`` and ``_encoder`` are sans-IO (the event model
and the wire format); ``_bridge`` hands encoded events from worker threads to
the event loop; ``_run`` is what a stream runs (the source protocol, the run
options), implemented by ``_jobs`` (a blocking job) and ``_items`` (iterables);
``_hub`` holds app-wide policy (admission, counters, shutdown) without knowing
ASGI. On top, speaking ASGI: ``_exchange`` (one request's stream), ``_response``
(the stream's options and doors), ``_middleware`` (the hub in every scope,
lifespan) and ``_app`` (a blocking function as a whole app). Resumable jobs
are a layer of their own on top of these: :mod:`asgi_sse.resumable`.
"""

from ._app import progress_app
from ._encoder import Encoder
from ._events import ServerSentEvent
from ._exceptions import JobCancelled
from ._http import Headers, Refusal
from ._hub import Stats
from ._jobs import Job, Reporter
from ._middleware import EventStreamMiddleware
from ._response import EventStream, Source, StreamOptions, stream_progress
from ._run import default_error_data, default_limiter

__all__ = [
    "Encoder",
    "EventStream",
    "EventStreamMiddleware",
    "Headers",
    "Job",
    "JobCancelled",
    "Refusal",
    "Reporter",
    "ServerSentEvent",
    "Source",
    "Stats",
    "StreamOptions",
    "default_error_data",
    "default_limiter",
    "progress_app",
    "stream_progress",
]
