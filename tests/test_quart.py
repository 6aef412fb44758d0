"""The Quart adapter over a real socket: hypercorn serving a Quart app, httpx as the client."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import anyio
import httpx
import pytest
from conftest import BOUND, Endless, parse, serve
from httpx_sse import connect_sse
from quart import Quart, Response

from asgi_sse import EventStreamMiddleware, Job, Reporter
from asgi_sse._encoder import HEARTBEAT
from asgi_sse_quart import EventStreamResponse


def work(n: int, on_progress: Reporter) -> dict[str, int]:
    for i in range(n):
        on_progress("step", {"i": i})
    return {"done": n}


def counting() -> Generator[dict[str, int], None, str]:
    for i in range(2):
        yield {"i": i}
    return "counted"  # the completed event's data


async def counting_async() -> AsyncIterator[dict[str, int]]:
    for i in range(2):
        yield {"i": i}


def app_serving(respond: Callable[[], Response]) -> Quart:
    app = Quart(__name__)

    @app.get("/")
    async def index() -> Response:
        return respond()

    return app


def read_events(app: Quart) -> list[dict[str, str]]:
    with (
        serve(app, wrap=False) as server,
        httpx.Client(timeout=BOUND) as client,
        client.stream("GET", server.url) as response,
    ):
        assert response.status_code == 200
        return parse(response.read())


def test_a_job_streams_its_progress_then_its_result() -> None:
    events = read_events(app_serving(lambda: EventStreamResponse(Job(work, 2))))
    assert [(e["event"], e["id"], e["data"]) for e in events] == [
        ("progress", "1", '{"step":"step","details":{"i":0}}'),
        ("progress", "2", '{"step":"step","details":{"i":1}}'),
        ("completed", "3", '{"done":2}'),
    ]


@pytest.mark.parametrize(("source", "result"), [(counting, '"counted"'), (counting_async, "null")])
def test_sync_and_async_generators_stream_too(
    source: Callable[[], Generator[Any, None, Any] | AsyncIterator[Any]], result: str
) -> None:
    events = read_events(app_serving(lambda: EventStreamResponse(source())))
    assert [(e["event"], e["data"]) for e in events] == [
        ("message", '{"i":0}'),
        ("message", '{"i":1}'),
        ("completed", result),
    ]


def test_a_stream_outlives_quarts_response_timeout() -> None:
    timeout = 0.2
    release = threading.Event()

    def job(on_progress: Reporter) -> str:
        on_progress("waiting", {})
        while not release.wait(0.01):  # silent, so only heartbeats go out; ends if cut
            if on_progress.cancelled:
                return "cut"
        return "released"

    app = app_serving(lambda: EventStreamResponse(Job(job), heartbeat=0.05))
    app.config["RESPONSE_TIMEOUT"] = timeout
    body = b""
    with serve(app, wrap=False) as server:
        try:
            with (
                httpx.Client(timeout=BOUND) as client,
                client.stream("GET", server.url) as response,
            ):
                started = time.monotonic()
                for chunk in response.iter_bytes():
                    body += chunk
                    # Heartbeats keep data coming while the job waits, so this clock is read.
                    if time.monotonic() - started > 3 * timeout:
                        release.set()
        finally:
            release.set()  # a stream that was cut leaves the job waiting
    events = parse(body)
    assert HEARTBEAT in body
    assert [(e["event"], e["data"]) for e in events][-1] == ("completed", '"released"')


def test_headers_cookies_and_after_request_reach_the_client() -> None:
    after_request_ran = threading.Event()
    app = Quart(__name__)

    @app.get("/")
    async def index() -> Response:
        response = EventStreamResponse(
            Job(work, 1), headers=[("x-request-id", "42"), ("cache-control", "no-store")]
        )
        response.set_cookie("session", "abc")
        response.set_cookie("theme", "dark")
        return response

    @app.after_request
    async def tag(response: Response) -> Response:
        response.headers["x-after"] = "yes"
        after_request_ran.set()
        return response

    with (
        serve(app, wrap=False) as server,
        httpx.Client(timeout=BOUND) as client,
        client.stream("GET", server.url) as response,
    ):
        body = response.read()
    assert after_request_ran.is_set()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"  # the user's replaces asgi-sse's
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"] == "42"
    assert response.headers["x-after"] == "yes"
    assert len(response.headers.get_list("set-cookie")) == 2
    assert dict(response.cookies) == {"session": "abc", "theme": "dark"}
    assert parse(body)[-1]["event"] == "completed"


def test_a_client_that_leaves_cancels_the_job_and_frees_its_thread() -> None:
    limiter = anyio.CapacityLimiter(3)
    job = Endless()

    app = app_serving(lambda: EventStreamResponse(Job(job), limiter=limiter))
    returned = threading.Event()
    threads_at_return: list[int] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            threads_at_return.append(limiter.borrowed_tokens)
            returned.set()

    with serve(recording, wrap=False) as server:
        with (
            httpx.Client(timeout=BOUND) as client,
            connect_sse(client, "GET", server.url) as source,
        ):
            assert next(source.iter_sse()).event == "progress"
        # Leaving the block closed the connection mid-job.
        assert job.stopped.wait(BOUND), "the job kept running for a client that is gone"
        assert returned.wait(BOUND), "Quart did not finish the request"
    assert job.outcome == ["cancelled"]
    assert threads_at_return == [0], "the response returned before the job's thread"


def test_a_failing_job_ends_the_stream_with_an_error_event() -> None:
    def job(on_progress: Reporter) -> None:
        on_progress("start", {})
        raise PermissionError("/etc/shadow")

    events = read_events(app_serving(lambda: EventStreamResponse(Job(job))))
    assert [(e["event"], e["data"]) for e in events] == [
        ("progress", '{"step":"start","details":{}}'),
        ("error", '{"type":"PermissionError"}'),
    ]


def test_a_full_middleware_turns_the_response_into_its_503() -> None:
    release = threading.Event()

    def job(on_progress: Reporter) -> str:
        on_progress("holding the only slot", {})
        if not release.wait(BOUND):
            raise TimeoutError("the test never released the job")
        return "done"

    app = EventStreamMiddleware(
        app_serving(lambda: EventStreamResponse(Job(job))),
        max_streams=1,
        retry_after=7,
    )
    with (
        serve(app, wrap=False) as server,
        httpx.Client(timeout=BOUND) as client,
    ):
        try:
            with connect_sse(client, "GET", server.url) as first:
                events = first.iter_sse()
                assert next(events).event == "progress"
                refused = client.get(server.url)
                release.set()
                assert [e.event for e in events] == ["completed"]
        finally:
            release.set()
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"] == "7"
    assert refused.json() == {"type": "ServerBusy", "retry_after": 7}
