"""Resumable jobs under each framework: jobs entered in the app's own lifespan,
a handler that starts one and one that follows it through the adapter's response,
over a real socket. The status a reconnect gets (200, 204, 400, 404) comes
through every adapter unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from conftest import BOUND, parse, serve
from litestar import Request as LitestarRequest

from asgi_sse import Job, Reporter
from asgi_sse.resumable import Jobs
from asgi_sse_litestar import EVENT_STREAM
from asgi_sse_litestar import (
    EventStreamResponse as LitestarResponse,  # Litestar reads its annotations
)


def work(n: int, on_progress: Reporter) -> dict[str, int]:
    for i in range(n):
        on_progress("step", {"i": i})
    return {"done": n}


def starlette_app(jobs: Jobs) -> Any:
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from asgi_sse_starlette import EventStreamResponse  # noqa: PLC0415

    async def start(request: Request) -> JSONResponse:
        return JSONResponse({"id": await jobs.start(Job(work, 5))})

    async def events(request: Request) -> EventStreamResponse:
        return EventStreamResponse(jobs.watch(request.path_params["job_id"]))

    routes = [Route("/jobs", start, methods=["POST"]), Route("/jobs/{job_id}/events", events)]
    return Starlette(routes=routes, lifespan=lambda app: jobs)


def fastapi_app(jobs: Jobs) -> Any:
    from fastapi import FastAPI  # noqa: PLC0415

    from asgi_sse_starlette import EventStreamResponse  # noqa: PLC0415

    app = FastAPI(lifespan=lambda app: jobs)

    @app.post("/jobs")
    async def start() -> dict[str, str]:
        return {"id": await jobs.start(Job(work, 5))}

    @app.get("/jobs/{job_id}/events", response_class=EventStreamResponse)
    async def events(job_id: str) -> EventStreamResponse:
        return EventStreamResponse(jobs.watch(job_id))

    return app


def litestar_app(jobs: Jobs) -> Any:
    from litestar import Litestar, get, post  # noqa: PLC0415

    @post("/jobs", status_code=200)
    async def start() -> dict[str, str]:
        return {"id": await jobs.start(Job(work, 5))}

    @get("/jobs/{job_id:str}/events", media_type=EVENT_STREAM)
    async def events(request: LitestarRequest) -> LitestarResponse:
        return LitestarResponse(jobs.watch(request.path_params["job_id"]))

    return Litestar([start, events], lifespan=[lambda app: jobs])


def quart_app(jobs: Jobs) -> Any:
    from quart import Quart, Response  # noqa: PLC0415

    from asgi_sse_quart import EventStreamResponse  # noqa: PLC0415

    app = Quart(__name__)

    @app.while_serving
    async def run_jobs() -> AsyncIterator[None]:
        async with jobs:
            yield

    @app.post("/jobs")
    async def start() -> dict[str, str]:
        return {"id": await jobs.start(Job(work, 5))}

    @app.get("/jobs/<job_id>/events")
    async def events(job_id: str) -> Response:
        return await EventStreamResponse.resume(jobs.watch(job_id))

    return app


@pytest.mark.parametrize(
    "make_app",
    [starlette_app, fastapi_app, litestar_app, quart_app],
    ids=["starlette", "fastapi", "litestar", "quart"],
)
def test_a_reconnect_resumes_through_the_adapter(make_app: Callable[[Jobs], Any]) -> None:
    with serve(make_app(Jobs()), wrap=False) as server, httpx.Client(timeout=BOUND) as client:
        base = server.url.rstrip("/")
        job_id = client.post(f"{base}/jobs").json()["id"]
        url = f"{base}/jobs/{job_id}/events"

        first = client.get(url)
        assert first.status_code == 200
        assert first.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = parse(first.content)
        assert [e["id"] for e in events] == ["1", "2", "3", "4", "5", "6"]
        assert events[-1]["event"] == "completed"

        rest = client.get(url, headers={"last-event-id": "3"})
        assert rest.status_code == 200
        assert [(e["id"], e["event"]) for e in parse(rest.content)] == [
            ("4", "progress"),
            ("5", "progress"),
            ("6", "completed"),
        ]

        done = client.get(url, headers={"last-event-id": "6"})
        assert (done.status_code, done.content) == (204, b"")

        forged = client.get(url, headers={"last-event-id": "7"})
        assert forged.status_code == 400
        assert forged.json()["type"] == "BadLastEventId"

        unknown = client.get(f"{base}/jobs/no-such-job/events")
        assert unknown.status_code == 404
        assert unknown.json()["type"] == "JobNotFound"


def test_quart_refuses_a_watch_built_without_its_status() -> None:
    from quart import Quart  # noqa: PLC0415

    from asgi_sse_quart import EventStreamResponse  # noqa: PLC0415

    app = Quart(__name__)

    async def check() -> None:
        async with app.test_request_context("/"):
            with pytest.raises(TypeError, match="resume"):
                EventStreamResponse(Jobs().watch("some-job"))

    import anyio  # noqa: PLC0415

    anyio.run(check)
