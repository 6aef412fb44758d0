"""A client that stops reading costs nothing, over real sockets (hypercorn, both workers).

Its stream is given up after ``send_timeout`` whether or not the server's send
ever returns (hypercorn's trio worker shields its socket writes), so its job, thread
and limiter token come back and nothing of it blocks another stream; shutdown does
not wait on it; a stream whose client leaves while waiting for its turn never starts
its job; and a finished stream leaves its connection to the server to close.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
from contextlib import ExitStack
from typing import Any

import anyio
import httpx
import pytest
from conftest import BOUND, calling, parse, serve, stalled_client
from httpx_sse import connect_sse
from quart import Quart, Response

from asgi_sse import EventStream, EventStreamMiddleware, Job, JobCancelled, Reporter
from asgi_sse._exchange import FAREWELL_TIMEOUT
from asgi_sse_quart import EventStreamResponse

PAD = "x" * 16_384


class Bulk:
    """A job that reports large events until it is stopped: it fills any socket
    buffer a client leaves unread. ``outcome`` says how it ended."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.outcome: list[str] = []

    def __call__(self, on_progress: Reporter) -> None:
        try:
            for i in range(1_000_000):  # 16 GB if nothing held it back
                on_progress("bulk", {"i": i, "pad": PAD})
            self.outcome.append("finished")
        except JobCancelled:
            self.outcome.append("cancelled")
        finally:
            self.stopped.set()


def three(on_progress: Reporter) -> str:
    for i in range(3):
        on_progress("step", {"i": i})
    return "done"


def served_in_full(url: str) -> list[str]:
    with httpx.Client(timeout=BOUND) as client, connect_sse(client, "GET", url) as source:
        return [event.event for event in source.iter_sse()]


# -- 1. the send timeout gives the stream up, whatever the server's send does -----------


def given_up(bulk: Bulk, middleware: EventStreamMiddleware, next_url: str) -> None:
    """The stalled stream's job was stopped and its stream counted out; then, with
    one thread and one slot for the app, the next client is served in full."""
    assert bulk.stopped.wait(BOUND), "the stalled stream's job was never stopped"
    assert bulk.outcome == ["cancelled"]
    assert (middleware.stats.send_timeouts, middleware.stats.open_streams) == (1, 0)
    assert served_in_full(next_url) == ["progress"] * 3 + ["completed"]
    assert middleware.stats.running_jobs == 0
    assert middleware.limiter.borrowed_tokens == 0


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_a_client_that_never_reads_frees_its_job_thread_and_slot_at_the_send_timeout(
    worker: str,
) -> None:
    """One thread and one slot for the whole app: the next client can only be
    served once the stalled stream has given both back, while its socket is
    still open and its server-side send may still be stuck."""
    bulk = Bulk()

    async def route(scope: Any, receive: Any, send: Any) -> None:
        job = Job(bulk) if scope["path"] == "/stalled" else Job(three)
        await EventStream(job, send_timeout=0.5, max_buffer_bytes=65_536)(scope, receive, send)

    middleware = EventStreamMiddleware(route, threads=1, max_streams=1)
    with serve(middleware, backend=worker) as server, stalled_client(server.url):
        given_up(bulk, middleware, f"{server.url}next")


def test_a_framework_that_sends_the_body_itself_is_timed_too() -> None:
    """Quart sends the body itself (``EventStream.body``); its send to a client
    that stopped reading is timed between one chunk and the next."""
    bulk = Bulk()
    app = Quart(__name__)

    @app.get("/stalled")
    async def stalled() -> Response:
        return EventStreamResponse(Job(bulk), send_timeout=0.5, max_buffer_bytes=65_536)

    @app.get("/next")
    async def after() -> Response:
        return EventStreamResponse(Job(three))

    middleware = EventStreamMiddleware(app, threads=1, max_streams=1)
    with serve(middleware, wrap=False) as server, stalled_client(server.url):
        given_up(bulk, middleware, f"{server.url}next")


# -- 2. shutdown with stalled clients ----------------------------------------------------

NORMAL, STALLED, GRACEFUL = 200, 10, 2
#: The process's own start-up and teardown, beyond what shutdown may take.
SLACK = 5.0

HYPERCORN_TRIO_SHIELDED_WRITES = pytest.mark.xfail(
    strict=True,
    reason="hypercorn 0.18's trio worker writes to the socket in a shielded cancel scope with"
    " no time limit (hypercorn/trio/tcp_server.py, protocol_send): a send to a client that"
    " stopped reading cannot be cancelled, by the app or by the server's graceful timeout,"
    " so the connection, and the process at shutdown, wait until that client goes. asgi-sse"
    " still frees the job, its thread and its token at send_timeout. Use the asyncio worker"
    " where clients may stall (docs/servers.md).",
)


async def read_streams(url: str, count: int, reading: threading.Event) -> list[bytes]:
    """Open ``count`` streams, set ``reading`` once each has an event, read each to EOF."""
    port = httpx.URL(url).port
    first = asyncio.Semaphore(0)

    async def one(n: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /?name=n{n} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        body = await reader.readuntil(b"\n\n")
        first.release()
        body += await reader.read()  # to EOF: the server closes when the process ends
        writer.close()
        return body.split(b"\r\n\r\n", 1)[1]

    async def all_reading() -> None:
        for _ in range(count):
            await first.acquire()
        reading.set()

    async with asyncio.timeout(3 * BOUND):
        waiter = asyncio.ensure_future(all_reading())
        bodies = await asyncio.gather(*(one(n) for n in range(count)))
        await waiter
    return bodies


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked body (hypercorn frames each send as a chunk)."""
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        out, body = out + body[:length], body[length + 2 :]
    return out


@pytest.mark.parametrize(
    "worker", ["asyncio", pytest.param("trio", marks=HYPERCORN_TRIO_SHIELDED_WRITES)]
)
def test_sigterm_with_stalled_clients_exits_within_the_graceful_timeout_plus_the_farewell(
    worker: str, hypercorn_cli: Any
) -> None:
    """The normal clients get all their job reported, then ``ServerShutdown``; the
    stalled ones are given up, not waited for."""
    proc, url, log, _ = hypercorn_cli(worker, graceful=GRACEFUL, threads=NORMAL + STALLED + 10)
    stalled = ExitStack()
    for n in range(STALLED):
        stalled.enter_context(stalled_client(url, f"/?name=stalled{n}&pad=65536"))
    reading = threading.Event()
    bodies: list[bytes] = []

    def normal() -> None:
        bodies.extend(asyncio.run(read_streams(url, NORMAL, reading)))

    reader = threading.Thread(target=normal)
    reader.start()
    try:
        assert reading.wait(3 * BOUND), "the normal streams never all started"
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(GRACEFUL + FAREWELL_TIMEOUT + SLACK)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not exit within its graceful timeout and the farewell")
        reader.join(BOUND)
        assert len(bodies) == NORMAL
        for body in bodies:
            events = parse(dechunk(body))
            assert [e["id"] for e in events] == [str(i) for i in range(1, len(events) + 1)]
            assert events[-1]["event"] == "error"
            assert events[-1]["data"] == '{"type":"ServerShutdown"}'
        cancelled = log.read_text().splitlines()
        assert sorted(cancelled) == sorted(f"n{n} cancelled" for n in range(NORMAL)) + sorted(
            f"stalled{n} cancelled" for n in range(STALLED)
        )
    finally:
        stalled.close()
        if proc.poll() is None:
            proc.kill()
        reader.join(BOUND)


# -- 4. a client that left never gets a thread -------------------------------------------


@pytest.mark.anyio
async def test_a_stream_whose_client_left_as_its_turn_came_never_starts_its_job() -> None:
    """The slot is handed over in the same instant as the waiting client's
    disconnect arrives: the stream looks again before it takes a thread."""
    started: list[str] = []
    first_started, finish_first = anyio.Event(), anyio.Event()

    async def first() -> Any:
        started.append("first")
        first_started.set()
        await finish_first.wait()
        yield "first done"

    def second(on_progress: Reporter) -> None:
        started.append("second")

    queued = anyio.Event()

    async def on_send(message: Any) -> None:
        if b"event: queued" in message.get("body", b""):
            queued.set()

    async def route(scope: Any, receive: Any, send: Any) -> None:
        source = first() if not started else Job(second)
        await EventStream(source)(scope, receive, send)

    middleware = EventStreamMiddleware(route, max_streams=1, queue=1)
    async with calling(middleware) as (running, leave_running):
        await first_started.wait()  # the first stream holds the slot
        async with calling(middleware, on_send=on_send) as (waiting, leave_waiting):
            await queued.wait()
            leave_waiting.set()
            finish_first.set()
        leave_running.set()
    assert started == ["first"]
    assert parse(running.body)[-1]["event"] == "completed"
    assert [e["event"] for e in parse(waiting.body)] == ["queued"]
    stats = middleware.stats
    assert (stats.open_streams, stats.running_jobs, stats.queued_jobs) == (0, 0, 0)


# -- 5. a finished stream's connection is the server's to close --------------------------


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_a_finished_stream_asked_to_close_its_connection_is_closed_by_the_server(
    worker: str,
) -> None:
    """With ``Connection: close``, the server closes once the stream has ended
    (hypercorn's trio worker left it open when a disconnect, delivered from
    within the last send, cancelled that send as it closed the connection)."""
    with serve(EventStream(Job(three)), backend=worker) as server:
        port = httpx.URL(server.url).port
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                received = b""
                while chunk := sock.recv(65536):  # to EOF: the server closes
                    received += chunk
                assert received.endswith(b"0\r\n\r\n")
                assert dechunk(received.split(b"\r\n\r\n", 1)[1]).endswith(
                    b'event: completed\nid: 4\ndata: "done"\n\n'
                )


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_a_kept_alive_connection_serves_the_next_stream(worker: str) -> None:
    """Without ``Connection: close`` the finished stream's connection is
    recycled for the next request, as keep-alive means."""
    with (
        serve(EventStream(Job(three)), backend=worker) as server,
        httpx.Client(timeout=BOUND) as client,
    ):
        ports = set()
        for _ in range(3):
            with client.stream("GET", server.url) as response:
                assert parse(response.read())[-1]["event"] == "completed"
                stream = response.extensions["network_stream"]
                ports.add(stream.get_extra_info("socket").getsockname()[1])
        assert len(ports) == 1
