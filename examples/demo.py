"""The demo `make demo` serves: blocking jobs streamed to a browser, resumable.

Plain ASGI, no framework, so it shows the core alone. Each job is a blocking
pipeline in a worker thread of this process, run as a resumable job (`Jobs`, in
memory): it outlives its connection, and a client that reconnects with the id
of the last event it got receives the rest, nothing twice. The app-wide
middleware runs at most two jobs at once; the others wait in line and are told
their place (`queued` events), and /stats shows its live counters. The page
(examples/demo.html) starts a job on load; `?steps=40&delay=0.1` on its address
sets the pace of the jobs it starts.

    hypercorn examples.demo:app --worker-class trio --bind 127.0.0.1:8000
    curl -X POST 'http://127.0.0.1:8000/jobs?steps=10'      # 201 {"id": ..., "events": ...}
    curl -N http://127.0.0.1:8000/jobs/<id>/events          # add -H 'Last-Event-ID: 4' to resume
    curl -X POST http://127.0.0.1:8000/jobs/<id>/cancel     # {"cancelled": true}
    curl -N 'http://127.0.0.1:8000/progress?steps=10'       # a plain stream: no log, no resume
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter, stream_progress
from asgi_sse.resumable import JobLost, Jobs

STAGES = ["load", "tokenize", "embed", "cluster", "rank", "summarise"]
PAGE = (Path(__file__).parent / "demo.html").read_bytes()


class AnalysisPipeline:
    """Stands in for real blocking work: an LLM client, a CPU-heavy pipeline."""

    def execute(self, steps: int, delay: float, on_progress: Reporter) -> dict[str, Any]:
        for i in range(steps):
            time.sleep(delay)  # blocking on purpose: it runs in a worker thread
            on_progress(
                STAGES[i % len(STAGES)],
                {"done": i + 1, "total": steps, "percent": round(100 * (i + 1) / steps)},
            )
        return {"steps": steps, "summary": f"analysed in {steps} steps", "verdict": "très bien"}


# Jobs run in this process, and are kept in its memory: a finished job's log for five
# minutes, a running one for ten seconds after its last watcher left (then it is cancelled).
jobs = Jobs(grace=10)


async def routes(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    match scope["method"], scope["path"].strip("/").split("/"):
        case "GET", [""]:
            await respond(send, 200, PAGE, b"text/html; charset=utf-8")
        case "POST", ["jobs"]:
            await start(scope, send)
        case "GET", ["jobs", job_id, "events"]:
            # The watch resumes after the request's Last-Event-ID header (which a
            # browser's EventSource sends when it reconnects) or last_event_id parameter.
            watch = jobs.watch(job_id, retry=1000)
            await EventStream(watch, heartbeat=5)(scope, receive, send)
        case "POST", ["jobs", job_id, "cancel"]:
            await cancel(job_id, send)
        case "GET", ["progress"]:
            try:
                steps, delay = arguments(scope["query_string"])
            except ValueError as exc:
                await answer(send, 400, {"type": "InvalidArguments", "detail": str(exc)})
                return
            # One job per request, tied to it: closing the connection cancels it.
            await stream_progress(AnalysisPipeline().execute, steps, delay)(scope, receive, send)
        case "GET", ["stats"]:
            await answer(send, 200, dataclasses.asdict(app.stats))
        case _:
            await respond(send, 404, b"not found", b"text/plain")


async def lifespan(receive: Any, send: Any) -> None:
    """The jobs run in the task group of ``async with jobs``, for as long as the app serves."""
    await receive()  # lifespan.startup
    async with jobs:
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})


async def start(scope: Any, send: Any) -> None:
    """Start a job; its events are at once watchable, from the first."""
    try:
        steps, delay = arguments(scope["query_string"])
    except ValueError as exc:
        await answer(send, 400, {"type": "InvalidArguments", "detail": str(exc)})
        return
    job_id = await jobs.start(Job(AnalysisPipeline().execute, steps, delay))
    await answer(send, 201, {"id": job_id, "events": f"/jobs/{job_id}/events"})


async def cancel(job_id: str, send: Any) -> None:
    """Ask for the job's end. Its watchers learn of it from its log, which ends
    with ``error {"type": "JobCancelled"}``: that event, not this answer, says it
    happened. False: it had ended already."""
    try:
        cancelled = await jobs.cancel(job_id)
    except (JobLost, ValueError):  # unknown (or forgotten), or not an id at all
        await answer(send, 404, {"type": "JobNotFound"})
        return
    await answer(send, 200, {"cancelled": cancelled})


def arguments(query: bytes) -> tuple[int, float]:
    """Read and check the query before any job starts: bad input is a 400."""
    params = parse_qs(query.decode("latin-1"))
    problem = "steps must be a whole number from 1 to 500, delay a number of seconds from 0 to 5"
    try:
        steps = int(params.get("steps", ["20"])[0])
        delay = float(params.get("delay", ["0.3"])[0])
    except ValueError:
        raise ValueError(problem) from None
    if not (1 <= steps <= 500 and 0 <= delay <= 5):
        raise ValueError(problem)
    return steps, delay


async def answer(send: Any, status: int, body: dict[str, Any]) -> None:
    await respond(send, status, json.dumps(body).encode(), b"application/json")


async def respond(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The app-wide policy: one thread limiter, and two slots for the jobs (the resumable
# ones and /progress's) that others wait in line for; at most ten streams (watches
# included) open at once, max_streams + queue, past which a new one is refused with 503.
app = EventStreamMiddleware(routes, max_streams=2, queue=8, jobs=jobs)
