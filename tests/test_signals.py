"""The opt-in shutdown signal handler: it hears first, hands on, and puts back."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import anyio
import pytest

from asgi_sse._signals import chained

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


async def test_the_signal_runs_the_action_and_reaches_the_servers_handler(
    sigusr1: list[int],
) -> None:
    servers = signal.getsignal(signal.SIGUSR1)
    acted = anyio.Event()

    async def act() -> None:
        acted.set()

    with chained([signal.SIGUSR1], act) as on_signal:
        assert signal.getsignal(signal.SIGUSR1) is not servers
        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signal)
            signal.raise_signal(signal.SIGUSR1)
            with anyio.fail_after(BOUND):
                await acted.wait()
    assert sigusr1 == [signal.SIGUSR1]
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
        "from asgi_sse._signals import chained\n"
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
    assert "EventStreamMiddleware.shutdown()" in str(errors[0])
