"""The app of the metrics tests: jobs that complete, fail, or wait at a gate,
under a middleware that allows one running stream and one waiting, reporting
to Prometheus metrics served at ``/metrics`` (prometheus_client's own ASGI app).

    GET  /jobs/ok | /jobs/fails | /jobs/gate    an event stream
    GET  /jobs/floods                           endless, for a client that stops reading
    POST /gate                                  opens the gate
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, make_asgi_app

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter
from asgi_sse.metrics.prometheus import PrometheusMetrics

BOUND = 10.0
GATE = threading.Event()
registry = CollectorRegistry()
metrics = make_asgi_app(registry)


def ok(on_progress: Reporter) -> dict[str, int]:
    for i in range(3):
        on_progress("step", {"i": i})
    return {"n": 3}


def fails(on_progress: Reporter) -> None:
    on_progress("step", {})
    raise ValueError("a secret")


def gate(on_progress: Reporter) -> str:
    on_progress("started", {})
    if not GATE.wait(BOUND):
        raise TimeoutError("the test never opened the gate")
    on_progress("after", {})  # a job whose client left is stopped here
    return "through"


def floods(on_progress: Reporter) -> None:
    while True:  # until its client stops reading and the send times out: JobCancelled
        on_progress("step", {"pad": "x" * 1000})


JOBS = {"ok": ok, "fails": fails, "gate": gate, "floods": floods}


async def routes(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/metrics":
        await metrics(scope, receive, send)
    elif path == "/gate":
        GATE.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/jobs/floods":  # a client that stops reading is given up on quickly
        stream = EventStream(Job(floods), send_timeout=0.2, max_buffer_bytes=4096)
        await stream(scope, receive, send)
    else:
        await EventStream(Job(JOBS[path.rsplit("/", 1)[-1]]))(scope, receive, send)


app = EventStreamMiddleware(
    routes, max_streams=1, queue=1, observers=[PrometheusMetrics(registry=registry)]
)
