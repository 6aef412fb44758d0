"""asgi_sse.testing: events as they are sent, a disconnect when the test stops
reading, and a clear failure instead of a hang, for any SSE endpoint."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from litestar import Litestar, get
from litestar.response import ServerSentEvent
from parity_apps import GOLDEN, WAYS
from sse_spec import parse_stream
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.routing import Route

from asgi_sse import EventStream, EventStreamMiddleware, Job, JobCancelled, Reporter, progress_app
from asgi_sse.testing import (
    EventStreamClosed,
    ServerSentMessage,
    StreamTimeout,
    aconnect,
    connect,
    parse_block,
)

pytestmark = pytest.mark.anyio
BOUND = 10.0


class Endless:
    """Reports until its client goes; says how it ended."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.outcome = ""

    def __call__(self, on_progress: Reporter) -> None:
        pace = threading.Event()
        try:
            while True:
                on_progress("tick", {})
                pace.wait(0.001)  # the job's own pace
        except JobCancelled:
            self.outcome = "cancelled"
            raise
        finally:
            self.stopped.set()


def count(steps: int, on_progress: Reporter) -> dict[str, int]:
    for step in range(1, steps + 1):
        on_progress("count", {"done": step})
    return {"steps": steps}


async def test_events_arrive_as_they_are_sent_and_the_stream_ends_with_its_terminal_event() -> None:
    async with aconnect(progress_app(count), "/?steps=3") as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = await stream.until("completed", "error")
        rest = [message async for message in stream]
    assert [(e.event, e.id) for e in events] == [
        ("progress", "1"),
        ("progress", "2"),
        ("progress", "3"),
        ("completed", "4"),
    ]
    assert events[0].json() == {"step": "count", "details": {"done": 1}}
    assert events[-1].json() == {"steps": 3}
    assert rest == []
    assert stream.last_event_id == "4"


async def test_leaving_an_endless_stream_disconnects_and_its_job_is_cancelled() -> None:
    job = Endless()
    async with aconnect(EventStream(Job(job)), "/") as stream:
        assert [e.event for e in await stream.events(3)] == ["progress"] * 3
    assert job.stopped.is_set()  # the app returned, so its job had returned first
    assert job.outcome == "cancelled"


def test_the_sync_client_needs_no_plugin_and_runs_on_either_backend() -> None:
    for backend in ("asyncio", "trio"):
        job = Endless()
        with connect(EventStream(Job(job)), "/", backend=backend) as stream:
            first, second = stream.events(2)
        assert (first.id, second.id) == ("1", "2")
        assert job.outcome == "cancelled"


@pytest.mark.parametrize(
    ("way", "backend"),
    # (Quart runs on asyncio only: quart-trio is another package.)
    [(w, b) for w in WAYS for b in ("asyncio", "trio") if (w, b) != ("Quart adapter", "trio")],
)
def test_every_adapter_streams_through_it_as_over_a_socket(way: str, backend: str) -> None:
    setup = WAYS[way](False)
    app = setup.app
    with connect(app, f"/{setup.path}", backend=backend) as stream:
        received = stream.until("completed")
    expected = parse_stream(GOLDEN["completed"])
    assert [(e.event, e.data, e.id) for e in received] == [
        (e["event"], e["data"], e["id"]) for e in expected
    ]


async def test_sse_starlettes_endless_stream_is_read_and_left_too() -> None:
    stopped = anyio.Event()

    async def ticks() -> AsyncIterator[dict[str, Any]]:
        try:
            n = 0
            while True:
                n += 1
                yield {"event": "tick", "data": str(n), "id": str(n)}
                await anyio.sleep(0.001)  # the generator's own pace
        finally:
            stopped.set()

    async def endpoint(request: Any) -> EventSourceResponse:
        return EventSourceResponse(ticks())

    async with aconnect(Starlette(routes=[Route("/", endpoint)]), "/") as stream:
        assert [(e.event, e.data) for e in await stream.events(2)] == [("tick", "1"), ("tick", "2")]
    assert stopped.is_set()


async def test_litestars_own_endless_server_sent_events_are_read_and_left_too() -> None:
    stopped = anyio.Event()

    async def ticks() -> AsyncIterator[str]:
        try:
            yield "1"
            yield "2"
            # Then nothing, for ever. (Not more ticks: Litestar does not close its
            # iterator, so this finally runs at once only if the cancel lands in here,
            # not in a send.)
            await anyio.sleep_forever()
        finally:
            stopped.set()

    @get("/")
    async def endpoint() -> ServerSentEvent:
        return ServerSentEvent(ticks())

    async with aconnect(Litestar([endpoint]), "/") as stream:
        assert [e.data for e in await stream.events(2)] == ["1", "2"]
    assert stopped.is_set()  # leaving disconnected, and Litestar stopped the generator


async def test_litestars_own_server_sent_events_are_read_as_well() -> None:
    async def ticks() -> AsyncIterator[str]:
        for n in range(3):
            yield str(n)

    @get("/")
    async def endpoint() -> ServerSentEvent:
        return ServerSentEvent(ticks())

    async with aconnect(Litestar([endpoint]), "/") as stream:
        assert [e.data for e in await stream.events(3)] == ["0", "1", "2"]


async def test_a_heartbeat_is_a_message_with_no_event_and_its_comment() -> None:
    gate = threading.Event()
    silent = Job(lambda on_progress: gate.wait(BOUND) and "done")
    async with aconnect(EventStream(silent, heartbeat=0.01), "/") as stream:
        assert await stream.next() == ServerSentMessage(None, comments=("ping",))
        gate.set()
        (done,) = await stream.until("completed")
    assert done.json() == "done"


async def test_a_stream_that_goes_quiet_fails_with_what_came_last() -> None:
    gate = threading.Event()
    quiet = EventStream(Job(lambda on_progress: gate.wait(BOUND)), heartbeat=None)
    async with aconnect(quiet, "/", timeout=0.2) as stream:
        with pytest.raises(StreamTimeout, match=r"no message within 0\.2s; last: None"):
            await stream.next()
        gate.set()  # let the job go, so the app returns when the client leaves


async def test_an_app_that_ignores_the_disconnect_fails_the_test_and_is_stopped() -> None:
    async def stubborn(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await anyio.sleep_forever()  # never listens, never returns

    with pytest.raises(StreamTimeout, match=r"did not return within 0\.2s of the client leaving"):
        async with aconnect(stubborn, "/", timeout=0.2) as stream:
            assert (await stream.next()).data == "1"


async def test_an_app_that_raises_raises_in_the_test_as_it_is() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("no such route")

    with pytest.raises(KeyError, match="no such route"):
        async with aconnect(broken, "/"):
            pass


@pytest.mark.parametrize("passed_on", ["as it is", "wrapped", "in a group"])
async def test_an_app_that_fails_only_because_the_test_left_does_not_fail_the_test(
    passed_on: str,
) -> None:
    raised: list[OSError] = []

    async def sends_once_more(send: Any) -> None:
        try:
            await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        except OSError as exc:
            raised.append(exc)
            if passed_on == "wrapped":
                raise RuntimeError("the stream broke") from exc
            raise

    async def late(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        if passed_on == "in a group":
            async with anyio.create_task_group() as tg:
                tg.start_soon(sends_once_more, send)
        else:
            await sends_once_more(send)

    async with aconnect(late, "/") as stream:
        assert (await stream.next()).data == "1"
    assert [str(exc) for exc in raised] == ["the test client has disconnected"]


async def test_an_app_whose_answer_to_the_test_leaving_fails_fails_the_test() -> None:
    async def clumsy(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive())["type"] != "http.disconnect":
            pass
        try:
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        except OSError:
            raise KeyError("a bug in its clean-up")  # noqa: B904 (the point: not caused by it)

    with pytest.raises(KeyError, match="a bug in its clean-up"):
        async with aconnect(clumsy, "/"):
            pass


async def test_a_response_that_is_not_a_stream_is_read_whole() -> None:
    app = EventStreamMiddleware(progress_app(count))
    await app.shutdown()  # from now on, every new stream is refused
    async with aconnect(app, "/?steps=1") as stream:
        assert stream.status == 503
        assert await stream.read() == b'{"type":"ServerShutdown","retry_after":5}'


async def test_an_early_end_is_said_plainly() -> None:
    async with aconnect(progress_app(count), "/?steps=1") as stream:
        await stream.until("completed")
        with pytest.raises(EventStreamClosed, match="the stream ended; the last message was"):
            await stream.next()


def test_blocks_are_parsed_by_the_spec_rules() -> None:
    assert parse_block("event: a\ndata: 1\ndata:2\nid: 7\nretry: 50\n: hi") == ServerSentMessage(
        "a", "1\n2", "7", 50, ("hi",)
    )
    assert parse_block("data") == ServerSentMessage("message", "", None)  # a field with no colon
    assert parse_block("id: 1\0") == ServerSentMessage(None)  # an id with NUL is ignored
    assert parse_block("retry: soon").retry is None
