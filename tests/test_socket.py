"""Over a real socket: hypercorn on 127.0.0.1, httpx and httpx-sse as the client."""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from conftest import BOUND, Endless, parse, serve
from httpx_sse import connect_sse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from asgi_sse import EventStream, Job, JobCancelled, Reporter, stream_progress


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_each_event_reaches_the_client_before_the_job_makes_the_next(backend: str) -> None:
    gates = [threading.Event() for _ in range(5)]

    def job(on_progress: Reporter) -> dict[str, str]:
        for i, gate in enumerate(gates):
            on_progress("step", {"i": i, "name": "café"})
            if not gate.wait(BOUND):  # the client sets it on receipt of event i
                raise TimeoutError(f"event {i} did not reach the client on its own")
        return {"status": "done"}

    with (
        serve(stream_progress(job), backend=backend) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as source,
    ):
        events = []
        for sse in source.iter_sse():
            events.append(sse)
            if sse.event == "progress":
                gates[sse.json()["details"]["i"]].set()
    assert [(e.event, e.id) for e in events] == [
        *[("progress", str(i)) for i in range(1, 6)],
        ("completed", "6"),
    ]
    assert events[0].json() == {"step": "step", "details": {"i": 0, "name": "café"}}
    assert events[-1].json() == {"status": "done"}


def test_headers_arrive_before_the_first_event() -> None:
    headers_seen = threading.Event()

    def job(on_progress: Reporter) -> None:
        if not headers_seen.wait(BOUND):
            raise TimeoutError("headers were held back until the first event")
        on_progress("first", {})

    with (
        serve(stream_progress(job)) as server,
        httpx.Client(timeout=BOUND) as client,
        client.stream("GET", server.url) as response,
    ):
        headers_seen.set()
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "connection" not in response.headers
        assert b"event: completed" in response.read()


HYPERCORN_ASYNCIO_WAITS_FOR_STREAMS = pytest.mark.xfail(
    sys.version_info >= (3, 12),
    strict=True,
    reason="hypercorn's asyncio worker awaits asyncio.Server.wait_closed() before its graceful"
    " timeout, and since Python 3.12 that waits for every open connection: it never cancels a"
    " stream, so shutdown waits for the client. Its trio worker cancels after the timeout.",
)


class BurstThenQuiet:
    """Reports ``n`` events at once, then nothing (it polls the flag) until it is
    stopped, when its next report raises. At shutdown no send is then under
    way, so the stream's farewell is certain: a stream cut off in the middle of
    a send cannot tell whether the server wrote it, and ends without one rather
    than risk a gap or a duplicate (test_stalled covers that case)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stopped = threading.Event()
        self.outcome: list[str] = []

    def __call__(self, on_progress: Reporter) -> None:
        pace = threading.Event()  # never set: the job's own pace while quiet
        try:
            for i in range(self.n):
                on_progress("burst", {"i": i})
            while not on_progress.cancelled:
                pace.wait(0.002)
            on_progress("after the end", {})
        except JobCancelled:
            self.outcome.append("cancelled")
        finally:
            self.stopped.set()


@pytest.mark.parametrize(
    ("ending", "job_style", "worker"),
    [
        ("client leaves", "reports", "asyncio"),
        ("client leaves", "polls", "asyncio"),
        ("client leaves", "reports", "trio"),
        ("server shuts down", "reports", "trio"),
        pytest.param(
            "server shuts down", "reports", "asyncio", marks=HYPERCORN_ASYNCIO_WAITS_FOR_STREAMS
        ),
    ],
)
def test_a_stream_that_ends_early_stops_the_job_and_frees_its_thread(
    ending: str, job_style: str, worker: str
) -> None:
    limiter = anyio.CapacityLimiter(3)
    shutdown = ending == "server shuts down"
    job: Endless | BurstThenQuiet = (
        BurstThenQuiet(20) if shutdown else Endless(polls=job_style == "polls")
    )

    with serve(EventStream(Job(job), limiter=limiter), backend=worker) as server:
        with (
            httpx.Client(timeout=BOUND) as client,
            connect_sse(client, "GET", server.url) as source,
        ):
            events = source.iter_sse()
            first = next(events)
            assert first.event == "progress"
            if shutdown:
                burst = [first] + [next(events) for _ in range(19)]  # all of it, then quiet
                server.stop()  # as SIGTERM would, with the stream open
                assert job.stopped.wait(BOUND), "the job outlived the server"
                # The server gave up on the stream; its last event says why, and the
                # stream ends cleanly (no completed event claims the job succeeded).
                received = [*burst, *events]
                assert {e.event for e in received[:-1]} == {"progress"}
                assert (received[-1].event, received[-1].json()) == (
                    "error",
                    {"type": "ServerShutdown"},
                )
                # Nothing the job reported was lost on the way out.
                ids = [int(e.id) for e in received]
                assert ids == list(range(1, len(ids) + 1))
        # Leaving the block closed the connection mid-job.
        assert job.stopped.wait(BOUND), "the job kept running for a client that is gone"
        assert server.done.wait(BOUND), "the response did not return"
    assert job.outcome == ["cancelled" if job_style == "reports" else "noticed"]
    assert limiter.borrowed_tokens == 0


def test_a_failing_job_ends_the_stream_with_an_error_event() -> None:
    def job(on_progress: Reporter) -> None:
        on_progress("start", {})
        raise PermissionError("/etc/shadow")

    with (
        serve(stream_progress(job)) as server,
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as source,
    ):
        events = list(source.iter_sse())
    assert [(e.event, e.data) for e in events] == [
        ("progress", '{"step":"start","details":{}}'),
        ("error", '{"type":"PermissionError"}'),
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("exit_exc", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("source_kind", ["job", "generator"])
def test_a_job_that_raises_systemexit_fails_alone_and_the_server_serves_on(
    backend: str, exit_exc: type[BaseException], source_kind: str
) -> None:
    def job(on_progress: Reporter) -> None:
        on_progress("step", {})
        raise exit_exc

    def generator() -> Any:
        yield "step"
        raise exit_exc

    def ok(on_progress: Reporter) -> str:
        return "done"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/ok":
            source: Any = Job(ok)
        else:
            source = Job(job) if source_kind == "job" else generator()
        await EventStream(source)(scope, receive, send)

    with serve(app, backend=backend) as server, httpx.Client(timeout=BOUND) as client:
        failed = parse(client.get(f"{server.url}exit").content)
        served = parse(client.get(f"{server.url}ok").content)
    assert (failed[-1]["event"], json.loads(failed[-1]["data"])) == (
        "error",
        {"type": exit_exc.__name__},
    )
    assert [e["event"] for e in served] == ["completed"]


def test_heartbeats_keep_a_silent_stream_talking() -> None:
    beats_seen = threading.Event()

    def job(on_progress: Reporter) -> str:
        if not beats_seen.wait(BOUND):
            raise TimeoutError("no heartbeat reached the client")
        return "done"

    with (
        serve(EventStream(Job(job), heartbeat=0.02)) as server,
        httpx.Client(timeout=BOUND) as client,
        client.stream("GET", server.url) as response,
    ):
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if lines.count(": ping") == 2:
                beats_seen.set()
    assert lines.count(": ping") >= 2
    # The comments dispatch nothing; the result still arrives.
    assert parse("\n".join([*lines, ""]).encode()) == [
        {"event": "completed", "data": '"done"', "id": "1"}
    ]


def test_a_client_that_stops_reading_is_timed_out_and_its_job_cancelled() -> None:
    limiter = anyio.CapacityLimiter(1)
    outcome: list[str] = []
    stopped = threading.Event()
    chunk = "x" * 65_536

    def job(on_progress: Reporter) -> None:
        try:
            for i in range(5_000):  # 320 MB at most: far more than the socket buffers
                on_progress("bulk", {"i": i, "pad": chunk})
            outcome.append("finished")
        except JobCancelled:
            outcome.append("cancelled")
        finally:
            stopped.set()

    stream = EventStream(Job(job), limiter=limiter, send_timeout=0.2, max_buffer_bytes=65_536)
    with serve(stream) as server, socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1].strip("/"))))
        client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert client.recv(1024).startswith(b"HTTP/1.1 200")
        # ...and never read again.
        assert stopped.wait(BOUND), "the send never timed out"
        assert server.done.wait(BOUND)
        assert outcome == ["cancelled"]
        assert limiter.borrowed_tokens == 0


def test_a_stalled_reader_holds_back_only_its_own_job_until_it_is_timed_out() -> None:
    reported = 0
    outcome: list[str] = []
    stopped = threading.Event()
    pad = "x" * 1024

    def stalled_job(on_progress: Reporter) -> None:
        nonlocal reported
        try:
            for i in range(1_000_000):  # 1 GB if nothing held it back
                on_progress("bulk", {"i": i, "pad": pad})
                reported = i + 1
            outcome.append("finished")
        except JobCancelled:
            outcome.append("cancelled")
        finally:
            stopped.set()

    def healthy_job(on_progress: Reporter) -> str:
        for i in range(2000):
            on_progress("step", {"i": i})
        return "done"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        job = stalled_job if scope["path"] == "/stalled" else healthy_job
        stream = EventStream(Job(job), send_timeout=1.0, max_buffer_bytes=65_536)
        await stream(scope, receive, send)

    with serve(app) as server, socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", httpx.URL(server.url).port))
        stalled.sendall(b"GET /stalled HTTP/1.1\r\nHost: test\r\n\r\n")
        assert stalled.recv(1024).startswith(b"HTTP/1.1 200")
        # It reads nothing more. Meanwhile another client is served in full.
        with (
            httpx.Client(timeout=BOUND) as client,
            connect_sse(client, "GET", f"{server.url}healthy") as source,
        ):
            events = [e.event for e in source.iter_sse()]
        assert events == ["progress"] * 2000 + ["completed"]
        assert stopped.wait(BOUND), "the stalled stream was never timed out"
    assert outcome == ["cancelled"]
    # Held back: what fits in the 64 KiB buffer and the kernel's socket buffers (the
    # server's send buffer grows to tcp_wmem's maximum at most), not the million 1 kB
    # events the job would have made. Twice that, for the per-event framing and slack.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    assert reported < 2 * (wmem_max + 65_536 + 65_536) // 1024, reported


def test_http2_streams_events_without_connection_specific_headers() -> None:
    def job(on_progress: Reporter) -> int:
        for i in range(3):
            on_progress("step", {"i": i})
        return 3

    with (
        serve(stream_progress(job)) as server,
        httpx.Client(http1=False, http2=True, timeout=BOUND) as client,
        connect_sse(client, "GET", server.url) as source,
    ):
        assert source.response.http_version == "HTTP/2"
        assert "connection" not in source.response.headers
        events = [(e.event, e.id) for e in source.iter_sse()]
    assert events == [("progress", "1"), ("progress", "2"), ("progress", "3"), ("completed", "4")]


class _H2Client:
    """A bare HTTP/2 client (h2c, prior knowledge) on a real socket, for what httpx
    cannot do: httpx forgets an HTTP/2 response closed early without sending
    RST_STREAM, so the server would never hear of it."""

    def __init__(self, url: str) -> None:
        host, port = httpx.URL(url).host, httpx.URL(url).port
        self.sock = socket.create_connection((host, port), timeout=BOUND)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self._flush()
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def get(self, path: str) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "t")]
        self.conn.send_headers(stream, headers, end_stream=True)
        self._flush()
        self.bodies[stream] = b""
        return stream

    def read_until(self, done: Any) -> None:
        while not done():
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    stream = event.stream_id
                    self.bodies[stream] += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
            self._flush()

    def reset(self, stream: int) -> None:
        self.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        self._flush()


def test_an_http2_stream_reset_cancels_the_job_and_the_connection_serves_on() -> None:
    job = Endless()
    limiter = anyio.CapacityLimiter(3)

    def short(on_progress: Reporter) -> str:
        on_progress("step", {})
        return "done"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        source = Job(job) if scope["path"] == "/endless" else Job(short)
        await EventStream(source, limiter=limiter)(scope, receive, send)

    with serve(app) as server:
        client = _H2Client(server.url)
        try:
            endless = client.get("/endless")
            client.read_until(lambda: b"event: progress" in client.bodies[endless])
            client.reset(endless)  # RST_STREAM: this one stream, not the connection
            assert job.stopped.wait(BOUND), "the job kept running after its stream was reset"
            short_stream = client.get("/short")
            client.read_until(lambda: short_stream in client.ended)
        finally:
            client.sock.close()
    assert [e["event"] for e in parse(client.bodies[short_stream])] == ["progress", "completed"]
    assert job.outcome == ["cancelled"]
    assert limiter.borrowed_tokens == 0


def test_a_starlette_handler_returns_the_stream_as_is() -> None:
    def analyse(text: str, on_progress: Reporter) -> dict[str, Any]:
        on_progress("read", {"chars": len(text)})
        return {"upper": text.upper()}

    async def endpoint(request: Request) -> Any:
        return stream_progress(analyse, text=request.query_params["text"])

    async def broken(request: Request) -> Any:
        return stream_progress(analyse, wrong="argument")

    app = Starlette(routes=[Route("/", endpoint), Route("/broken", broken)])
    with serve(app, wrap=False) as server, httpx.Client(timeout=BOUND) as client:
        with connect_sse(client, "GET", server.url + "?text=héllo") as source:
            events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
        # Bad arguments fail in the handler: a real HTTP error, not a 200 with no events.
        broken_response = client.get(server.url + "broken")
    assert events == [
        ("progress", {"step": "read", "details": {"chars": 5}}),
        ("completed", {"upper": "HÉLLO"}),
    ]
    assert broken_response.status_code == 500
    assert "text/event-stream" not in broken_response.headers.get("content-type", "")
