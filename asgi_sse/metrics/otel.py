"""OpenTelemetry traces of an app's event streams (``pip install 'asgi-sse[otel]'``)::

    app = EventStreamMiddleware(app, observers=[OpenTelemetryTracing()])

One span per stream, from its start (admitted, and its source said yes) to its
real end: its last byte, or its client leaving or being dropped. Not when a
handler returns: a framework's handler returns the response long before the
stream ends, which is what ASGI instrumentation measures. The span's status is
the terminal event's: OK for ``completed``; ERROR (described by the error's
type) for a failed or lost job, or a resumable job's attempt that failed and
will be retried; unset for a cancelled one or a client that left first. A job's
run is a child span, current while it runs: spans made in the job's worker
thread (an instrumented HTTP client's, say) are its children. The stream spans
are children of whatever span is current when the stream starts (an ASGI
instrumentation's request span, say). An attempt at a resumable job run by this
process is a job span of its own, named by ``asgi_sse.job.id``.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

try:
    from opentelemetry import context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
except ImportError:  # pragma: no cover (the message is the point)
    _NEEDS = "asgi_sse.metrics.otel needs opentelemetry-api: pip install 'asgi-sse[otel]'"
    raise ImportError(_NEEDS) from None

from .._observe import JobRecord, Observer, StreamRecord

__all__ = ["OpenTelemetryTracing"]

_STATUS = {
    "completed": StatusCode.OK,
    "failed": StatusCode.ERROR,
    "lost": StatusCode.ERROR,
    "retried": StatusCode.ERROR,  # this attempt failed (the job goes on in another)
}


class OpenTelemetryTracing(Observer):
    """Spans of streams (``asgi-sse stream``) and their jobs (``asgi-sse job``), by
    ``tracer_provider`` (the global one if None)."""

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("asgi_sse", tracer_provider=tracer_provider)

    def stream_opened(self, stream: StreamRecord) -> None:
        attributes: dict[str, Any] = {"http.request.method": stream.method, "url.path": stream.path}
        if stream.job_id is not None:
            attributes["asgi_sse.job.id"] = stream.job_id
        stream.marks[self] = self._tracer.start_span("asgi-sse stream", attributes=attributes)

    def stream_closed(self, stream: StreamRecord) -> None:
        span: Span | None = stream.marks.pop(self, None)
        if span is not None:
            _end(span, stream.outcome, stream.error)

    def job_started(self, job: JobRecord) -> None:
        parent = None if job.stream is None else job.stream.marks.get(self)
        parent_context = None if parent is None else trace.set_span_in_context(parent)
        attributes: dict[str, Any] = {}  # given at the start: one call, not one each
        if job.job_id is not None:
            attributes["asgi_sse.job.id"] = job.job_id
        if job.queued is not None:
            attributes["asgi_sse.queue_wait_s"] = job.started - job.queued
        span = self._tracer.start_span("asgi-sse job", parent_context, attributes=attributes)
        # Current in the job's task, so in its worker thread (anyio copies the
        # context there); reset in job_ended, which runs in the same task.
        job.marks[self] = span, context.attach(trace.set_span_in_context(span))

    def job_ended(self, job: JobRecord) -> None:
        marked: tuple[Span, Token[Context]] | None = job.marks.pop(self, None)
        if marked is not None:
            span, token = marked
            context.detach(token)
            _end(span, job.outcome, job.error)


def _end(span: Span, outcome: str | None, error: str | None) -> None:
    attributes = {"asgi_sse.outcome": outcome or "none"}
    if error is not None:
        attributes["error.type"] = error
    span.set_attributes(attributes)
    code = _STATUS.get(outcome or "")
    if code is not None:
        span.set_status(Status(code, error if code is StatusCode.ERROR else None))
    span.end()
