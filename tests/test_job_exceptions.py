"""Whatever a job raises ends its own stream, and no other, with one ``error`` event.

Over real sockets, HTTP/1.1 and HTTP/2 (h2c), on both of hypercorn's workers: a
``BaseException`` that is not an ``Exception`` (``GeneratorExit``, a library's
own, ``SystemExit``...) must not pass for a cancellation or a shutdown, escape
into the server, or cut the other streams of the same HTTP/2 connection.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import BOUND, parse, serve

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


class LibraryAbort(BaseException):
    """A library's own BaseException, as some SDKs define for aborts."""


RAISED: dict[str, type[BaseException]] = {
    "GeneratorExit": GeneratorExit,
    "LibraryAbort": LibraryAbort,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
}
KINDS = [*RAISED, "BaseExceptionGroup"]


def raise_kind(kind: str) -> None:
    if kind == "BaseExceptionGroup":
        raise BaseExceptionGroup("two", [LibraryAbort(), ValueError()])
    raise RAISED[kind]


def job_raising(kind: str, on_progress: Reporter) -> None:
    on_progress("before", {})
    raise_kind(kind)


async def async_raising(kind: str) -> AsyncIterator[str]:
    yield "before"
    raise_kind(kind)


def app_for(release: threading.Event) -> EventStreamMiddleware:
    """``/ok``: a job that waits for ``release``; ``/job/K`` and ``/async/K``: a
    thread job or an async source that raises K after one event."""

    def waits(on_progress: Reporter) -> str:
        on_progress("waiting", {})
        assert release.wait(BOUND)
        return "done"

    async def route(scope: Any, receive: Any, send: Any) -> None:
        _, where, kind = (scope["path"] + "/x/x").split("/")[:3]
        if where == "job":
            source: Any = Job(job_raising, kind)
        elif where == "async":
            source = async_raising(kind)
        else:
            source = Job(waits)
        await EventStream(source, heartbeat=None)(scope, receive, send)

    return EventStreamMiddleware(route)


# In the event loop's own thread, SystemExit and KeyboardInterrupt may be a signal's
# (trio raises KeyboardInterrupt at a checkpoint): an async source lets them go on.
SOURCES = [(where, kind) for where in ("job", "async") for kind in KINDS]
SOURCES.remove(("async", "SystemExit"))
SOURCES.remove(("async", "KeyboardInterrupt"))


@pytest.mark.parametrize("http2", [False, True], ids=["HTTP/1.1", "HTTP/2"])
@pytest.mark.parametrize("worker", ["asyncio", "trio"])
@pytest.mark.parametrize(("where", "kind"), SOURCES)
def test_a_source_raising_a_base_exception_ends_only_its_own_stream(
    kind: str, where: str, worker: str, http2: bool, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    middleware = app_for(release)
    with (
        serve(middleware, backend=worker) as server,
        httpx.Client(http1=not http2, http2=http2, timeout=BOUND) as client,
    ):
        with client.stream("GET", f"{server.url}ok") as other:  # on the same connection
            lines = other.iter_lines()
            assert next(lines) == "event: progress"
            response = client.get(f"{server.url}{where}/{kind}")
            release.set()
            rest = "\n".join(lines)
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert response.status_code == 200
        events = [(e["event"], e["data"]) for e in parse(response.content)]
        first = ("progress", '{"step":"before","details":{}}') if where == "job" else None
        assert events == [first or ("message", "before"), ("error", f'{{"type":"{kind}"}}')]
        # The other stream of the connection is whole.
        assert parse(f"event: progress\n{rest}\n".encode())[-1] == {
            "event": "completed",
            "data": '"done"',
            "id": "2",
        }
    assert middleware.stats.disconnects == 0
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in failures] == ["asgi_sse"]  # logged once, by asgi-sse alone
    assert failures[0].exc_info is not None
    assert type(failures[0].exc_info[1]).__name__ == kind
