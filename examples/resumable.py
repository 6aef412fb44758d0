"""Resumable jobs over plain ASGI: start a job, watch it, reconnect and resume.

With ``ASGI_SSE_REDIS_URL`` set, jobs live in Redis: any number of these
processes serve any job, and ``POST /jobs?worker=1`` leaves the job to a worker
process (``examples/resumable_worker.py``) instead of running it here.

    ASGI_SSE_REDIS_URL=redis://127.0.0.1:6379/0 hypercorn examples.resumable:app -w 2
    curl -X POST 'http://127.0.0.1:8000/jobs?steps=20'            # {"id": ..., "events": ...}
    curl -N -H 'Last-Event-ID: 5' http://127.0.0.1:8000/jobs/<id>/events
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

from asgi_sse import EventStream, Job, Reporter
from asgi_sse.resumable import Jobs, Retention

QUEUE = "asgi-sse-example:queue"  # where the web processes hand jobs to workers


def crunch(steps: int, interval: float, on_progress: Reporter) -> dict[str, int]:
    """Stands in for real blocking work."""
    for i in range(1, steps + 1):
        time.sleep(interval)  # blocking on purpose: it runs in a worker thread
        on_progress("step", {"i": i, "of": steps})
    return {"steps": steps}


def make_jobs() -> Jobs:
    """The backend from the environment: Redis if a URL is given, else memory."""
    retention = Retention(
        max_events=int(os.environ.get("ASGI_SSE_MAX_EVENTS", "1000")),
        max_age=float(os.environ.get("ASGI_SSE_MAX_AGE", "300")),
    )
    grace = float(os.environ.get("ASGI_SSE_GRACE", "10"))
    url = os.environ.get("ASGI_SSE_REDIS_URL")
    if not url:
        return Jobs(retention=retention, grace=grace)
    from redis.asyncio import Redis  # noqa: PLC0415 (only with Redis configured)

    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    lease = float(os.environ.get("ASGI_SSE_LEASE", "3"))
    client = Redis.from_url(url, max_connections=1000)  # about three per open stream
    backend = RedisBackend(client, lease=lease, block=min(1.0, lease, socket_timeout(client) / 2))
    return Jobs(backend, retention=retention, grace=grace)


def socket_timeout(client: Any) -> float:
    """A blocking read (BLPOP, XREAD) must give up within redis-py's socket timeout,
    if the URL sets one (``?socket_timeout=``), or it raises: it comes back empty,
    and is asked again."""
    return float(client.connection_pool.connection_kwargs.get("socket_timeout") or 10.0)


jobs = make_jobs()
RETRY_MS = int(os.environ.get("ASGI_SSE_RETRY_MS", "1000"))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    parts = scope["path"].strip("/").split("/")
    if scope["method"] == "POST" and parts == ["jobs"]:
        await start(scope, send)
    elif scope["method"] == "GET" and len(parts) == 3 and parts[::2] == ["jobs", "events"]:
        await EventStream(jobs.watch(parts[1], retry=RETRY_MS), heartbeat=5)(scope, receive, send)
    else:
        await answer(send, 404, {"type": "NotFound"})


async def lifespan(receive: Any, send: Any) -> None:
    """Jobs run in the task group of ``async with jobs``, for as long as the app serves."""
    await receive()  # lifespan.startup
    async with jobs:
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})


async def start(scope: dict[str, Any], send: Any) -> None:
    query = parse_qs(scope["query_string"].decode())
    try:
        steps = int(query.get("steps", ["10"])[0])
        interval = float(query.get("interval", ["0.2"])[0])
    except ValueError:
        await answer(send, 422, {"type": "BadQuery"})
        return
    if query.get("worker") == ["1"]:  # a worker process runs it; it is watchable at once
        job_id = await jobs.create()
        task = {"id": job_id, "steps": steps, "interval": interval}
        await jobs.backend.client.rpush(QUEUE, json.dumps(task))  # type: ignore[attr-defined]
    else:
        job_id = await jobs.start(Job(crunch, steps, interval))
    await answer(send, 201, {"id": job_id, "events": f"/jobs/{job_id}/events"})


async def answer(send: Any, status: int, body: dict[str, Any]) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
