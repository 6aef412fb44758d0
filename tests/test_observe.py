"""What observers are told, in process, at the edges a scrape does not reach: a
send that never completes, a server that cuts a request, a shutdown, a refusal
(one as shutdown begins too), a place in line, a custom source, an attempt that
will be retried, and the body door of a framework that sends the body itself.
(The same records, seen from a real server, are in test_metrics.)"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from conftest import BOUND

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter
from asgi_sse.metrics import JobRecord, Observer, StreamRecord
from asgi_sse.resumable import Jobs
from asgi_sse.testing import aconnect

pytestmark = pytest.mark.anyio


class Recorder(Observer):
    def __init__(self) -> None:
        self.opened: list[StreamRecord] = []
        self.closed: list[StreamRecord] = []
        self.jobs: list[JobRecord] = []

    def stream_opened(self, stream: StreamRecord) -> None:
        self.opened.append(stream)

    def stream_closed(self, stream: StreamRecord) -> None:
        self.closed.append(stream)

    def job_ended(self, job: JobRecord) -> None:
        self.jobs.append(job)


SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}


async def never_leaves() -> dict[str, Any]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


def reports_then(gate: threading.Event) -> Job[Any]:
    def job(on_progress: Reporter) -> str:
        on_progress("step", {"n": 1})
        assert gate.wait(BOUND), "the test never opened the gate"
        return "done"

    return Job(job)


async def test_a_terminal_event_the_server_never_took_is_not_a_completion() -> None:
    recorder, gate, bodies = Recorder(), threading.Event(), []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        await EventStream(reports_then(gate), send_timeout=0.2)(scope, receive, send)

    async def send(message: dict[str, Any]) -> None:
        body = message.get("body", b"")
        if b"event: completed" in body:
            await anyio.sleep_forever()  # a client that stopped reading at the end
        bodies.append(body)
        if b"event: progress" in body:
            gate.set()

    app = EventStreamMiddleware(route, observers=[recorder])
    with anyio.fail_after(BOUND):
        await app(dict(SCOPE), never_leaves, send)
    (stream,) = recorder.closed
    assert (stream.outcome, stream.error) == ("none", None)
    assert stream.last is not None
    assert stream.last.startswith(b"event: progress")
    assert stream.first_event is not None
    stats = app.stats
    assert (stats.send_timeouts, stats.events_sent) == (1, 1)
    assert stats.bytes_sent == sum(map(len, bodies))
    assert recorder.jobs[0].outcome == "completed"  # the job itself did end well


async def test_a_request_the_server_cuts_ends_with_its_farewell_counted() -> None:
    recorder, gate, bodies = Recorder(), threading.Event(), []
    progressed = anyio.Event()

    async def route(scope: Any, receive: Any, send: Any) -> None:
        await EventStream(reports_then(gate))(scope, receive, send)

    async def send(message: dict[str, Any]) -> None:
        body = message.get("body", b"")
        bodies.append(body)
        if b"event: progress" in body:
            progressed.set()
        if b"ServerShutdown" in body:
            gate.set()  # the job may return now: the farewell is out

    app = EventStreamMiddleware(route, observers=[recorder])
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, dict(SCOPE), never_leaves, send)
            await progressed.wait()
            tg.cancel_scope.cancel()  # as a server whose graceful timeout ran out
    (stream,) = recorder.closed
    assert (stream.outcome, stream.error) == ("cancelled", "ServerShutdown")
    assert app.stats.events_sent == 2
    assert app.stats.bytes_sent == sum(map(len, bodies))
    # The job was stopped: its run wrote no end of its own (the farewell is the stream's).
    assert (recorder.jobs[0].outcome, recorder.jobs[0].error) == ("cancelled", None)


async def test_a_stream_ended_by_shutdown_and_its_job_are_cancelled() -> None:
    recorder = Recorder()

    def ticks(on_progress: Reporter) -> None:
        while True:  # until shutdown refuses its report
            on_progress("tick", {})
            threading.Event().wait(0.01)  # the job's pace

    async def route(scope: Any, receive: Any, send: Any) -> None:
        await EventStream(Job(ticks))(scope, receive, send)

    app = EventStreamMiddleware(route, observers=[recorder])
    async with aconnect(app, "/") as response:
        await response.until("progress")
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.shutdown)
            events = await response.until("error")
    assert events[-1].data == '{"type":"ServerShutdown"}'
    (stream,) = recorder.closed
    assert (stream.outcome, stream.error) == ("cancelled", "ServerShutdown")
    (job,) = recorder.jobs
    assert (job.outcome, job.error) == ("cancelled", "ServerShutdown")


async def test_a_refusal_is_counted_but_is_no_stream() -> None:
    recorder, jobs, gate = Recorder(), Jobs(), threading.Event()

    async def route(scope: Any, receive: Any, send: Any) -> None:
        source = reports_then(gate) if scope["path"] == "/job" else jobs.watch("unknown")
        await EventStream(source)(scope, receive, send)

    app = EventStreamMiddleware(route, jobs=jobs, max_streams=1, observers=[recorder])
    async with jobs:
        async with aconnect(app, "/watch") as response:
            assert response.status == 404  # the source said no
            await response.read()
        async with aconnect(app, "/job") as running:
            await running.until("progress")
            async with aconnect(app, "/job") as refused:
                assert refused.status == 503  # the app said no
                await refused.read()
            gate.set()
            await running.until("completed")
    assert [s.path for s in recorder.opened] == ["/job"]
    assert [s.outcome for s in recorder.closed] == ["completed"]
    assert app.stats.refused == 1


async def test_a_place_in_line_is_not_a_first_event() -> None:
    recorder, first_gate, second_gate = Recorder(), threading.Event(), threading.Event()
    gates = iter((first_gate, second_gate))

    async def route(scope: Any, receive: Any, send: Any) -> None:
        await EventStream(reports_then(next(gates)))(scope, receive, send)

    app = EventStreamMiddleware(route, max_streams=1, queue=1, observers=[recorder])
    async with aconnect(app, "/") as first:
        await first.until("progress")
        async with aconnect(app, "/") as second:
            await second.until("queued")
            assert recorder.opened[1].first_event is None  # only in line so far
            first_gate.set()
            second_gate.set()
            await second.until("completed")
            assert recorder.opened[1].first_event is not None
        await first.until("completed")
    assert [s.outcome for s in recorder.closed] == ["completed", "completed"]


class Once:
    """A source of one's own: the job outcome is its channel's last event."""

    uses: frozenset[str] = frozenset()

    def __init__(self, deciding: anyio.Event | None = None, decide: anyio.Event | None = None):
        self.deciding, self.decide = deciding, decide

    async def open(self, scope: Any, channel: Any, options: Any) -> OnceRun:
        if self.deciding is not None and self.decide is not None:
            self.deciding.set()
            await self.decide.wait()  # a source that takes its time (a lookup, say)
        return OnceRun(channel)


class OnceRun:
    takes_slot = True

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    async def __call__(self, limiter: Any) -> None:
        self.channel.close(b"event: completed\ndata: 1\n\n")

    def queued(self, position: int) -> None:
        pass

    def farewell(self) -> bytes | None:
        return None


async def test_a_custom_sources_job_ends_as_its_last_event_says() -> None:
    recorder = Recorder()

    async def route(scope: Any, receive: Any, send: Any) -> None:
        await EventStream(Once())(scope, receive, send)

    app = EventStreamMiddleware(route, observers=[recorder])
    async with aconnect(app, "/") as response:
        await response.until("completed")
    assert [j.outcome for j in recorder.jobs] == ["completed"]
    assert [s.outcome for s in recorder.closed] == ["completed"]


async def test_a_resumable_attempt_names_its_job_and_a_retry_is_no_failure_of_it() -> None:
    recorder, jobs = Recorder(), Jobs()

    def fails(on_progress: Reporter) -> None:
        raise ValueError("a secret")

    EventStreamMiddleware(lambda *a: None, jobs=jobs, observers=[recorder])  # governs them
    async with jobs:
        job_id = await jobs.create()
        with pytest.raises(ValueError, match="a secret"):
            await jobs.perform(Job(fails), id=job_id, retry_if=lambda exc: True)
        with pytest.raises(ValueError, match="a secret"):
            await jobs.perform(Job(fails), id=job_id)  # the last attempt
    assert [(j.job_id, j.stream, j.outcome, j.error) for j in recorder.jobs] == [
        (job_id, None, "retried", "ValueError"),
        (job_id, None, "failed", "ValueError"),
    ]


async def test_a_stream_refused_as_shutdown_began_while_its_source_decided_is_no_stream() -> None:
    recorder, deciding, decide = Recorder(), anyio.Event(), anyio.Event()

    async def route(scope: Any, receive: Any, send: Any) -> None:
        await EventStream(Once(deciding, decide))(scope, receive, send)

    app = EventStreamMiddleware(route, observers=[recorder])
    async with anyio.create_task_group() as tg:

        async def shut_down() -> None:
            await deciding.wait()
            async with anyio.create_task_group() as inner:
                inner.start_soon(app.shutdown)
                await anyio.wait_all_tasks_blocked()  # shutdown has begun
                decide.set()

        tg.start_soon(shut_down)
        async with aconnect(app, "/") as response:
            assert response.status == 503
            await response.read()
    assert (recorder.opened, recorder.closed, recorder.jobs) == ([], [], [])
    assert app.stats.refused == 1


async def test_the_body_door_counts_what_its_framework_sent_and_only_that() -> None:
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from asgi_sse_starlette import EventStreamResponse  # noqa: PLC0415

    gate, bodies, left, stall = threading.Event(), [], anyio.Event(), [True]

    class Leaves(Recorder):
        def stream_closed(self, stream: StreamRecord) -> None:
            super().stream_closed(stream)
            left.set()  # given up on: now the client goes

    recorder = Leaves()

    async def handler(request: Any) -> EventStreamResponse:
        return EventStreamResponse(reports_then(gate), send_timeout=0.2)

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        body = message.get("body", b"")
        if b"event: completed" in body and stall[0]:
            await anyio.sleep_forever()  # the framework's send to a client that stopped reading
        bodies.append(body)
        if b"event: progress" in body:
            gate.set()

    app = EventStreamMiddleware(Starlette(routes=[Route("/", handler)]), observers=[recorder])
    with anyio.fail_after(BOUND):
        await app(dict(SCOPE), receive, send)  # stalled at the end
        stall[0], left, gate = False, anyio.Event(), threading.Event()
        await app(dict(SCOPE), never_leaves, send)  # and not
    stalled, finished = recorder.closed
    assert (stalled.outcome, finished.outcome) == ("none", "completed")
    assert stalled.last is not None
    assert stalled.last.startswith(b"event: progress")
    assert finished.first_event is not None
    assert app.stats.events_sent == 1 + 2
    assert app.stats.bytes_sent == sum(map(len, bodies))
