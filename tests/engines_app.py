"""The web side of the engine tests: enqueue a job of ``engine_tasks`` on a real
job engine, cancel it, and watch it, over plain ASGI under a real server.

    POST /jobs?task=steps&tag=t&n=5[&queue=q][&retry=1]   201 {"id": ...}
    (every route takes queue=, grace=, lease= and max_age=: one RQJobs for each)
    POST /jobs/<id>/cancel                                200 {"cancelled": bool}
    GET  /jobs/<id>/events                                the job's events

``ENGINE`` picks the engine (``rq`` or ``celery``), ``ENGINE_TEST_REDIS`` its Redis.
``retry=n`` asks RQ for n retries; Celery's are the task's own (``celery_tasks``).
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any
from urllib.parse import parse_qs

import engine_tasks
from redis import Redis
from rq import Queue, Retry

from asgi_sse import EventStream
from asgi_sse.resumable import BackendUnavailable, JobLost, Retention
from asgi_sse.resumable.celery import CeleryJobs
from asgi_sse.resumable.rq import RQJobs

URL = os.environ["ENGINE_TEST_REDIS"]
ENGINE = os.environ["ENGINE"]
GRACE = 10.0


@cache
def engine_jobs(queue: str, grace: float, lease: float, max_age: float) -> RQJobs | CeleryJobs:
    block, retention = min(lease, 0.5), Retention(max_age=max_age)
    if ENGINE == "rq":
        rq_queue = Queue(queue, connection=Redis.from_url(URL))
        return RQJobs(rq_queue, lease=lease, block=block, grace=grace, retention=retention)
    import celery_tasks  # noqa: PLC0415 (its app needs the URL, set for the celery engine only)

    app = celery_tasks.app
    return CeleryJobs(app, lease=lease, block=block, grace=grace, retention=retention)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    parts = scope["path"].strip("/").split("/")
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    grace, lease = float(query.get("grace", GRACE)), float(query.get("lease", 3))
    jobs = engine_jobs(
        query.get("queue", "default"), grace, lease, float(query.get("max_age", 300))
    )
    if scope["method"] == "POST" and parts == ["jobs"]:
        await enqueue(jobs, query, send)
    elif scope["method"] == "POST" and len(parts) == 3 and parts[::2] == ["jobs", "cancel"]:
        try:
            await answer(send, 200, {"cancelled": await jobs.cancel(parts[1])})
        except JobLost:
            await answer(send, 404, {"type": "JobNotFound"})
    elif scope["method"] == "GET" and len(parts) == 3 and parts[::2] == ["jobs", "events"]:
        await EventStream(jobs.watch(parts[1]), heartbeat=5)(scope, receive, send)
    else:
        await answer(send, 404, {"type": "NotFound"})


async def enqueue(jobs: RQJobs | CeleryJobs, query: dict[str, str], send: Any) -> None:
    args: list[Any] = [query["tag"]]
    if "n" in query:
        args.append(int(query["n"]))
    if query.get("arg") == "unserializable":
        args.append(lambda: None)  # neither pickle (RQ) nor JSON (Celery) can send it
    try:
        if isinstance(jobs, RQJobs):
            func = getattr(engine_tasks, query["task"])
            options = {"retry": Retry(max=int(query["retry"]))} if "retry" in query else {}
            job_id = await jobs.enqueue_call(func, tuple(args), **options)
        else:
            import celery_tasks  # noqa: PLC0415

            name = query["task"] + (
                "_redelivered" if query["task"] == "hangs" and "retry" in query else ""
            )
            task = getattr(celery_tasks, name)
            job_id = await jobs.apply_async(task, tuple(args), queue=query.get("queue", "default"))
    except TypeError as exc:
        await answer(send, 422, {"type": "TypeError", "detail": str(exc)})
        return
    except BackendUnavailable:
        await answer(send, 503, {"type": "BackendUnavailable"})
        return
    await answer(send, 201, {"id": job_id})


async def answer(send: Any, status: int, body: dict[str, Any]) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
