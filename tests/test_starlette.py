"""asgi_sse_starlette over a real socket: Starlette and FastAPI under hypercorn, httpx reading."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

import anyio
import httpx
import pytest
from conftest import BOUND, ASGIApp, Endless, Message, parse, serve
from fastapi import BackgroundTasks, Depends, FastAPI, Query
from httpx_sse import connect_sse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.routing import Route

from asgi_sse import EventStream, Job, Reporter
from asgi_sse_starlette import EventStreamResponse

FRAMEWORKS = ["starlette", "fastapi"]


def app_for(framework: str, respond: Callable[[], EventStreamResponse]) -> ASGIApp:
    """One route at ``/`` answering with what ``respond()`` returns, in either framework."""
    if framework == "fastapi":
        fastapi_app = FastAPI()

        @fastapi_app.get("/", response_class=EventStreamResponse)
        async def fastapi_endpoint() -> EventStreamResponse:
            return respond()

        return fastapi_app

    async def starlette_endpoint(request: Request) -> EventStreamResponse:
        return respond()

    return Starlette(routes=[Route("/", starlette_endpoint)])


def analyse(text: str, on_progress: Reporter) -> dict[str, Any]:
    words = text.split()
    on_progress("split", {"words": len(words)})
    on_progress("measure", {"longest": max(map(len, words))})
    return {"upper": text.upper()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_handler_streams_a_jobs_progress_then_its_result(framework: str) -> None:
    app = app_for(framework, lambda: EventStreamResponse(Job(analyse, "héllo big world")))
    with (
        serve(app, wrap=False) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as source,
    ):
        headers = source.response.headers
        events = [(e.event, e.id, e.json()) for e in source.iter_sse()]
    assert events == [
        ("progress", "1", {"step": "split", "details": {"words": 3}}),
        ("progress", "2", {"step": "measure", "details": {"longest": 5}}),
        ("completed", "3", {"upper": "HÉLLO BIG WORLD"}),
    ]
    assert headers.get_list("content-type") == ["text/event-stream; charset=utf-8"]
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-length" not in headers


def test_fastapi_does_not_send_a_bare_event_stream() -> None:
    # Why the adapter exists: FastAPI passes on only Response instances and
    # JSON-encodes anything else, which an EventStream is not.
    app = FastAPI()

    @app.get("/")
    async def endpoint():  # type: ignore[no-untyped-def]  # annotated, the route fails to build
        return EventStream(Job(analyse, "hello"))

    with serve(app, wrap=False) as server, httpx.Client(timeout=BOUND) as client:
        response = client.get(server.url)
    assert response.status_code == 500
    assert "text/event-stream" not in response.headers["content-type"]


def test_fastapi_openapi_lists_the_route_as_an_event_stream() -> None:
    # FastAPI reads the 200 from the signature's status_code default (and fails without one).
    app = app_for("fastapi", lambda: EventStreamResponse(Job(analyse, "hello")))
    with serve(app, wrap=False) as server, httpx.Client(timeout=BOUND) as client:
        schema = client.get(server.url + "openapi.json").json()
    assert schema["paths"]["/"]["get"]["responses"]["200"]["content"] == {
        "text/event-stream": {"schema": {"type": "string"}}
    }


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_headers_and_cookies_set_on_the_response_reach_the_client(framework: str) -> None:
    def respond() -> EventStreamResponse:
        response = EventStreamResponse(
            Job(analyse, "hello"),
            headers={"x-request-id": "42", "cache-control": "no-store"},
        )
        response.set_cookie("session", "abc", httponly=True)
        response.set_cookie("theme", "dark")
        response.headers["x-added-later"] = "yes"
        return response

    with (
        serve(app_for(framework, respond), wrap=False) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as source,
    ):
        headers = source.response.headers
        events = [e.event for e in source.iter_sse()]
    assert events == ["progress", "progress", "completed"]
    assert headers["x-request-id"] == "42"
    assert headers["x-added-later"] == "yes"
    # Headers given replace asgi-sse's own of the same name; the content type stays its own.
    assert headers.get_list("cache-control") == ["no-store"]
    assert headers.get_list("content-type") == ["text/event-stream; charset=utf-8"]
    assert headers.get_list("set-cookie") == [
        "session=abc; HttpOnly; Path=/; SameSite=lax",
        "theme=dark; Path=/; SameSite=lax",
    ]
    assert dict(client.cookies) == {"session": "abc", "theme": "dark"}


def recording(app: ASGIApp, sent: list[Message]) -> ASGIApp:
    """Pass ``app`` through, noting each HTTP message once the server has taken it."""

    async def recorded(scope: Any, receive: Any, send: Any) -> None:
        async def record(message: Message) -> None:
            await send(message)
            if scope["type"] == "http":
                sent.append(message)

        await app(scope, receive, record)

    return recorded


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_background_task_runs_after_the_last_event(framework: str) -> None:
    sent: list[Message] = []
    sent_before_background: list[Message] = []
    ran = threading.Event()

    async def after() -> None:
        sent_before_background.extend(sent)
        ran.set()

    app = app_for(
        framework,
        lambda: EventStreamResponse(Job(analyse, "hello"), background=BackgroundTask(after)),
    )
    with serve(recording(app, sent), wrap=False) as server, httpx.Client(timeout=BOUND) as client:
        events = parse(client.get(server.url).content)
        assert ran.wait(BOUND), "the background task did not run"
    assert [e["event"] for e in events] == ["progress", "progress", "completed"]
    # By then the whole stream had gone out: the last event, then the end of the body.
    assert b"event: completed" in sent_before_background[-2]["body"]
    assert sent_before_background[-1] == {
        "type": "http.response.body",
        "body": b"",
        "more_body": False,
    }


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_client_that_leaves_cancels_the_job_and_frees_its_thread(framework: str) -> None:
    limiter = anyio.CapacityLimiter(2)
    job = Endless()
    ended = threading.Event()

    app = app_for(
        framework,
        lambda: EventStreamResponse(
            Job(job), limiter=limiter, background=BackgroundTask(ended.set)
        ),
    )
    with serve(app, wrap=False) as server:
        with (
            httpx.Client(timeout=BOUND) as client,
            connect_sse(client, "GET", server.url) as source,
        ):
            assert next(source.iter_sse()).event == "progress"
        # Leaving the block closed the connection mid-job.
        assert job.stopped.wait(BOUND), "the job kept running for a client that is gone"
        # The response returned, so its background task ran, after the worker thread ended.
        assert ended.wait(BOUND), "the response did not return"
    assert job.outcome == ["cancelled"]
    assert job.flag_when_cancelled is True
    assert limiter.borrowed_tokens == 0


def test_mistakes_fail_when_the_response_is_built_not_once_it_is_sent() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        EventStreamResponse(Job(analyse, "hello"), heartbeat=0)
    with pytest.raises(ValueError, match="hop-by-hop"):
        EventStreamResponse(Job(analyse, "hello"), headers={"content-length": "10"})
    with pytest.raises(ValueError, match="200"):
        EventStreamResponse(Job(analyse, "hello"), status_code=201)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source"):
        EventStreamResponse({"not": "events"})


# FastAPI reads the annotations below at import time, so they live at module level.


def shout(text: str, times: int, on_progress: Reporter) -> str:
    for i in range(times):
        on_progress("shout", {"round": i + 1})
    return text.upper() * times


def shout_job(text: str, times: Annotated[int, Query(ge=1, le=3)] = 1) -> Job[str]:
    """A dependency: validated query parameters in, a job out."""
    return Job(shout, text, times=times)


def test_fastapi_injected_query_parameters_flow_into_the_job() -> None:
    done = threading.Event()
    app = FastAPI()

    @app.get("/shout", response_class=EventStreamResponse)
    async def endpoint(
        job: Annotated[Job[str], Depends(shout_job)], tasks: BackgroundTasks
    ) -> EventStreamResponse:
        tasks.add_task(done.set)  # FastAPI hands its tasks to a response with no background
        return EventStreamResponse(job)

    with serve(app, wrap=False) as server, httpx.Client(timeout=BOUND) as client:
        with connect_sse(client, "GET", server.url + "shout?text=hey&times=2") as source:
            events = [(e.event, e.json()) for e in source.iter_sse()]
        assert done.wait(BOUND), "FastAPI's background tasks did not run"
        # Validation happens before any stream starts: a plain 422.
        invalid = client.get(server.url + "shout?text=hey&times=9")
    assert events == [
        ("progress", {"step": "shout", "details": {"round": 1}}),
        ("progress", {"step": "shout", "details": {"round": 2}}),
        ("completed", "HEYHEY"),
    ]
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/json"
