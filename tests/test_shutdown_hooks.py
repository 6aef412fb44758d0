"""The opt-in shutdown signal handler (it hears first, hands on, and puts back), and
the native cancel a finished response absorbs."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import anyio
import pytest
from sse_spec import parse_stream

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter, progress_app
from asgi_sse._shutdown import absorb_native_cancel, chained

pytestmark = pytest.mark.anyio
BOUND = 10.0


@pytest.fixture
def sigusr1() -> Iterator[list[int]]:
    """SIGUSR1 with a handler of the "server's" that records what it was handed."""
    handed: list[int] = []

    def servers(signum: int, frame: FrameType | None) -> None:
        handed.append(signum)

    before = signal.signal(signal.SIGUSR1, servers)
    try:
        yield handed
    finally:
        signal.signal(signal.SIGUSR1, before)


async def test_the_signal_runs_the_action_then_reaches_the_servers_handler(
    sigusr1: list[int],
) -> None:
    servers = signal.getsignal(signal.SIGUSR1)
    acting, release = anyio.Event(), anyio.Event()

    async def act() -> None:
        acting.set()
        await release.wait()

    with chained([signal.SIGUSR1], act) as on_signal:
        assert signal.getsignal(signal.SIGUSR1) is not servers
        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signal)
            signal.raise_signal(signal.SIGUSR1)
            with anyio.fail_after(BOUND):
                await acting.wait()
            assert sigusr1 == []  # not while the streams end
            signal.raise_signal(signal.SIGUSR1)
            assert sigusr1 == [signal.SIGUSR1]  # again: the user insists, handed on at once
            release.set()
    assert sigusr1 == [signal.SIGUSR1, signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is servers


async def test_a_handler_the_server_installed_since_is_left_in_place(
    sigusr1: list[int],
) -> None:
    async def act() -> None:
        raise AssertionError("no signal came")

    with chained([signal.SIGUSR1], act):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the server, at its shutdown
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN


async def test_an_ignored_signal_stays_ignored() -> None:
    async def act() -> None:
        raise AssertionError("no signal came")

    before = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with chained([signal.SIGUSR2], act):
            assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_a_signal_that_would_have_ended_the_process_still_does_after_the_action() -> None:
    """Nobody handled SIGTERM before (its default kills): acting first must not save the process."""
    script = (
        "import signal, anyio\n"
        "from asgi_sse._shutdown import chained\n"
        "async def act():\n"
        "    print('acted', flush=True)\n"
        "async def main():\n"
        "    with chained([signal.SIGTERM], act) as on_signal:\n"
        "        async with anyio.create_task_group() as tg:\n"
        "            tg.start_soon(on_signal)\n"
        "            signal.raise_signal(signal.SIGTERM)\n"
        "            await anyio.sleep_forever()\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=BOUND, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (-signal.SIGTERM, "acted\n", "")


def test_outside_the_main_thread_it_says_why_it_cannot() -> None:
    async def act() -> None:
        pass

    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            with chained([signal.SIGUSR1], act):
                pass
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(BOUND)
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


# -- the native cancel a finished response absorbs ------------------------------------


def test_a_native_cancel_is_absorbed_and_the_task_ends_as_if_uncancelled() -> None:
    async def main() -> tuple[bool, int]:
        absorbed: list[bool] = []
        waiting = asyncio.Event()

        async def request() -> None:
            try:
                waiting.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                absorbed.append(absorb_native_cancel())
                if not absorbed[-1]:
                    raise

        task = asyncio.ensure_future(request())
        await waiting.wait()
        task.cancel()
        await task  # no CancelledError: it was absorbed
        return absorbed[0], task.cancelling() if sys.version_info >= (3, 11) else 0

    assert asyncio.run(main()) == (True, 0)


async def test_an_anyio_scopes_cancel_is_never_absorbed() -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            assert not absorb_native_cancel()
            raise
    assert scope.cancelled_caught


def test_a_stream_the_server_cancels_natively_says_goodbye_and_returns_quietly() -> None:
    """As uvicorn does after --timeout-graceful-shutdown: Task.cancel() on the request."""

    def endless(on_progress: Reporter) -> None:
        pace = threading.Event()
        while True:
            on_progress("tick", {})
            pace.wait(0.001)  # the job's own pace

    async def main() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        flowing = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client never leaves
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message.get("body"):
                flowing.set()

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        task = asyncio.ensure_future(EventStream(Job(endless))(scope, receive, send))
        await asyncio.wait_for(flowing.wait(), BOUND)
        task.cancel()
        await asyncio.wait_for(task, BOUND)  # returns: no traceback for the server to log
        return sent

    sent = asyncio.run(main())
    *_, last = parse_stream(b"".join(m.get("body", b"") for m in sent))
    assert (last["event"], last["data"]) == ("error", '{"type":"ServerShutdown"}')
    assert sent[-1]["type"] == "http.response.body"
    assert not sent[-1].get("more_body", False)


# -- the middleware's use of it ----------------------------------------------------------


def test_a_signal_no_handler_can_catch_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="no handler can catch"):
        EventStreamMiddleware(progress_app(lambda on_progress: None), shutdown_signals=[9])


async def lifespan_of(app: Any) -> list[str]:
    """Startup then shutdown through ``app``'s lifespan: the messages it answered."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    answered: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        answered.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return answered


def test_off_the_main_thread_the_lifespan_goes_on_and_says_why_no_signal_is_heard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = EventStreamMiddleware(
        progress_app(lambda on_progress: None), shutdown_signals=[signal.SIGUSR1]
    )
    answered: list[list[str]] = []
    thread = threading.Thread(target=lambda: answered.append(anyio.run(lifespan_of, app)))
    thread.start()
    thread.join(BOUND)
    assert answered == [["lifespan.startup.complete", "lifespan.shutdown.complete"]]
    assert "shutdown_signals is ignored" in caplog.text


async def test_an_apps_lifespan_error_comes_out_as_it_is_not_in_a_group() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise LookupError("no database")

    app = EventStreamMiddleware(broken, shutdown_signals=[signal.SIGUSR1])
    with pytest.raises(LookupError, match="no database"):
        await lifespan_of(app)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # put back
