"""One request's stream at its edges: the first and last sends, a job's helper
thread still reporting as the job returns, and a server's cancel that lands as
the stream ends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from conftest import BOUND, Message, parse

from asgi_sse import EventStream, EventStreamMiddleware, Job, JobCancelled, Reporter
from asgi_sse._bridge import Channel
from asgi_sse._jobs import JobRun
from asgi_sse._run import RunOptions

pytestmark = pytest.mark.anyio


def one_event(on_progress: Reporter) -> int:
    on_progress("a", {})
    return 1


async def test_a_report_still_waiting_for_room_as_its_job_returns_is_refused() -> None:
    """A job's helper thread blocked in a report (the buffer is full) when the job
    returns: it is told the job has ended, and the loop, which numbers the
    terminal event, does not wait on it."""
    outcome: list[str] = []
    first, helper_done = threading.Event(), threading.Event()

    def job(on_progress: Reporter) -> str:
        def helper() -> None:
            on_progress("one", {"pad": "x" * 300})  # fills the batch: nobody takes it
            first.set()
            try:
                on_progress("two", {})  # waits for room, or finds the job returned
            except JobCancelled as exc:
                outcome.append(str(exc))
            finally:
                helper_done.set()

        thread = threading.Thread(target=helper)
        thread.start()
        assert first.wait(BOUND)
        return "done"

    channel = Channel(200)
    run = JobRun(Job(job), channel, RunOptions(max_buffer_bytes=200), "a test job")
    with anyio.fail_after(BOUND):
        await run(anyio.CapacityLimiter(2))
    events = parse(b"".join(channel.take_rest()))
    assert [(e["event"], e["id"]) for e in events] == [("progress", "1"), ("completed", "2")]
    assert await anyio.to_thread.run_sync(helper_done.wait, BOUND)
    assert outcome == ["the event stream has ended: the job returned before this report"]


@pytest.mark.parametrize("stalls", ["start", "last"])
async def test_a_client_that_stops_reading_at_the_first_or_last_message_is_given_up(
    stalls: str,
) -> None:
    def stalled(message: Message) -> bool:
        if stalls == "start":
            return bool(message["type"] == "http.response.start")
        return message["type"] == "http.response.body" and not message.get("more_body")

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        if stalled(message):
            await anyio.sleep_forever()  # the client stopped reading

    app = EventStreamMiddleware(
        EventStream(Job(one_event), heartbeat=None, send_timeout=0.1), max_streams=1
    )
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with anyio.fail_after(BOUND):
        await app(scope, receive, send)
    stats = app.stats
    assert (stats.send_timeouts, stats.open_streams) == (1, 0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_farewell_to_a_connection_already_closed_lets_the_cancellation_through() -> None:
    release = threading.Event()
    first = anyio.Event()

    def job(on_progress: Reporter) -> None:
        on_progress("a", {})
        release.wait(BOUND)

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        if message.get("body"):
            if first.is_set():
                raise OSError("the connection is closed")  # the farewell
            first.set()

    stream = EventStream(Job(job), heartbeat=None)
    scope = {"type": "http", "headers": []}
    task = asyncio.ensure_future(stream(scope, receive, send))
    try:
        with anyio.fail_after(BOUND):
            await first.wait()
        task.cancel()  # the server's graceful timeout, natively
        release.set()
        with anyio.fail_after(BOUND), pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancel_landing_as_the_job_ends_sends_its_end_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server cancels in the same tick the terminal event went in: the client
    gets the job's own end, not that and a ServerShutdown with the same id, and
    the task ends quietly (the response was complete: nothing was left to cancel)."""
    sent: list[Any] = []
    task: asyncio.Future[None] | None = None
    close = Channel.close

    def close_then_cancel(self: Channel, last: bytes | None = None) -> None:
        close(self, last)
        if last is not None and b"completed" in last and task is not None:
            task.cancel()

    monkeypatch.setattr(Channel, "close", close_then_cancel)

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.ensure_future(
        EventStream(Job(one_event), heartbeat=None)({"type": "http"}, receive, send)
    )
    with anyio.fail_after(BOUND):
        await task
    body = b"".join(m.get("body", b"") for m in sent)
    assert [(e["event"], e["id"]) for e in parse(body)] == [("progress", "1"), ("completed", "2")]
    assert not sent[-1].get("more_body", False)


async def test_the_log_says_which_job_failed_and_for_which_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def build_report(on_progress: Reporter) -> None:
        raise KeyError("secret")

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/reports/7/events", "headers": []}
    with anyio.fail_after(BOUND):
        await EventStream(Job(build_report), heartbeat=None)(scope, receive, send)
    (record,) = [r for r in caplog.records if r.name == "asgi_sse"]
    assert record.getMessage() == (
        "event stream Job('test_the_log_says_which_job_failed_and_for_which_request"
        ".<locals>.build_report') for GET /reports/7/events failed"
    )
    assert "secret" not in b"".join(m.get("body", b"") for m in sent).decode()
