"""What operators see (asgi_sse.metrics): Prometheus metrics scraped over HTTP from
a real hypercorn (``metrics_app``), OpenTelemetry spans read from the SDK's
in-memory exporter, and the rules both follow (a stream's outcome is its last
event; an observer that fails never breaks a stream)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from conftest import BOUND, stalled_client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from processes import launch
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sse_spec import parse_stream

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter
from asgi_sse._observe import news, outcome_of
from asgi_sse.metrics import JobRecord, Observer, StreamRecord
from asgi_sse.metrics.otel import OpenTelemetryTracing
from asgi_sse.metrics.prometheus import PrometheusMetrics
from asgi_sse.resumable import Jobs
from asgi_sse.testing import aconnect

# -- the rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "outcome"),
    [
        (b'event: completed\nid: 3\ndata: {"n":1}\n\n', ("completed", None)),
        (b'event: error\ndata: {"type":"ValueError"}\n\n', ("failed", "ValueError")),
        (b'event: error\nid: 9\ndata: {"type":"JobLost"}\n\n', ("lost", "JobLost")),
        (b'event: error\ndata: {"type":"JobCancelled"}\n\n', ("cancelled", "JobCancelled")),
        (b'event: error\ndata: {"type":"ServerShutdown"}\n\n', ("cancelled", "ServerShutdown")),
        (b"event: error\ndata: not json\n\n", ("failed", None)),
        (b"event: error\ndata: [1]\n\n", ("failed", None)),
        (b'event: error\ndata: {"type":5}\n\n', ("failed", None)),
        (b"event: error\ndata: " + b"[" * 100_000 + b"\n\n", ("failed", None)),
        (
            b'event: retrying\nid: 4\ndata: {"type":"OSError","attempt":1}\n\n',
            ("retried", "OSError"),
        ),
        (b'event: progress\ndata: {"step":"a"}\n\n', ("none", None)),
        (None, ("none", None)),
    ],
)
def test_a_streams_outcome_is_its_last_event(frame: bytes | None, outcome: Any) -> None:
    assert outcome_of(frame) == outcome


@pytest.mark.parametrize(
    ("frame", "is_news"),
    [
        (b'event: progress\nid: 1\ndata: {"step":"a"}\n\n', True),
        (b"event: completed\ndata: 1\n\n", True),
        (b"data: a message of an iterable\n\n", True),
        (b": ping\n\n", False),
        (b"retry: 3000\n\n", False),
        (b'event: queued\ndata: {"position":1}\n\n', False),
        (b'event: unavailable\ndata: {"type":"BackendUnavailable"}\n\n', False),
    ],
)
def test_only_the_jobs_own_word_is_a_first_event(frame: bytes, is_news: bool) -> None:
    assert news(frame) is is_news


# -- Prometheus, scraped from a real server --------------------------------------------


def scrape(client: httpx.Client) -> dict[str, float]:
    """Every sample of /metrics, by its name and labels (``name{label=value}``)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def scraped_until(client: httpx.Client, **wanted: float) -> dict[str, float]:
    """Scrape until the samples named have these values (``outcome_x`` for
    ``{outcome=x}``), within BOUND: the server's counts move as its tasks run."""
    names = {_sample(name): value for name, value in wanted.items()}
    deadline = time.monotonic() + BOUND
    while True:
        samples = scrape(client)
        if all(samples.get(name) == value for name, value in names.items()):
            return samples
        assert time.monotonic() < deadline, f"never scraped {names}: {samples}"
        time.sleep(0.02)  # the pace of a bounded look at a condition, not a synchronisation


def _sample(name: str) -> str:
    family, _, outcome = name.partition("__")
    return f"asgi_sse_{family}{{outcome={outcome}}}" if outcome else f"asgi_sse_{family}"


class Read:
    """A stream read so far, on its own connection."""

    def __init__(self, response: httpx.Response) -> None:
        self.chunks = response.iter_bytes()
        self.body = b""

    def until(self, name: str) -> list[dict[str, str]]:
        while not any(e["event"] == name for e in parse_stream(self.body)):
            self.body += next(self.chunks)
        return parse_stream(self.body)

    def rest(self) -> list[dict[str, str]]:
        for chunk in self.chunks:
            self.body += chunk
        return parse_stream(self.body)


@contextmanager
def opened(client: httpx.Client, path: str) -> Iterator[Read]:
    with client.stream("GET", path) as response:
        assert response.status_code == 200
        yield Read(response)


def test_prometheus_sees_every_stream_and_job_scraped_from_a_real_server() -> None:
    bodies = []
    with (
        launch("hypercorn-asyncio", "metrics_app:app") as server,
        httpx.Client(base_url=server.url, timeout=BOUND) as client,
    ):
        for path, last in (("/jobs/ok", "completed"), ("/jobs/fails", "error")):
            with opened(client, path) as read:
                assert read.rest()[-1]["event"] == last
                bodies.append(read.body)
        with opened(client, "/jobs/gate") as first:  # holds the one slot
            first.until("progress")
            with opened(client, "/jobs/gate") as second:  # waits in line
                second.until("queued")
                refused = client.get("/jobs/ok")  # and no more room
                assert refused.status_code == 503
                during = scrape(client)
                assert during["asgi_sse_streams_open"] == 2
                assert during["asgi_sse_streams_queued"] == 1
                assert during["asgi_sse_jobs_running"] == 1
                assert during["asgi_sse_refused_total"] == 1
                first.chunks.close()  # the first client leaves, its job still at the gate
                bodies.append(first.body)
                scraped_until(client, disconnects_total=1)
                assert client.post("/gate").status_code == 204
                assert second.rest()[-1]["event"] == "completed"
                bodies.append(second.body)
        after = scraped_until(client, jobs_total__cancelled=1, streams_open=0)
        with stalled_client(server.url, "/jobs/floods"):  # reads nothing: a send times out
            # The stream can end before its job's thread has seen the cancel: wait for both.
            timed_out = scraped_until(
                client,
                send_timeouts_total=1,
                streams_open=0,
                jobs_running=0,
                jobs_total__cancelled=2,
            )
    # The client that read nothing: a send timeout, its job cancelled, its stream ended
    # without a terminal event; not a disconnect.
    counted = (*OUTCOMES, "send_timeouts_total", "disconnects_total", "refused_total")
    moved = {name: timed_out[_sample(name)] - after[_sample(name)] for name in counted}
    assert {name: n for name, n in moved.items() if n} == {
        "jobs_total__cancelled": 1,
        "streams_total__none": 1,
        "send_timeouts_total": 1,
    }
    assert timed_out["asgi_sse_events_sent_total"] > after["asgi_sse_events_sent_total"]
    assert {name: after[_sample(name)] for name in OUTCOMES} == {
        "jobs_total__completed": 2,  # ok, and the second at the gate
        "jobs_total__failed": 1,
        "jobs_total__cancelled": 1,  # the first at the gate, stopped once its client left
        "jobs_total__lost": 0,
        "jobs_total__retried": 0,
        "jobs_total__none": 0,
        "streams_total__completed": 2,
        "streams_total__failed": 1,
        "streams_total__cancelled": 0,
        "streams_total__lost": 0,
        "streams_total__none": 1,  # the client that left
    }
    assert after["asgi_sse_events_sent_total"] == sum(len(parse_stream(b)) for b in bodies) == 11
    assert after["asgi_sse_bytes_sent_total"] == sum(map(len, bodies))
    assert (after["asgi_sse_disconnects_total"], after["asgi_sse_send_timeouts_total"]) == (1, 0)
    assert after["asgi_sse_refused_total"] == 1
    assert after["asgi_sse_time_to_first_event_seconds_count"] == 4
    assert after["asgi_sse_job_duration_seconds_count"] == 4
    assert after["asgi_sse_queue_wait_seconds_count"] == 4
    assert after["asgi_sse_queue_wait_seconds_sum"] > 0  # the second waited for the first


OUTCOMES = [
    *(f"jobs_total__{o}" for o in ("completed", "failed", "cancelled", "lost", "retried", "none")),
    *(f"streams_total__{o}" for o in ("completed", "failed", "cancelled", "lost", "none")),
]


# -- OpenTelemetry, in process ---------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # passed to the observer: the global one is left alone
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans of that name, in the order they ended."""
    return [span for span in exporter.get_finished_spans() if span.name == name]


def job(outcome: str, on_progress: Reporter) -> str:
    on_progress("step", {})
    if outcome == "fails":
        raise ValueError("a secret")
    return "done"


async def route(scope: dict[str, Any], receive: Any, send: Any) -> None:
    outcome = scope["path"].strip("/")
    await EventStream(Job(job, outcome))(scope, receive, send)


pytestmark = pytest.mark.anyio


async def test_a_span_per_stream_ends_with_the_stream_and_its_job_is_a_child(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    app = EventStreamMiddleware(route, observers=[OpenTelemetryTracing(tracer_provider=provider)])
    for path, last in (("/ok", "completed"), ("/fails", "error")):
        async with aconnect(app, path) as response:
            assert (await response.until(last))[-1].event == last
    streams, jobs = named(exporter, "asgi-sse stream"), named(exporter, "asgi-sse job")
    assert [(s.attributes["url.path"], s.status.status_code) for s in streams] == [
        ("/ok", StatusCode.OK),
        ("/fails", StatusCode.ERROR),
    ]
    assert streams[1].status.description == "ValueError"
    assert streams[1].attributes["error.type"] == "ValueError"
    assert [s.attributes["asgi_sse.outcome"] for s in streams] == ["completed", "failed"]
    for stream_span, job_span in zip(streams, jobs, strict=True):
        assert job_span.parent is not None
        assert job_span.parent.span_id == stream_span.context.span_id
        assert stream_span.start_time <= job_span.start_time
        assert job_span.end_time <= stream_span.end_time  # the stream ends after its job


async def test_a_client_that_leaves_ends_its_span_then_and_its_job_is_cancelled(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans

    def polls(on_progress: Reporter) -> None:
        on_progress("started", {})
        while not on_progress.cancelled:
            threading.Event().wait(0.01)  # the job's pace: it looks between pieces of work

    async def app_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await EventStream(Job(polls))(scope, receive, send)

    observers = [OpenTelemetryTracing(tracer_provider=provider)]
    app = EventStreamMiddleware(app_route, observers=observers)
    async with aconnect(app, "/") as response:
        await response.until("progress")
    # Left: the app has returned, so the job has too.
    stream_span, job_span = (
        named(exporter, "asgi-sse stream")[0],
        named(exporter, "asgi-sse job")[0],
    )
    assert stream_span.attributes is not None
    assert job_span.attributes is not None
    assert stream_span.attributes["asgi_sse.outcome"] == "none"  # it never got an end
    assert stream_span.status.status_code == StatusCode.UNSET
    assert job_span.attributes["asgi_sse.outcome"] == "cancelled"
    assert stream_span.end_time is not None
    assert job_span.end_time is not None
    assert stream_span.end_time <= job_span.end_time  # ended when the client left


async def test_a_watch_of_a_resumable_job_names_its_job(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    jobs = Jobs()

    async def watch(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await EventStream(jobs.watch(scope["path"].strip("/")))(scope, receive, send)

    app = EventStreamMiddleware(
        watch, jobs=jobs, observers=[OpenTelemetryTracing(tracer_provider=provider)]
    )
    async with jobs:
        job_id = await jobs.start(Job(job, "ok"))
        async with aconnect(app, f"/{job_id}") as response:
            await response.until("completed")
    (stream_span,) = named(exporter, "asgi-sse stream")
    assert stream_span.attributes["asgi_sse.job.id"] == job_id
    assert stream_span.status.status_code == StatusCode.OK


class Broken(Observer):
    def stream_opened(self, stream: StreamRecord) -> None:
        raise RuntimeError("a bug in an observer")

    def job_ended(self, job: JobRecord) -> None:
        raise RuntimeError("another")


async def test_an_observer_that_fails_is_logged_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = EventStreamMiddleware(route, observers=[Broken()])
    async with aconnect(app, "/ok") as response:
        events = await response.until("completed")
    assert json.loads(events[-1].data) == "done"
    assert caplog.text.count("failed in") == 2
    assert app.stats.open_streams == 0


async def test_a_frameworks_handler_returns_long_before_its_streams_span_ends(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from asgi_sse_starlette import EventStreamResponse  # noqa: PLC0415

    exporter, provider = spans
    returned: list[int] = []

    async def handler(request: Request) -> EventStreamResponse:
        try:
            return EventStreamResponse(Job(job, "ok"))
        finally:
            returned.append(time.time_ns())

    starlette = Starlette(routes=[Route("/", handler)])
    observers = [OpenTelemetryTracing(tracer_provider=provider)]
    app = EventStreamMiddleware(starlette, observers=observers)
    async with aconnect(app, "/") as response:
        await response.until("completed")
    stream_span, job_span = (
        named(exporter, "asgi-sse stream")[0],
        named(exporter, "asgi-sse job")[0],
    )
    assert stream_span.end_time is not None
    assert job_span.end_time is not None
    assert returned[0] < job_span.start_time  # the job ran after the handler returned...
    assert job_span.end_time <= stream_span.end_time  # ...and the stream's span outlived it


async def test_the_job_span_is_current_in_the_jobs_worker_thread(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    seen: list[int] = []

    def traced(on_progress: Reporter) -> None:
        # What an instrumented client in the job would take for its parent.
        seen.append(trace.get_current_span().get_span_context().span_id)

    async def app_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await EventStream(Job(traced))(scope, receive, send)

    class Probe(Observer):  # told of the job's end after the tracer (closing hooks go in reverse)
        def job_ended(self, job: JobRecord) -> None:
            seen.append(trace.get_current_span().get_span_context().span_id)

    observers = [Probe(), OpenTelemetryTracing(tracer_provider=provider)]
    app = EventStreamMiddleware(app_route, observers=observers)
    async with aconnect(app, "/") as response:
        await response.until("completed")
    (job_span,) = named(exporter, "asgi-sse job")
    assert job_span.context is not None
    # Current in the thread; once it ended, what was current before is again.
    assert seen == [job_span.context.span_id, trace.INVALID_SPAN.get_span_context().span_id]


async def test_a_resumable_attempt_is_a_job_span_named_by_its_job(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    jobs = Jobs()

    def fails(on_progress: Reporter) -> None:
        raise OSError("a secret")

    observers = [OpenTelemetryTracing(tracer_provider=provider)]
    EventStreamMiddleware(route, jobs=jobs, observers=observers)  # governs them
    async with jobs:
        job_id = await jobs.create()
        with pytest.raises(OSError, match="a secret"):
            await jobs.perform(Job(fails), id=job_id, retry_if=lambda exc: True)
    (span,) = named(exporter, "asgi-sse job")
    assert span.attributes is not None
    assert span.attributes["asgi_sse.job.id"] == job_id
    assert span.attributes["asgi_sse.outcome"] == "retried"
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "OSError")


# -- Prometheus, its options ----------------------------------------------------------


def test_prometheus_metrics_register_in_the_default_registry() -> None:
    metrics = PrometheusMetrics()
    try:
        EventStreamMiddleware(route, observers=[metrics])
        assert REGISTRY.get_sample_value("asgi_sse_streams_open") == 0
        assert REGISTRY.get_sample_value("asgi_sse_jobs_total", {"outcome": "lost"}) == 0
    finally:
        metrics.unregister()
    again = PrometheusMetrics()  # an app built again in the same process
    again.unregister()
    assert REGISTRY.get_sample_value("asgi_sse_streams_open") is None


def test_an_empty_namespace_names_every_metric_without_a_prefix() -> None:
    registry = CollectorRegistry()
    EventStreamMiddleware(route, observers=[PrometheusMetrics(registry=registry, namespace="")])
    names = {family.name for family in registry.collect()}
    assert {"streams_open", "events_sent", "jobs", "time_to_first_event_seconds"} <= names
    assert not any(name.startswith("_") for name in names)


def test_one_prometheus_metrics_reports_one_middleware() -> None:
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    EventStreamMiddleware(route, observers=[metrics])
    with pytest.raises(ValueError, match="one middleware"):
        EventStreamMiddleware(route, observers=[metrics])
