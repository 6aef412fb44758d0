"""asgi-sse and the floor, each served by hypercorn as ``benchmarks.apps:NAME``.

Every implementation (these and ``alternatives.py``) streams the same job and
emits the same events, so one client checks them all:

- ``event: progress`` with an ``id`` and ``data: {"step":"step","details":{"i":I,"t":T}}``,
  where ``i`` counts from 0 in the job and ``t`` is ``time.monotonic_ns()`` taken in
  the worker thread as the job reports;
- then ``event: completed`` with ``data: {"events":N,"done":T}``, ``done`` taken when
  the job returns (the slow-reader scenario compares it with the client's clock);
- comments (``:``) as heartbeats, when ``hb`` asks for them.

The query string sets the job: ``n`` events, ``interval`` seconds of sleep after
each, ``hold`` seconds of sleep before returning, ``hb`` heartbeat seconds (0: the
tool's default). ``BENCH_THREADS`` in the environment sizes the worker threads
(unset: the tool's default), the same for every implementation in a run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import msgspec
from anyio import CapacityLimiter
from litestar import Litestar, get
from quart import Quart, request

from asgi_sse import EventStream, EventStreamMiddleware, Job, StreamOptions
from asgi_sse._run import DEFAULT_BUFFER_BYTES
from asgi_sse_litestar import EventStreamResponse as LitestarEventStream
from asgi_sse_quart import EventStreamResponse as QuartEventStream

BUFFER = int(os.environ.get("ASGI_SSE_BUFFER", str(DEFAULT_BUFFER_BYTES)))
THREADS = int(os.environ.get("BENCH_THREADS", "0"))
ProgressCallback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Params:
    n: int = 1000
    interval: float = 0.0
    hold: float = 0.0
    hb: float = 0.0

    @classmethod
    def parse(cls, query: bytes | str) -> Params:
        text = query.decode() if isinstance(query, bytes) else query
        fields = {k: v[0] for k, v in parse_qs(text).items()}
        return cls(
            n=int(fields.get("n", cls.n)),
            interval=float(fields.get("interval", cls.interval)),
            hold=float(fields.get("hold", cls.hold)),
            hb=float(fields.get("hb", cls.hb)),
        )


def job(params: Params, on_progress: ProgressCallback) -> dict[str, int]:
    """The blocking job every implementation runs."""
    for i in range(params.n):
        on_progress("step", {"i": i, "t": time.monotonic_ns()})
        if params.interval:
            time.sleep(params.interval)
    if params.hold:
        time.sleep(params.hold)
    return {"events": params.n, "done": time.monotonic_ns()}


async def lifespan(receive: Any, send: Any) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


# -- asgi-sse ----------------------------------------------------------------------

_limiter: CapacityLimiter | None = None


def _options(params: Params) -> StreamOptions:
    """The stream's options for this run: defaults unless the run sets them."""
    global _limiter
    options: StreamOptions = {"max_buffer_bytes": BUFFER}
    if THREADS:
        _limiter = _limiter or CapacityLimiter(THREADS)  # created on the loop, once
        options["limiter"] = _limiter
    if params.hb:
        options["heartbeat"] = params.hb
    return options


async def asgi_sse(scope: Any, receive: Any, send: Any) -> None:
    """Raw ASGI: the response is the app."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    params = Params.parse(scope["query_string"])
    await EventStream(Job(job, params), **_options(params))(scope, receive, send)
    return None


# Under the app-wide middleware: as many running streams as threads (40 by
# default), up to 1000 more waiting, each told its place in line (``queued`` events).
asgi_sse_middleware = EventStreamMiddleware(
    asgi_sse, threads=THREADS or 40, max_streams=THREADS or 40, queue=1000
)


def _observed() -> EventStreamMiddleware:
    """The same, observed by both of asgi_sse.metrics: Prometheus metrics, and an
    OpenTelemetry SDK tracer recording every span (exported nowhere: the cost of
    recording, not of a collector)."""
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from asgi_sse.metrics.otel import OpenTelemetryTracing  # noqa: PLC0415
    from asgi_sse.metrics.prometheus import PrometheusMetrics  # noqa: PLC0415

    observers = [
        PrometheusMetrics(registry=CollectorRegistry()),
        OpenTelemetryTracing(tracer_provider=TracerProvider()),
    ]
    threads = THREADS or 40
    return EventStreamMiddleware(
        asgi_sse, threads=threads, max_streams=threads, queue=1000, observers=observers
    )


asgi_sse_observed = _observed()


@get("/")
async def _litestar_handler(
    n: int = 1000, interval: float = 0.0, hold: float = 0.0, hb: float = 0.0
) -> Any:
    params = Params(n, interval, hold, hb)
    return LitestarEventStream(Job(job, params), **_options(params))


asgi_sse_litestar = Litestar([_litestar_handler])

asgi_sse_quart = Quart(__name__)


@asgi_sse_quart.get("/")
async def _quart_handler() -> Any:
    params = Params.parse(request.query_string)
    return QuartEventStream(Job(job, params), **_options(params))


# -- the floor: hand-written for this one job, the yardstick -------------------------

_encode = msgspec.json.Encoder().encode
_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


async def floor(scope: Any, receive: Any, send: Any) -> None:
    """Thread per request, events encoded in the worker, everything queued in one send.

    No limiter, no backpressure, no disconnect handling: only speed. Heartbeats
    only when ``hb`` asks, so the fast path stays bare.
    """
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    params = Params.parse(scope["query_string"])
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    async for batch in relay(params):
        if batch:
            await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
        else:
            await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return None


async def relay(params: Params) -> AsyncIterator[list[bytes]]:
    """The hand-written floor's hand-off: the job in a thread of its own, its frames
    batched under a lock, the loop woken only when it waits. Yields every batch, and
    an empty one after ``hb`` seconds without any (a heartbeat is due)."""
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    pending: list[bytes] = []
    wake = asyncio.Event()
    state = {"waiting": False, "done": False}

    def push(chunk: bytes, last: bool = False) -> None:
        with lock:
            pending.append(chunk)
            state["done"] = last  # with the last chunk, in one step: the loop sees both or neither
            if not state["waiting"]:
                return
            state["waiting"] = False
        loop.call_soon_threadsafe(wake.set)

    def run() -> None:
        counter = 0

        def on_progress(step: str, details: dict[str, Any]) -> None:
            nonlocal counter
            counter += 1
            data = _encode({"step": step, "details": details})
            push(b"event: progress\nid: %d\ndata: %b\n\n" % (counter, data))

        result = job(params, on_progress)
        push(b"event: completed\nid: %d\ndata: %b\n\n" % (counter + 1, _encode(result)), last=True)

    threading.Thread(target=run, daemon=True).start()
    while True:
        with lock:
            batch = pending[:]
            pending.clear()
            if not batch:
                if state["done"]:
                    return
                state["waiting"] = True
                wake.clear()
        if batch:
            yield batch
        elif not params.hb:
            await wake.wait()
        else:
            try:
                await asyncio.wait_for(wake.wait(), params.hb)
            except asyncio.TimeoutError:
                yield []
