"""EventStreamMiddleware: the shared limiter, admission, counters and shutdown."""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import httpx
import pytest
from conftest import BOUND, Call, Message, call_app, calling, parse, serve
from httpx_sse import connect_sse

from asgi_sse import (
    EventStream,
    EventStreamMiddleware,
    Job,
    JobCancelled,
    Reporter,
    Stats,
    default_limiter,
)
from asgi_sse._http import error_response
from asgi_sse.testing import aconnect


class Gate:
    """A job that reports, then holds its thread until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.ended = threading.Event()
        self.outcome: list[str] = []

    def job(self, on_progress: Reporter, name: str = "job") -> str:
        try:
            on_progress("started", {"name": name})
            if not self.open.wait(BOUND):
                raise TimeoutError("the test never opened the gate")
            return name
        finally:
            self.ended.set()


def route(func: Any, **options: Any) -> Any:
    """A tiny app: one new stream per request, as a framework's handler would make."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        name = scope.get("query_string", b"").decode() or "job"
        await EventStream(Job(func, name=name), heartbeat=None, **options)(scope, receive, send)

    return app


def saw(event: bytes) -> tuple[anyio.Event, Any]:
    """An anyio Event set once a body message containing ``event`` was sent."""
    seen = anyio.Event()

    async def on_send(message: Message) -> None:
        if event in message.get("body", b""):
            seen.set()

    return seen, on_send


def json_body(call: Call) -> Any:
    return json.loads(call.body)


@pytest.mark.anyio
async def test_over_the_cap_a_stream_is_refused_with_503_before_it_starts() -> None:
    gate = Gate()
    app = EventStreamMiddleware(route(gate.job), max_streams=1, retry_after=7)
    started, on_send = saw(b"started")
    async with calling(app, on_send=on_send) as (first, _):
        await started.wait()
        refused = await call_app(app)
        assert refused.start["status"] == 503
        assert dict(refused.start["headers"])[b"retry-after"] == b"7"
        assert dict(refused.start["headers"])[b"content-type"] == b"application/json"
        assert json_body(refused) == {"type": "ServerBusy", "retry_after": 7}
        assert app.stats == Stats(
            open_streams=1,
            queued_jobs=0,
            running_jobs=1,
            events_sent=1,
            bytes_sent=len(first.body),  # its one event, as the client has it
            disconnects=0,
            send_timeouts=0,
            refused=1,
        )
        gate.open.set()
    assert [e["event"] for e in parse(first.body)] == ["progress", "completed"]
    # The slot is free again.
    again = await call_app(app)
    assert parse(again.body)[-1]["event"] == "completed"
    assert app.stats.open_streams == app.stats.running_jobs == 0


@pytest.mark.anyio
async def test_a_refusal_whose_client_has_left_ends_quietly() -> None:
    sent: list[str] = []

    async def send(message: Message) -> None:
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            raise OSError("the client is gone")  # as an ASGI 2.4 server says so

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    await error_response(503, "ServerBusy")({"type": "http"}, receive, send)  # no exception
    assert sent == ["http.response.start", "http.response.body"]


@pytest.mark.anyio
async def test_a_queue_admits_streams_and_tells_them_their_place() -> None:
    gate = Gate()

    def job(on_progress: Reporter, name: str) -> str:
        return gate.job(on_progress, name) if name == "a" else name

    app = EventStreamMiddleware(route(job), max_streams=1, queue=2)
    async with aconnect(app, "/?a") as a:  # (the query names the job)
        assert (await a.next()).event == "progress"
        async with aconnect(app, "/?b") as b:
            assert (await b.next()).data == '{"position":1}'  # first in line before c comes
            async with aconnect(app, "/?c") as c:
                assert (await c.next()).data == '{"position":2}'
                async with aconnect(app, "/?d") as full:
                    assert full.status == 503
                stats = app.stats
                assert (stats.open_streams, stats.queued_jobs, stats.running_jobs) == (3, 2, 1)
                gate.open.set()
                assert [(e.event, e.data) for e in await c.until("completed")] == [
                    ("queued", '{"position":1}'),
                    ("completed", '"c"'),
                ]
            assert [(e.event, e.data) for e in await b.until("completed")] == [("completed", '"b"')]
        assert (await a.until("completed"))[-1].data == '"a"'
    assert app.stats.refused == 1
    assert (app.stats.queued_jobs, app.stats.running_jobs, app.stats.open_streams) == (0, 0, 0)


@pytest.mark.anyio
async def test_a_queued_stream_whose_client_leaves_gives_up_its_place() -> None:
    gate = Gate()
    app = EventStreamMiddleware(route(gate.job), max_streams=1, queue=1)
    async with aconnect(app) as first:
        assert (await first.next()).event == "progress"  # it runs: the one slot is taken
        async with aconnect(app) as second:
            assert (await second.next()).event == "queued"
        assert app.stats.queued_jobs == 0  # it left: its place is given up
        assert app.stats.disconnects == 1
        gate.open.set()
        assert (await first.next()).event == "completed"


@pytest.mark.anyio
async def test_streams_share_the_middleware_limiter_unless_given_their_own() -> None:
    seen: list[tuple[int, int]] = []
    default = default_limiter()

    def job(on_progress: Reporter, name: str) -> None:
        seen.append((app.limiter.borrowed_tokens, default.borrowed_tokens))

    app = EventStreamMiddleware(route(job), threads=3)
    await call_app(app)
    assert app.limiter.total_tokens == 3
    assert seen == [(1, 0)]

    own = anyio.CapacityLimiter(1)
    app.app = route(job, limiter=own)
    await call_app(app)
    assert seen[-1] == (0, 0)


@pytest.mark.anyio
async def test_counters_count_events_not_heartbeats_and_send_timeouts() -> None:
    def job(on_progress: Reporter, name: str) -> int:
        for i in range(5):
            on_progress("step", {"i": i})
        return 5

    app = EventStreamMiddleware(route(job))
    await call_app(app)
    assert app.stats.events_sent == 6  # five progress events and completed

    async def stuck(message: Message) -> None:
        if message["type"] == "http.response.body":
            await anyio.sleep_forever()  # a client that stopped reading

    app.app = route(job, send_timeout=0.05)
    async with calling(app, on_send=stuck):
        pass
    assert app.stats.send_timeouts == 1
    assert app.stats.open_streams == 0


@pytest.mark.anyio
async def test_shutdown_ends_every_stream_after_what_its_job_reported() -> None:
    stopped = threading.Event()

    def job(on_progress: Reporter, name: str) -> None:
        try:
            n = 0
            while True:
                n += 1
                on_progress("tick", {"n": n})
                if n == 3:
                    third.set()
                if n > 10_000:
                    raise AssertionError("never stopped")
        except JobCancelled:
            stopped.set()
            raise

    third = threading.Event()
    app = EventStreamMiddleware(route(job, max_buffer_bytes=64))
    async with calling(app) as (call, _):
        assert await anyio.to_thread.run_sync(third.wait, BOUND)
        await app.shutdown()
        refused = await call_app(app)
    assert stopped.is_set()
    events = parse(call.body)
    assert {e["event"] for e in events[:-1]} == {"progress"}
    assert (events[-1]["event"], events[-1]["data"]) == ("error", '{"type":"ServerShutdown"}')
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert call.finished
    assert refused.start["status"] == 503
    assert json_body(refused)["type"] == "ServerShutdown"


async def run_lifespan(app: Any, during: Any = None) -> list[str]:
    """Drive the lifespan protocol; return what the app sent."""
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []
    started = anyio.Event()
    answered = anyio.Event()

    async def receive() -> Message:
        if inbox[0]["type"] == "lifespan.shutdown":
            await started.wait()
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message["type"])
        answered.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await answered.wait()  # startup is done
        if during is not None:
            await during()
        started.set()
    return sent


@pytest.mark.anyio
async def test_lifespan_shutdown_ends_open_streams_before_the_apps_own_shutdown() -> None:
    order: list[str] = []
    gate = Gate()
    streams = route(gate.job)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await streams(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                order.append(f"app shutdown, {app.stats.open_streams} open")
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    app = EventStreamMiddleware(inner)
    started, on_send = saw(b"started")
    done: list[Call] = []

    async def with_a_stream() -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                async with calling(app, on_send=on_send) as (call, _):
                    done.append(call)

            tg.start_soon(stream)
            await started.wait()
            gate.open.set()  # the job could finish; shutdown must still end the stream at once

    sent = await run_lifespan(app, with_a_stream)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert order == ["app shutdown, 0 open"]
    assert parse(done[0].body)[-1]["event"] in {"completed", "error"}


@pytest.mark.anyio
async def test_an_app_without_lifespan_gets_it_answered_for_it() -> None:
    gate = Gate()
    gate.open.set()
    app = EventStreamMiddleware(EventStream(Job(gate.job)))  # raises on a lifespan scope
    sent = await run_lifespan(app)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_streams": 0}, "max_streams must be at least 1"),
        ({"queue": 1}, "a queue needs max_streams"),
        ({"max_streams": 1, "queue": -1}, "queue must not be negative"),
        ({"retry_after": -1}, "retry_after must not be negative"),
    ],
)
def test_bad_policy_is_refused_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EventStreamMiddleware(route(Gate().job), **options)


# -- over a real socket ------------------------------------------------------------


def test_over_a_socket_a_full_app_answers_503_and_a_queue_says_queued() -> None:
    gate = Gate()
    app = EventStreamMiddleware(route(gate.job), max_streams=1, queue=1, retry_after=3)
    with (
        serve(app) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as first,
    ):
        running = first.iter_sse()
        assert next(running).event == "progress"
        with connect_sse(client, "GET", server.url) as second:
            waiting = second.iter_sse()
            place = next(waiting)
            assert (place.event, place.json()) == ("queued", {"position": 1})
            refused = client.get(server.url)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "3"
            assert refused.json() == {"type": "ServerBusy", "retry_after": 3}
            gate.open.set()
            assert [e.event for e in waiting] == ["progress", "completed"]
        assert [e.event for e in running] == ["completed"]


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_an_app_that_shuts_down_from_its_own_trigger_ends_streams_first(
    worker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The clean path on any worker: the app ends its streams before the server's graceful wait."""
    gate = Gate()
    app = EventStreamMiddleware(route(gate.job))
    with (
        serve(app, backend=worker, before_shutdown=app.shutdown) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as sse,
    ):
        events = sse.iter_sse()
        assert next(events).event == "progress"
        server.stop()
        last = next(events)
        assert (last.event, last.json()) == ("error", {"type": "ServerShutdown"})
        gate.open.set()  # this job never reports again: let its thread go
        assert list(events) == []
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
