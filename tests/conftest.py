"""Shared test helpers: a real hypercorn on 127.0.0.1, and an in-process ASGI driver."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from hypercorn.asyncio import serve as serve_asyncio
from hypercorn.config import Config
from hypercorn.trio import serve as serve_trio
from sse_spec import parse_stream

from asgi_sse import JobCancelled, Reporter

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

BOUND = 10.0  # seconds: how long a test waits for something that should happen at once


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Served:
    """What a test app records, so tests can wait on it rather than sleep."""

    url: str
    done: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        """Shut the server down now, as SIGTERM would, with graceful_timeout."""
        self.stopping.set()


def http_only(handler: ASGIApp, done: threading.Event | None = None) -> ASGIApp:
    """Wrap a response so hypercorn can serve it: answer lifespan, record the end."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        try:
            await handler(scope, receive, send)
        finally:
            if done is not None:
                done.set()

    return app


@contextmanager
def serve(
    handler: ASGIApp,
    *,
    backend: str = "asyncio",
    wrap: bool = True,
    before_shutdown: Callable[[], Awaitable[None]] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Served]:
    """Serve ``handler`` with hypercorn on 127.0.0.1 in a thread, for one test.

    ``before_shutdown`` runs in the server's loop when shutdown is asked for,
    before hypercorn stops (as an app's own ``shutdown_trigger`` would).
    ``tls`` (a certificate file and its key) serves https, where browsers speak
    HTTP/2: hypercorn then offers h2 by ALPN.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    scheme = "http" if tls is None else "https"
    served = Served(url=f"{scheme}://127.0.0.1:{sock.getsockname()[1]}/")
    fd = sock.detach()  # hypercorn owns the socket from here, and closes it
    app = http_only(handler, served.done) if wrap else handler
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    if tls is not None:
        config.certfile, config.keyfile = map(str, tls)
        assert config.ssl_enabled
        assert config.alpn_protocols == ["h2", "http/1.1"]  # hypercorn's default: h2 first
    stop = served.stopping
    failure: list[BaseException] = []

    async def shutdown_trigger() -> None:
        await anyio.to_thread.run_sync(stop.wait)
        if before_shutdown is not None:
            await before_shutdown()

    def run() -> None:
        hypercorn_serve = serve_trio if backend == "trio" else serve_asyncio
        try:
            anyio.run(
                partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger),
                backend=backend,
            )
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"hypercorn-{backend}", daemon=True)
    thread.start()
    try:
        yield served
    finally:
        stop.set()
        thread.join(BOUND)
        assert not thread.is_alive(), "hypercorn did not shut down"
        assert not failure, failure


TESTS = Path(__file__).parent
HYPERCORN = Path(sys.executable).parent / "hypercorn"


@pytest.fixture
def hypercorn_cli(tmp_path: Path) -> Iterator[Any]:
    """Start ``hypercorn sigterm_app:app`` on a socket the test has bound already:
    clients can connect at once (the kernel queues them), so nothing polls.
    ``start(worker, graceful=1, threads=40)`` gives the process, its URL, the
    file its jobs log to and the file its stderr goes to."""
    procs: list[subprocess.Popen[str]] = []

    def start(
        worker: str, *, graceful: int = 1, threads: int = 40
    ) -> tuple[subprocess.Popen[str], str, Path, Path]:
        log, stderr = tmp_path / "jobs.log", tmp_path / "stderr.log"
        with socket.socket() as sock, stderr.open("w") as errors:
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
            proc = subprocess.Popen(
                [
                    *(str(HYPERCORN), "sigterm_app:app", "--worker-class", worker),
                    *("--bind", f"fd://{sock.fileno()}", "--graceful-timeout", str(graceful)),
                    *("--backlog", "1024"),
                ],
                cwd=TESTS,
                env={**os.environ, "ASGI_SSE_JOB_LOG": str(log), "ASGI_SSE_THREADS": str(threads)},
                pass_fds=[sock.fileno()],
                # A file, not a pipe: a server that logs more than a pipe holds
                # would block on it, and look hung.
                stderr=errors,
                text=True,
            )
        procs.append(proc)
        return proc, url, log, stderr

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@dataclass
class Call:
    """The messages an ASGI app sent, for in-process tests."""

    messages: list[Message] = field(default_factory=list)

    @property
    def start(self) -> Message:
        assert self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def finished(self) -> bool:
        last = self.messages[-1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


@asynccontextmanager
async def calling(
    app: ASGIApp, *, on_send: Callable[[Message], Awaitable[None]] | None = None
) -> AsyncIterator[tuple[Call, anyio.Event]]:
    """Run ``app`` in a task; set the yielded event to make the client leave."""
    call = Call()
    leave = anyio.Event()
    request_sent = False

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        call.messages.append(message)
        if on_send is not None:
            await on_send(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "http_version": "1.1"}
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, receive, send)
            yield call, leave


async def call_app(app: ASGIApp) -> Call:
    async with calling(app) as (call, _):
        pass
    return call


def parse(body: bytes) -> list[dict[str, str]]:
    """Split a body into the events a browser would dispatch (see sse_spec.py)."""
    return parse_stream(body)


class Endless:
    """A job that reports until it is stopped, and records how it ended.

    ``outcome`` gets "cancelled" when a report raised :class:`JobCancelled`, or,
    with ``polls=True`` (a job that reports once, then only checks
    ``on_progress.cancelled``), "noticed". ``stopped`` is set when it returns.
    """

    def __init__(self, *, polls: bool = False) -> None:
        self.polls = polls
        self.stopped = threading.Event()
        self.outcome: list[str] = []
        self.flag_when_cancelled: bool | None = None  # on_progress.cancelled, then

    def __call__(self, on_progress: Reporter) -> None:
        deadline = threading.Event()  # never set: the job's own pace and upper bound
        try:
            on_progress("started", {})
            while not deadline.wait(0.002):
                if not self.polls:
                    on_progress("tick", {})
                elif on_progress.cancelled:
                    self.outcome.append("noticed")
                    return
        except JobCancelled:
            self.outcome.append("cancelled")
            self.flag_when_cancelled = on_progress.cancelled
        finally:
            self.stopped.set()


@contextmanager
def stalled_client(url: str, path: str = "/stalled") -> Iterator[socket.socket]:
    """A raw socket with a small receive buffer that sends a request, reads the
    status line and then never reads again; closed at the end."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(BOUND)
    port = urlsplit(url).port
    assert port is not None
    sock.connect(("127.0.0.1", port))
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        assert sock.recv(16).startswith(b"HTTP/1.1 200")
        yield sock
    finally:
        sock.close()
