"""What a stream needs from a server that shuts down: to hear of it, and to go quietly.

``chained``: uvicorn without ``--timeout-graceful-shutdown``, granian, hypercorn
over HTTP/2 and hypercorn's asyncio worker on Python 3.12+ all answer SIGTERM by
waiting for open responses to finish before they tell the app anything: an
endless stream keeps them up, or is cut with no last event. The remedy is opt-in
(``EventStreamMiddleware(shutdown_signals=...)``): in each worker process, at
lifespan startup, a handler goes in front of whatever the server installed. It
only wakes the event loop (a byte down a socket pair: safe in a signal handler,
and the same for every backend); the streams end, and then the signal goes on,
unchanged, to the server's handler, so the server shuts down as it always does,
with nothing left open to wait for.

``absorb_native_cancel``: uvicorn (after its graceful timeout) cancels a
request's task natively, with ``Task.cancel()``, and logs what the app re-raises
as the app's error, a traceback per stream. Once the stream's farewell has
completed the response there is nothing left to stop, so that one cancel is
absorbed, with ``uncancel()``, as asyncio asks of code that swallows one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

from anyio import current_effective_deadline, wait_readable

logger = logging.getLogger("asgi_sse")

__all__ = ["absorb_native_cancel", "chained"]

Handler = Callable[[int, "FrameType | None"], object]


@contextmanager
def chained(
    signals: Collection[int], act: Callable[[], Awaitable[None]]
) -> Iterator[Callable[[], Coroutine[Any, Any, None]]]:
    """Chain a handler for ``signals``; yield the task that awaits one, runs ``act``
    and then hands the signal on to the handler the server had.

    Handed on after ``act``, not at once: the server's own shutdown (trio's
    ``KeyboardInterrupt``, uvicorn's exit flag) must not race the streams'
    farewells. A server that registered with asyncio's ``loop.add_signal_handler``
    (granian's workers, hypercorn's asyncio worker) hears of it at once all the
    same, through the loop's wakeup fd, which no Python handler stands in front
    of: its shutdown and ``act`` then run side by side. A signal that comes again
    meanwhile is handed on at once (a second Ctrl-C: the user insists). A signal
    whose previous disposition was the default one (the process would die on it)
    is raised again with that default put back, so it still ends the process. On
    leaving, each handler the server had is put back (unless the server has
    replaced ours since).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal handlers can only be chained in the main thread")
    wake, woken = socket.socketpair()
    wake.setblocking(False)
    previous: dict[int, Handler | int] = {}
    first: list[int] = []  # the signal that began the shutdown

    def hand_on(signum: int, frame: FrameType | None) -> None:
        before = previous.get(signum)
        if before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        elif callable(before):
            before(signum, frame)

    def handler(signum: int, frame: FrameType | None) -> None:
        if first:
            hand_on(signum, frame)
            return
        first.append(signum)
        with suppress(OSError):  # the buffer is full: the loop is woken already
            wake.send(b"\0")

    async def wait_then_act() -> None:
        await wait_readable(woken)
        try:
            await act()
        except Exception:  # the server must still hear of the signal
            logger.exception("ending the event streams on signal %s failed", first[0])
        # No frame: the signal did not interrupt this task's code (trio then hands
        # its KeyboardInterrupt to its main task, as for a signal in its own code).
        hand_on(first[0], None)

    try:
        for signum in signals:
            before = signal.getsignal(signum)
            # An ignored signal stays ignored; one handled outside Python (None)
            # cannot be handed on, so it is left alone.
            if before not in (signal.SIG_IGN, None):
                previous[signum] = before
                signal.signal(signum, handler)
        yield wait_then_act
    finally:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, before)
        wake.close()
        woken.close()


def absorb_native_cancel() -> bool:
    """Absorb a native asyncio cancel of the current task; False if there is none
    to absorb. Called only once a response is complete. An anyio scope's cancel
    (trio's, a framework's task group, the server's own scope) is never absorbed:
    it is level-triggered and must go on. A native cancel cannot say who sent it,
    so one from ``asyncio.timeout()`` around the app is absorbed too (the app
    returns normally instead of timing out): nothing was left to do by then."""
    if current_effective_deadline() == -math.inf:
        return False  # a cancelled scope encloses us: its cancel goes on
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio: every cancel is a scope's
        return False
    if task is None:
        return False
    if sys.version_info >= (3, 11):  # (3.10 counts no cancels: there is nothing to undo)
        if not task.cancelling():
            return False
        task.uncancel()
    return True
