"""The distributed example: Celery workers run the jobs, any number of web
processes stream them, a browser resumes from wherever it was cut off.

    make demo-distributed        # redis-server, a Celery worker, two hypercorn processes

or by hand, with a redis-server on REDIS_URL:

    celery -A examples.celery_app worker --concurrency 2
    hypercorn examples.distributed:app --bind 127.0.0.1:8000 --workers 2

    curl -X POST 'http://127.0.0.1:8000/jobs?pages=10'         # 201 {"id": ..., "events": ...}
    curl -N http://127.0.0.1:8000/jobs/<id>/events             # from any process, resumable
    curl -X POST http://127.0.0.1:8000/jobs/<id>/cancel
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from asgi_sse.resumable import BackendUnavailable, JobLost
from asgi_sse.resumable.celery import CeleryJobs
from asgi_sse_starlette import EventStreamResponse
from examples.celery_app import app as celery
from examples.celery_app import build_report

jobs = CeleryJobs(celery, grace=30)
PAGE = (Path(__file__).parent / "distributed.html").read_text()


async def start(request: Request) -> Response:
    try:
        pages = int(request.query_params.get("pages", "10"))
    except ValueError:
        return JSONResponse({"type": "BadQuery"}, status_code=422)
    try:
        job_id = await jobs.enqueue(build_report, pages)
    except BackendUnavailable:  # Redis or the broker is down: say when to try again
        return JSONResponse(
            {"type": "BackendUnavailable"}, status_code=503, headers={"retry-after": "1"}
        )
    return JSONResponse({"id": job_id, "events": f"/jobs/{job_id}/events"}, status_code=201)


async def events(request: Request) -> EventStreamResponse:
    return EventStreamResponse(jobs.watch(request.path_params["id"], retry=500))


async def cancel(request: Request) -> JSONResponse:
    try:
        return JSONResponse({"cancelled": await jobs.cancel(request.path_params["id"])})
    except JobLost:
        return JSONResponse({"type": "JobNotFound"}, status_code=404)


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


app = Starlette(
    routes=[
        Route("/", page),
        Route("/jobs", start, methods=["POST"]),
        Route("/jobs/{id}/events", events),
        Route("/jobs/{id}/cancel", cancel, methods=["POST"]),
    ]
)
