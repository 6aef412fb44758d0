"""The ASGI response, driven in process on asyncio and trio."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from types import MappingProxyType
from typing import Any

import anyio
import pytest
from conftest import BOUND, Message, call_app, calling, parse

from asgi_sse import (
    EventStream,
    Job,
    JobCancelled,
    Reporter,
    ServerSentEvent,
    default_limiter,
    stream_progress,
)
from asgi_sse._encoder import HEARTBEAT

pytestmark = pytest.mark.anyio


def pipeline(data: str, on_progress: Reporter) -> dict[str, Any]:
    on_progress("tokenize", {"tokens": len(data)})
    on_progress("analyse", None)
    return {"summary": data.upper()}


async def test_a_blocking_job_streams_progress_then_its_result() -> None:
    call = await call_app(stream_progress(pipeline, data="café"))
    assert call.start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ],
    }
    assert call.body == (
        b'event: progress\nid: 1\ndata: {"step":"tokenize","details":{"tokens":4}}\n\n'
        b'event: progress\nid: 2\ndata: {"step":"analyse","details":{}}\n\n'
        b'event: completed\nid: 3\ndata: {"summary":"CAF\xc3\x89"}\n\n'
    )
    assert call.finished


async def test_every_event_arrives_in_order_through_a_small_buffer() -> None:
    def chatty(on_progress: Reporter) -> int:
        for i in range(5_000):
            on_progress("step", {"i": i})
        return 5_000

    call = await call_app(EventStream(Job(chatty), max_buffer_bytes=200))
    events = parse(call.body)
    assert [json.loads(e["data"])["details"]["i"] for e in events[:-1]] == list(range(5_000))
    assert [e["id"] for e in events] == [str(i) for i in range(1, 5_002)]
    assert events[-1] == {"event": "completed", "data": "5000", "id": "5001"}


async def test_what_is_ready_goes_out_in_one_send() -> None:
    """While one send is slow, the job keeps reporting; all of that leaves in one body."""
    first_sending = threading.Event()
    job_done = anyio.Event()

    def job(on_progress: Reporter) -> int:
        on_progress("step", {"i": 0})
        if not first_sending.wait(BOUND):
            raise TimeoutError("the first event was never sent")
        for i in range(1, 1_000):
            on_progress("step", {"i": i})
        anyio.from_thread.run_sync(job_done.set)
        return 1_000

    async def on_send(message: Message) -> None:
        if message.get("body") and not first_sending.is_set():
            first_sending.set()
            await job_done.wait()  # the first send stalls until the job has reported all

    async with calling(stream_progress(job), on_send=on_send) as (call, _):
        pass
    bodies = [m["body"] for m in call.messages[1:] if m["body"]]
    assert parse(bodies[0]) == [
        {"event": "progress", "data": '{"step":"step","details":{"i":0}}', "id": "1"}
    ]
    # Then the 999 events reported meanwhile, at once; the completed event joins them
    # or follows, depending on when the loop sees the job return.
    assert [body.count(b"event: progress") for body in bodies[1:]] in ([999], [999, 0])
    assert bodies[-1].endswith(b"event: completed\nid: 1001\ndata: 1000\n\n")
    assert [e["id"] for e in parse(call.body)] == [str(i) for i in range(1, 1_002)]


async def test_reports_made_on_the_event_loop_thread_never_freeze_it() -> None:
    """A job may hand on_progress to async code; the loop must not wait on itself."""
    overflowed = anyio.Event()

    def job(on_progress: Reporter) -> None:
        for i in range(200):
            anyio.from_thread.run_sync(on_progress, "step", {"i": i})
            if i == 10:
                anyio.from_thread.run_sync(overflowed.set)

    async def on_send(message: Message) -> None:
        if message.get("body"):
            await overflowed.wait()  # the first send stalls: reports 2-11 pile up meanwhile

    stream = EventStream(Job(job), max_buffer_bytes=100)  # about two events
    async with calling(stream, on_send=on_send) as (call, _):
        pass
    assert [e["id"] for e in parse(call.body)] == [str(i) for i in range(1, 202)]


async def test_a_mapping_that_is_not_a_dict_is_sent_as_an_object() -> None:
    def job(on_progress: Reporter) -> None:
        on_progress("s", MappingProxyType({"a": 1}))

    events = parse((await call_app(stream_progress(job))).body)
    assert events[0]["data"] == '{"step":"s","details":{"a":1}}'


async def test_reports_from_several_threads_of_one_job_keep_consecutive_ids() -> None:
    def fan_out(on_progress: Reporter) -> None:
        workers = [
            threading.Thread(
                target=lambda n=n: [on_progress(f"w{n}", {"i": i}) for i in range(500)]
            )
            for n in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    events = parse((await call_app(stream_progress(fan_out))).body)
    assert [e["id"] for e in events] == [str(i) for i in range(1, 2_002)]
    for n in range(4):
        mine = [json.loads(e["data"]) for e in events if f'"w{n}"' in e["data"]]
        assert [m["details"]["i"] for m in mine] == list(range(500))


def failing(on_progress: Reporter) -> None:
    on_progress("start", {})
    raise ValueError("database password is hunter2")


async def test_a_failing_job_sends_one_error_event_without_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="asgi_sse"):
        call = await call_app(stream_progress(failing))
    assert parse(call.body) == [
        {"event": "progress", "data": '{"step":"start","details":{}}', "id": "1"},
        {"event": "error", "data": '{"type":"ValueError"}', "id": "2"},
    ]
    assert b"hunter2" not in call.body
    assert b"Traceback" not in call.body
    assert call.finished
    [record] = caplog.records
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


async def test_on_error_chooses_what_the_client_sees() -> None:
    stream = EventStream(
        Job(failing), on_error=lambda exc: {"type": type(exc).__name__, "message": str(exc)}
    )
    events = parse((await call_app(stream)).body)
    assert json.loads(events[-1]["data"]) == {
        "type": "ValueError",
        "message": "database password is hunter2",
    }


async def test_a_broken_on_error_hook_falls_back_to_the_safe_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(exc: Exception) -> Any:
        raise RuntimeError("hook bug")

    with caplog.at_level(logging.ERROR, logger="asgi_sse"):
        events = parse((await call_app(EventStream(Job(failing), on_error=broken))).body)
    assert events[-1] == {"event": "error", "data": '{"type":"ValueError"}', "id": "2"}
    assert any("on_error hook failed" in r.getMessage() for r in caplog.records)


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


async def test_results_msgspec_cannot_encode_fall_back_to_str_or_an_error_event() -> None:
    class Custom:
        def __str__(self) -> str:
            return "custom!"

    events = parse((await call_app(stream_progress(lambda on_progress: Custom()))).body)
    assert events == [{"event": "completed", "data": '"custom!"', "id": "1"}]

    events = parse((await call_app(stream_progress(lambda on_progress: Unprintable()))).body)
    assert events == [{"event": "error", "data": '{"type":"TypeError"}', "id": "1"}]


async def test_a_non_serializable_detail_raises_in_the_job_and_ends_in_an_error() -> None:
    seen: list[str] = []

    def job(on_progress: Reporter) -> None:
        on_progress("ok", {"n": 1})
        try:
            on_progress("bad", {"x": Unprintable()})
        except TypeError as exc:
            seen.append(str(exc))
            raise

    events = parse((await call_app(stream_progress(job))).body)
    assert seen == [
        "Cannot encode a Unprintable: it is not JSON-serializable and str() raised RuntimeError"
    ]
    assert [(e["event"], e["id"]) for e in events] == [("progress", "1"), ("error", "2")]


async def test_a_sync_generator_runs_in_a_thread_and_its_return_value_completes() -> None:
    threads: set[str] = set()

    def events() -> Iterator[object]:
        threads.add(threading.current_thread().name)
        yield ServerSentEvent(data="hello\nworld", event="greeting", id="a", retry=100)
        yield {"n": 1}
        yield "plain"
        yield None
        return "the end"

    call = await call_app(EventStream(events()))
    assert call.body == (
        b"event: greeting\nid: a\nretry: 100\ndata: hello\ndata: world\n\n"
        b'data: {"n":1}\n\n'
        b"data: plain\n\n"
        b"data: null\n\n"
        b'event: completed\ndata: "the end"\n\n'
    )
    assert threading.current_thread().name not in threads


async def test_an_async_iterable_streams_and_completes_with_null() -> None:
    async def events() -> AsyncIterator[object]:
        yield ServerSentEvent(data=[1, 2], event="list")
        yield "text"

    call = await call_app(EventStream(events()))
    assert call.body == (
        b"event: list\ndata: [1,2]\n\ndata: text\n\nevent: completed\ndata: null\n\n"
    )


async def test_an_iterable_that_raises_ends_in_an_error_event() -> None:
    def events() -> Iterator[str]:
        yield "one"
        raise KeyError("secret")

    call = await call_app(EventStream(events()))
    assert call.body == b'data: one\n\nevent: error\ndata: {"type":"KeyError"}\n\n'


async def leave_after_first_event(app: Any) -> None:
    async def on_send(message: Message) -> None:
        if message.get("body"):
            leave.set()

    async with calling(app, on_send=on_send) as (call, leave):
        pass
    assert not call.finished
    assert b"completed" not in call.body


async def test_client_leaving_stops_a_silent_job_that_polls_cancelled() -> None:
    limiter = anyio.CapacityLimiter(2)
    outcome: list[str] = []

    def job(on_progress: Reporter) -> None:
        on_progress("started", {})
        stopped = threading.Event()
        while not on_progress.cancelled:  # a job that does not report: it polls the flag
            if stopped.wait(0.005):
                break
        outcome.append("noticed")
        with pytest.raises(JobCancelled):
            on_progress("too late", {})
        outcome.append("raised")
        try:
            on_progress("swallowed", {})
        except JobCancelled:
            outcome.append("raised again")

    await leave_after_first_event(EventStream(Job(job), limiter=limiter))
    # The response returned only after the thread did, so this is no race:
    assert outcome == ["noticed", "raised", "raised again"]
    assert limiter.borrowed_tokens == 0


async def test_client_leaving_closes_generators_in_their_own_thread() -> None:
    closed: list[str] = []

    def sync_events() -> Iterator[int]:
        try:
            yield from range(10**9)
        finally:
            closed.append(threading.current_thread().name)

    async def async_events() -> AsyncIterator[int]:
        try:
            for i in range(10**9):
                yield i
                await anyio.sleep(0)
        finally:
            closed.append("async")

    await leave_after_first_event(EventStream(sync_events()))
    await leave_after_first_event(EventStream(async_events()))
    assert len(closed) == 2
    assert closed[0] != threading.current_thread().name
    assert closed[1] == "async"


async def test_a_client_that_leaves_while_queued_for_a_thread_never_runs_the_job() -> None:
    limiter = anyio.CapacityLimiter(1)
    ran: list[bool] = []
    await limiter.acquire()  # every thread is busy
    try:

        async def on_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                leave.set()  # headers went out at once, before any thread was free

        async with calling(
            EventStream(Job(lambda on_progress: ran.append(True)), limiter=limiter),
            on_send=on_send,
        ) as (call, leave):
            pass
    finally:
        limiter.release()
    assert [m["type"] for m in call.messages] == ["http.response.start"]
    assert ran == []
    assert limiter.borrowed_tokens == 0


async def test_a_send_that_never_completes_times_out_and_cancels_the_job() -> None:
    outcome: list[str] = []
    reported = threading.Event()

    def job(on_progress: Reporter) -> None:
        try:
            for i in range(10**6):
                on_progress("step", {"i": i})
                reported.set()
        except JobCancelled:
            outcome.append("cancelled")

    async def on_send(message: Message) -> None:
        if message.get("body"):
            await anyio.sleep_forever()  # a client that stopped reading

    stream = EventStream(Job(job), send_timeout=0.05, max_buffer_bytes=1024)
    async with calling(stream, on_send=on_send) as (call, _):
        pass
    assert outcome == ["cancelled"]
    assert not call.finished


async def test_a_send_that_raises_oserror_means_the_client_is_gone() -> None:
    outcome: list[str] = []

    def job(on_progress: Reporter) -> None:
        try:
            for i in range(10**6):
                on_progress("step", {"i": i})
        except JobCancelled:
            outcome.append("cancelled")

    async def on_send(message: Message) -> None:
        if message.get("body"):
            raise ConnectionResetError("the peer is gone")

    async with calling(stream_progress(job), on_send=on_send) as (call, _):
        pass
    assert outcome == ["cancelled"]
    assert not call.finished


async def test_heartbeats_fill_silences_and_dispatch_nothing() -> None:
    beats = threading.Event()
    seen = 0

    async def on_send(message: Message) -> None:
        nonlocal seen
        if message.get("body") == HEARTBEAT:
            seen += 1
            if seen == 2:
                beats.set()

    def job(on_progress: Reporter) -> str:
        on_progress("waiting", {})
        if not beats.wait(BOUND):
            raise TimeoutError("no heartbeats")
        return "done"

    async with calling(EventStream(Job(job), heartbeat=0.01), on_send=on_send) as (call, _):
        pass
    assert call.body.count(HEARTBEAT) >= 2
    assert [e["event"] for e in parse(call.body)] == ["progress", "completed"]


async def test_the_send_timeout_covers_heartbeats_too() -> None:
    noticed = threading.Event()

    def silent(on_progress: Reporter) -> None:
        while not on_progress.cancelled:
            if noticed.wait(0.005):
                return
        noticed.set()

    async def on_send(message: Message) -> None:
        if message.get("body") == HEARTBEAT:
            await anyio.sleep_forever()  # the client stopped reading

    stream = EventStream(Job(silent), heartbeat=0.01, send_timeout=0.05)
    async with calling(stream, on_send=on_send) as (call, _):
        pass
    assert noticed.is_set()
    assert call.body == HEARTBEAT
    assert not call.finished


async def test_heartbeats_can_be_turned_off() -> None:
    call = await call_app(EventStream(Job(pipeline, "x"), heartbeat=None))
    assert HEARTBEAT not in call.body


async def test_jobs_use_asgi_sses_limiter_not_anyios_shared_one() -> None:
    borrowed: list[tuple[float, float]] = []

    def job(on_progress: Reporter) -> None:
        borrowed.append(
            anyio.from_thread.run_sync(
                lambda: (
                    default_limiter().borrowed_tokens,
                    anyio.to_thread.current_default_thread_limiter().borrowed_tokens,
                )
            )
        )

    await call_app(stream_progress(job))
    assert borrowed == [(1, 0)]
    assert default_limiter().total_tokens == 40


async def test_extra_headers_add_to_and_replace_the_defaults() -> None:
    stream = EventStream(
        Job(pipeline, "x"), headers={"Cache-Control": "no-store", "x-request-id": "42"}
    )
    call = await call_app(stream)
    assert call.start["headers"] == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-accel-buffering", b"no"),
        (b"cache-control", b"no-store"),
        (b"x-request-id", b"42"),
    ]


async def test_header_pairs_may_repeat_a_name() -> None:
    cookies = [("Set-Cookie", "a=1; HttpOnly"), ("Set-Cookie", "b=2")]
    call = await call_app(EventStream(Job(pipeline, "x"), headers=cookies))
    assert [v for k, v in call.start["headers"] if k == b"set-cookie"] == [b"a=1; HttpOnly", b"b=2"]


async def test_only_http_is_served() -> None:
    async def receive() -> Message:
        raise AssertionError

    async def send(message: Message) -> None:
        raise AssertionError

    with pytest.raises(RuntimeError, match="not 'websocket'"):
        await stream_progress(pipeline, "x")({"type": "websocket"}, receive, send)


def test_bad_arguments_fail_when_the_response_is_built() -> None:
    with pytest.raises(
        TypeError, match=r"cannot call pipeline .* missing a required argument: 'data'"
    ):
        stream_progress(pipeline)
    with pytest.raises(
        TypeError, match=r"cannot call pipeline .* unexpected keyword argument 'colour'"
    ):
        stream_progress(pipeline, "x", colour="red")
    with pytest.raises(TypeError, match="on_progress is passed to pipeline by asgi-sse"):
        stream_progress(pipeline, "x", on_progress=print)

    def no_callback(data: str) -> None: ...

    with pytest.raises(TypeError, match="no_callback must accept an on_progress keyword argument"):
        stream_progress(no_callback, "x")
    stream_progress(lambda **kwargs: None)  # **kwargs takes it

    async def coroutine(on_progress: Reporter) -> None: ...

    with pytest.raises(TypeError, match="coroutine is async: Job runs blocking functions"):
        stream_progress(coroutine)


async def test_a_job_that_catches_exception_still_stops_when_the_client_leaves() -> None:
    attempts: list[int] = []

    def retrying(on_progress: Reporter) -> None:
        for attempt in range(10**6):  # a typical "log and retry" loop
            try:
                on_progress("attempt", {"n": attempt})
            except Exception:  # the point of the test: a loop that swallows errors
                continue
            attempts.append(attempt)

    await leave_after_first_event(stream_progress(retrying))
    assert 0 < len(attempts) < 10**6


async def test_a_job_that_raises_job_cancelled_itself_ends_in_an_error_event() -> None:
    def confused(on_progress: Reporter) -> None:
        on_progress("start", {})
        raise JobCancelled("not from asgi-sse")

    call = await call_app(stream_progress(confused))
    assert parse(call.body)[-1] == {"event": "error", "data": '{"type":"JobCancelled"}', "id": "2"}
    assert call.finished


@pytest.mark.parametrize("source", ["text", b"bytes", {"a": 1}, 42, None])
def test_sources_that_are_not_streams_of_events_are_refused(source: Any) -> None:
    with pytest.raises(TypeError, match=r"source must be a Job, a resumable job.s watch"):
        EventStream(source)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heartbeat": 0}, "heartbeat must be a positive number"),
        ({"send_timeout": -1}, "send_timeout must be a positive number"),
        ({"max_buffer_bytes": 0}, "max_buffer_bytes must be at least 1"),
        ({"headers": {"x-a": "b\r\nx-injected: 1"}}, "contains a control character"),
        ({"headers": {"x-a": "b\x01"}}, "contains a control character"),
        ({"headers": {"x-a": "b\x7f"}}, "contains a control character"),
        ({"headers": {"Connection": "close"}}, "hop-by-hop"),
        ({"headers": {"x foo": "1"}}, "not an HTTP token"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EventStream([], **options)
