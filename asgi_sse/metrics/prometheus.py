"""Prometheus metrics for an app's event streams (``pip install 'asgi-sse[prometheus]'``)::

    metrics = PrometheusMetrics()  # prometheus_client's default registry
    app = EventStreamMiddleware(app, observers=[metrics])
    # and serve prometheus_client.make_asgi_app() at /metrics, as usual

The gauges and the traffic counters are the middleware's own counts, read when
Prometheus scrapes: observing them adds nothing to the path of an event. The
outcomes and the histograms are recorded once per stream or job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, get_args

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError:  # pragma: no cover (the message is the point)
    _NEEDS = (
        "asgi_sse.metrics.prometheus needs prometheus-client: pip install 'asgi-sse[prometheus]'"
    )
    raise ImportError(_NEEDS) from None

from .._observe import JobRecord, Observer, Outcome, StreamRecord

__all__ = ["PrometheusMetrics"]

#: Seconds: from a millisecond's wait to a long report's ten minutes.
BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0, 600.0)

#: (name, kind, help, the Stats field it reads).
_COUNTS = (
    ("streams_open", "gauge", "Event streams open, running or waiting for a slot.", "open_streams"),
    ("streams_queued", "gauge", "Event streams waiting for a slot.", "queued_jobs"),
    ("jobs_running", "gauge", "Jobs holding a slot.", "running_jobs"),
    ("events_sent", "counter", "Events the server took (not heartbeats).", "events_sent"),
    ("bytes_sent", "counter", "Bytes of events and heartbeats the server took.", "bytes_sent"),
    ("disconnects", "counter", "Clients that left before their stream ended.", "disconnects"),
    ("send_timeouts", "counter", "Clients dropped for not reading.", "send_timeouts"),
    ("refused", "counter", "Streams refused with 503 (full, or shutting down).", "refused"),
)


class PrometheusMetrics(Observer):
    """One middleware's streams and jobs as Prometheus metrics in ``registry``,
    named ``{namespace}_...`` (``namespace=""``: no prefix; see ``docs/metrics.md``)."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry = REGISTRY,
        namespace: str = "asgi_sse",
        buckets: Sequence[float] = BUCKETS,
    ) -> None:
        self.namespace = namespace
        self._prefix = f"{namespace}_" if namespace else ""  # as prometheus_client names
        self._stats: Callable[[], Any] | None = None

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, namespace=namespace, registry=registry, buckets=buckets)

        self._first_event = histogram(
            "time_to_first_event_seconds", "From a stream's admission to its first event."
        )
        self._queue_wait = histogram("queue_wait_seconds", "A job's wait for a slot (0: none).")
        self._duration = histogram("job_duration_seconds", "A job's run, in its slot.")
        ended = "{} ended, by outcome (the terminal event; none: the client left first)."

        def outcomes(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["outcome"], namespace=namespace, registry=registry)

        self._jobs = outcomes("jobs", ended.format("Jobs"))
        self._streams = outcomes("streams", ended.format("Streams"))
        for outcome in get_args(Outcome):  # every outcome shows, at 0 until it happens
            self._jobs.labels(outcome)
            if outcome != "retried":  # (an attempt's, never a stream's)
                self._streams.labels(outcome)
        registry.register(self)  # collects the middleware's own counts (see collect)
        self._registry = registry

    def unregister(self) -> None:
        """Take every metric of it out of its registry: for an app built more
        than once in a process (a test suite's), which the default registry
        would otherwise refuse as duplicated."""
        own = (self._first_event, self._queue_wait, self._duration, self._jobs, self._streams)
        for collector in (self, *own):
            self._registry.unregister(collector)

    def attached(self, stats: Callable[[], Any]) -> None:
        if self._stats is not None:
            raise ValueError("a PrometheusMetrics reports one middleware: make one for each")
        self._stats = stats

    def stream_closed(self, stream: StreamRecord) -> None:
        self._streams.labels(stream.outcome).inc()
        if stream.first_event is not None:
            self._first_event.observe(stream.first_event - stream.opened)

    def job_ended(self, job: JobRecord) -> None:
        assert job.ended is not None
        self._jobs.labels(job.outcome).inc()
        self._queue_wait.observe(0.0 if job.queued is None else job.started - job.queued)
        self._duration.observe(job.ended - job.started)

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(None if self._stats is None else self._stats())

    def _families(self, stats: Any) -> Iterator[Metric]:
        for name, kind, doc, field in _COUNTS:
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            value = 0 if stats is None else getattr(stats, field)
            yield family(f"{self._prefix}{name}", doc, value=value)
