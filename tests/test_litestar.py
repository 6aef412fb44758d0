"""The Litestar adapter, over a real socket: a Litestar app under hypercorn, httpx as the client."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from conftest import BOUND, Endless, serve
from httpx_sse import connect_sse
from litestar import Litestar, Response, get
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import Cookie, ResponseHeader
from litestar.params import FromQuery

from asgi_sse import Encoder, Job, Reporter, ServerSentEvent, Source
from asgi_sse_litestar import EVENT_STREAM, EventStreamResponse


def work(n: int, on_progress: Reporter) -> dict[str, int]:
    for i in range(n):
        on_progress("step", {"i": i})
    return {"steps": n}


def events_from(app: Litestar, path: str = "") -> list[tuple[str, Any]]:
    with (
        serve(app, wrap=False) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url + path) as source,
    ):
        assert source.response.status_code == 200
        assert source.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        return [(e.event, json.loads(e.data)) for e in source.iter_sse()]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_handler_streams_a_jobs_progress_and_result(backend: str) -> None:
    @get("/")
    async def progress(n: FromQuery[int]) -> EventStreamResponse:
        return EventStreamResponse(Job(work, n))

    @get("/broken")
    async def broken() -> EventStreamResponse:
        return EventStreamResponse(Job(work, wrong="argument"))

    app = Litestar([progress, broken])
    with serve(app, wrap=False, backend=backend) as server, httpx.Client(timeout=BOUND) as client:
        with connect_sse(client, "GET", server.url + "?n=3") as source:
            events = [(e.event, e.id, json.loads(e.data)) for e in source.iter_sse()]
        # Bad arguments fail in the handler: a real HTTP error, not a 200 with no events.
        broken_response = client.get(server.url + "broken")
    assert events == [
        ("progress", "1", {"step": "step", "details": {"i": 0}}),
        ("progress", "2", {"step": "step", "details": {"i": 1}}),
        ("progress", "3", {"step": "step", "details": {"i": 2}}),
        ("completed", "4", {"steps": 3}),
    ]
    assert broken_response.status_code == 500
    assert "text/event-stream" not in broken_response.headers.get("content-type", "")


async def ticks() -> AsyncIterator[object]:
    yield ServerSentEvent(data={"tick": 1}, event="tick")
    yield {"tick": 2}


def countdown() -> Iterator[object]:
    yield ServerSentEvent(data={"left": 1}, event="tick")
    yield {"left": 0}
    return "liftoff"


@pytest.mark.parametrize(
    ("make_source", "result"), [(ticks, None), (countdown, "liftoff")], ids=["async", "sync"]
)
def test_a_handler_streams_an_iterable(make_source: Any, result: Any) -> None:
    @get("/")
    async def stream() -> EventStreamResponse:
        source: Source = make_source()
        return EventStreamResponse(source)

    events = events_from(Litestar([stream]))
    assert [name for name, _ in events] == ["tick", "message", "completed"]
    assert events[-1] == ("completed", result)


def test_headers_cookies_hooks_and_the_background_task_all_take_effect() -> None:
    client_saw_the_end = threading.Event()
    background_ran = threading.Event()
    background_saw: list[bool] = []

    async def after_stream() -> None:
        # Were it run before the last event, the client would never see it and this would time out.
        background_saw.append(await anyio.to_thread.run_sync(client_saw_the_end.wait, BOUND))
        background_ran.set()

    def stamp(response: Response[Any]) -> Response[Any]:
        response.set_header("x-after-request", "stamped")
        return response

    @get(
        "/",
        response_headers=[ResponseHeader(name="x-route", value="route")],
        response_cookies=[Cookie(key="route", value="r")],
    )
    async def stream() -> EventStreamResponse:
        return EventStreamResponse(
            Job(work, 1),
            headers={"x-request-id": "42", "cache-control": "no-store"},
            cookies=[
                Cookie(key="session", value="abc", httponly=True),
                Cookie(key="theme", value="dark"),
            ],
            background=BackgroundTask(after_stream),
        )

    app = Litestar([stream], after_request=stamp)
    with (
        serve(app, wrap=False) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as source,
    ):
        headers = source.response.headers
        names = [e.event for e in source.iter_sse()]
        client_saw_the_end.set()
        assert background_ran.wait(BOUND), "the background task did not run"
    assert names == ["progress", "completed"]
    assert headers["x-request-id"] == "42"
    assert headers["x-route"] == "route"
    assert headers["x-after-request"] == "stamped"
    assert headers["cache-control"] == "no-store"  # the response's own replaces asgi-sse's
    assert headers["x-accel-buffering"] == "no"
    assert sorted(headers.get_list("set-cookie")) == [
        "route=r; Path=/; SameSite=lax",
        "session=abc; HttpOnly; Path=/; SameSite=lax",
        "theme=dark; Path=/; SameSite=lax",
    ]
    assert background_saw == [True]


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __str__(self) -> str:
        return f"Point({self.x}, {self.y})"


class Point3(Point):
    pass


def locate(on_progress: Reporter) -> dict[str, Any]:
    on_progress("found", {"at": Point3(1, 2), "recent": deque([1, 2])})
    return {"at": Point(3, 4)}


def test_the_apps_type_encoders_reach_the_events_json() -> None:
    @get("/")
    async def stream() -> EventStreamResponse:
        return EventStreamResponse(Job(locate))

    @get("/own-encoder")
    async def own() -> EventStreamResponse:
        return EventStreamResponse(Job(locate), encoder=Encoder())

    app = Litestar([stream, own], type_encoders={Point: lambda p: [p.x, p.y]})
    # Matched by MRO as Litestar does (Point3 is a Point); Litestar's defaults apply too (deque).
    assert events_from(app) == [
        ("progress", {"step": "found", "details": {"at": [1, 2], "recent": [1, 2]}}),
        ("completed", {"at": [3, 4]}),
    ]
    # An explicit encoder is kept: no type_encoders, asgi-sse's str() fallback.
    assert events_from(app, "own-encoder") == [
        (
            "progress",
            {"step": "found", "details": {"at": "Point(1, 2)", "recent": "deque([1, 2])"}},
        ),
        ("completed", {"at": "Point(3, 4)"}),
    ]


def test_a_client_that_leaves_cancels_the_job() -> None:
    limiter = anyio.CapacityLimiter(2)
    endless = Endless()

    @get("/")
    async def stream() -> EventStreamResponse:
        return EventStreamResponse(Job(endless), limiter=limiter)

    with serve(Litestar([stream]), wrap=False) as server:
        with (
            httpx.Client(timeout=BOUND) as client,
            connect_sse(client, "GET", server.url) as source,
        ):
            assert next(source.iter_sse()).event == "progress"
        # Leaving the block closed the connection mid-job.
        assert endless.stopped.wait(BOUND), "the job kept running for a client that is gone"
    assert endless.outcome == ["cancelled"]
    assert limiter.borrowed_tokens == 0


def test_a_failing_job_ends_the_stream_with_an_error_event() -> None:
    def failing(on_progress: Reporter) -> None:
        on_progress("start", {})
        raise PermissionError("/etc/shadow")

    @get("/")
    async def stream() -> EventStreamResponse:
        return EventStreamResponse(Job(failing))

    assert events_from(Litestar([stream])) == [
        ("progress", {"step": "start", "details": {}}),
        ("error", {"type": "PermissionError"}),
    ]


def test_the_openapi_schema_says_text_event_stream_when_the_route_does() -> None:
    @get("/", media_type=EVENT_STREAM)
    async def stream() -> EventStreamResponse:
        return EventStreamResponse(Job(work, 1))

    schema = Litestar([stream]).openapi_schema.to_schema()
    assert list(schema["paths"]["/"]["get"]["responses"]["200"]["content"]) == [EVENT_STREAM]
