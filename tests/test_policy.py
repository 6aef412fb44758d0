"""One owner for the run options and the app's policy, whatever the source and
whichever door: resumable jobs under the middleware's limiter and slots, the
body door's cap, a watch that refuses options it cannot use, and a source of
one's own through the same protocol as a Job."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
import pytest
from conftest import BOUND, call_app, parse, serve
from quart import Quart, Response
from test_resumable import make_app, start, watch

from asgi_sse import Encoder, EventStream, EventStreamMiddleware, Job, Refusal, Reporter
from asgi_sse._bridge import Channel
from asgi_sse._hub import Hub
from asgi_sse._run import RunOptions
from asgi_sse.resumable import Jobs
from asgi_sse_quart import EventStreamResponse


def quick(on_progress: Reporter) -> str:
    on_progress("step", {})
    return "done"


class Holder:
    """A job that holds its thread (and its slot) until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, on_progress: Reporter) -> str:
        on_progress("holding", {})
        self.started.set()
        if not self.release.wait(BOUND):
            raise TimeoutError("the test never released the job")
        return "released"


def test_resumable_jobs_wait_in_line_for_the_apps_slots_and_their_watchers_are_told() -> None:
    jobs = Jobs()
    holder = Holder()
    registry = {"hold": lambda: Job(holder), "quick": lambda: Job(quick)}
    app = EventStreamMiddleware(make_app(jobs, registry), max_streams=1, jobs=jobs)
    with (
        serve(app, wrap=False) as served,
        httpx.Client(base_url=served.url, timeout=BOUND) as client,
    ):
        try:
            first = start(client, "hold")
            assert holder.started.wait(BOUND)
            second = start(client, "quick")
            (queued,) = watch(client, second, count=1)  # the log's first event
            assert (queued.event, queued.id, json.loads(queued.data)) == (
                "queued",
                "1",
                {"position": 1},
            )
            stats = app.stats
            assert (stats.running_jobs, stats.queued_jobs) == (1, 1)
        finally:
            holder.release.set()
        assert [e.event for e in watch(client, first)][-1] == "completed"
        rest = watch(client, second, last="1")  # numbered after its place in line
        assert [(e.event, e.id) for e in rest] == [("progress", "2"), ("completed", "3")]
    assert (app.stats.running_jobs, app.stats.queued_jobs) == (0, 0)


def test_resumable_jobs_run_under_the_middlewares_thread_limiter() -> None:
    jobs = Jobs()

    def measure(on_progress: Reporter) -> int:
        on_progress("measuring", {})
        return app.limiter.borrowed_tokens  # this job's own token, if it is the app's

    app = EventStreamMiddleware(make_app(jobs, {"m": lambda: Job(measure)}), threads=1, jobs=jobs)
    with (
        serve(app, wrap=False) as served,
        httpx.Client(base_url=served.url, timeout=BOUND) as client,
    ):
        events = watch(client, start(client, "m"))
    assert [(e.event, e.data) for e in events] == [
        ("progress", '{"step":"measuring","details":{}}'),
        ("completed", "1"),
    ]


@pytest.mark.anyio
async def test_the_body_door_holds_the_cap_however_many_responses_are_built_first() -> None:
    bodies: list[bytes] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        # Two responses built before either body starts, as two handlers may be:
        # both pass the check, and the second to start its body finds it full.
        holder = Holder()
        stream = EventStream(Job(holder), heartbeat=None)
        first, second = stream.exchange(scope), stream.exchange(scope)
        assert not isinstance(first, Refusal)
        assert not isinstance(second, Refusal)
        assert await first.open() is None
        assert await second.open() is None
        async with first.body() as chunks:
            bodies.append(await chunks.__anext__())  # the first holds the only slot
            assert app.stats.open_streams == 1
            async with second.body() as refused:
                bodies.extend([chunk async for chunk in refused])
            holder.release.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = EventStreamMiddleware(handler, max_streams=1, retry_after=3)
    await call_app(app)
    assert bodies[1:] == [b'event: error\ndata: {"type":"ServerBusy","retry_after":3}\n\n']
    assert (app.stats.open_streams, app.stats.refused) == (0, 1)


def test_a_quart_response_dropped_before_its_body_gives_its_place_back() -> None:
    quart = Quart(__name__)

    @quart.get("/")
    async def index() -> Response:
        return EventStreamResponse(Job(quick))

    @quart.after_request
    async def fail_some(response: Response) -> Response:
        if "drop" in quart_request_args():
            raise RuntimeError("an after_request hook that fails")
        return response

    app = EventStreamMiddleware(quart, max_streams=1)
    with serve(app, wrap=False) as served, httpx.Client(timeout=BOUND) as client:
        for _ in range(3):
            assert client.get(served.url, params={"drop": "1"}).status_code == 500
        response = client.get(served.url)
    assert response.status_code == 200
    assert [e["event"] for e in parse(response.content)] == ["progress", "completed"]
    assert app.stats.refused == 0


def quart_request_args() -> Mapping[str, str]:
    from quart import request  # noqa: PLC0415 (the request context's proxy)

    return request.args


@pytest.mark.parametrize(
    ("option", "value"),
    [("limiter", anyio.CapacityLimiter(1)), ("on_error", lambda exc: {"type": "X"})],
)
def test_a_watch_refuses_the_options_it_cannot_use(option: str, value: Any) -> None:
    watch_ = Jobs().watch("job")
    with pytest.raises(TypeError, match=f"does not use {option}: it runs no code"):
        EventStream(watch_, **{option: value})
    EventStream(watch_, encoder=Encoder(), max_buffer_bytes=10)  # these it uses


def test_an_async_iterable_refuses_a_thread_limiter() -> None:
    async def events() -> Any:
        yield 1

    with pytest.raises(TypeError, match="does not use limiter"):
        EventStream(events(), limiter=anyio.CapacityLimiter(1))


class Lookup:
    """A source of one's own: it answers 404 for what it does not have, before
    the stream starts, and else streams one event of its own making."""

    uses = frozenset({"on_error"})

    def __init__(self, known: set[str]) -> None:
        self.known = known

    async def open(self, scope: Mapping[str, Any], channel: Channel, options: RunOptions) -> Any:
        name = scope["query_string"].decode()
        if name not in self.known:
            return Refusal(404, [("content-type", "text/plain")], b"no such thing")
        return _Found(channel, options.encoder.message("found", 1, {"name": name}))


class _Found:
    takes_slot = False

    def __init__(self, channel: Channel, event: bytes) -> None:
        self.channel, self.event = channel, event

    async def __call__(self, limiter: anyio.CapacityLimiter) -> None:
        self.channel.close(self.event)

    def queued(self, position: int) -> None:
        raise AssertionError("never in line")

    def farewell(self) -> None:
        return None


@pytest.mark.parametrize(("name", "status"), [("apple", 200), ("pear", 404)])
def test_any_source_that_follows_the_protocol_streams_over_a_socket(name: str, status: int) -> None:
    stream = EventStream(Lookup({"apple"}), heartbeat=None)
    with serve(stream) as served, httpx.Client(timeout=BOUND) as client:
        response = client.get(f"{served.url}?{name}")
    assert response.status_code == status
    if status == 200:
        assert response.text == 'event: found\nid: 1\ndata: {"name":"apple"}\n\n'
    else:
        assert response.text == "no such thing"


@pytest.mark.anyio
async def test_shutdown_waits_for_a_job_whose_stream_has_already_left() -> None:
    """A server's native cancel (uvicorn's, after its graceful timeout) ends the
    response before its job's thread returns: the grace is for the job too."""
    hub = Hub(max_streams=None, queue=0, threads=2, retry_after=5)
    ticket = hub.admit()
    assert ticket is not None
    left, release, shut = anyio.Event(), anyio.Event(), anyio.Event()

    async def stream() -> None:
        async with hub.slot(ticket, lambda _: None):
            hub.leave(ticket)  # the response has gone; its job holds the slot still
            left.set()
            await release.wait()

    async def shutdown() -> None:
        await hub.shutdown(BOUND)
        shut.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stream)
        await left.wait()
        tg.start_soon(shutdown)
        await anyio.wait_all_tasks_blocked()
        assert not shut.is_set()
        release.set()
    assert shut.is_set()
    assert hub.stats().running_jobs == 0
