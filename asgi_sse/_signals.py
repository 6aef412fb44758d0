"""Hear the shutdown signal before a server that would wait on open streams for ever.

uvicorn without ``--timeout-graceful-shutdown``, granian, and hypercorn over HTTP/2
all answer SIGTERM by waiting for open responses to finish before they tell the app
anything: an endless stream keeps them up, or is cut with no last event. The remedy
is opt-in (``EventStreamMiddleware(shutdown_signals=...)``): in each worker process,
at lifespan startup, a handler goes in front of whatever the server installed. It
only wakes the event loop (a byte down a socket pair: safe in a signal handler, and
the same for every backend) and hands the signal on unchanged, so the server shuts
down as it always does, while the streams end and free it to.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

from anyio import wait_readable

__all__ = ["chained"]

Handler = Callable[[int, "FrameType | None"], object]


@contextmanager
def chained(
    signals: Collection[int], act: Callable[[], Awaitable[None]]
) -> Iterator[Callable[[], Coroutine[Any, Any, None]]]:
    """Chain a handler for ``signals``; yield the task that awaits one and then ``act``.

    On leaving, each handler the server had is put back (unless the server has
    replaced ours since: then the server's stays). A signal whose previous
    disposition was the default one (the process would die on it) is raised
    again after ``act``, with that default put back, so it still ends the process.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "shutdown_signals needs the ASGI lifespan to run in the main thread of the"
            " worker process (Python handles signals only there); this server runs it"
            " elsewhere: end streams from its shutdown hook with EventStreamMiddleware.shutdown()"
        )
    wake, woken = socket.socketpair()
    wake.setblocking(False)
    previous: dict[int, Handler | int | None] = {}
    heard: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        heard.append(signum)
        with suppress(OSError):  # the buffer is full: the loop is woken already
            wake.send(b"\0")
        before = previous.get(signum)
        if callable(before):
            before(signum, frame)

    async def wait_then_act() -> None:
        await wait_readable(woken)
        await act()
        for signum in dict.fromkeys(heard):
            if previous.get(signum) == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

    try:
        for signum in signals:
            before = signal.getsignal(signum)
            if before != signal.SIG_IGN:  # an ignored signal stays ignored
                previous[signum] = before
                signal.signal(signum, handler)
        yield wait_then_act
    finally:
        for signum, before in previous.items():
            if before is not None and signal.getsignal(signum) is handler:
                signal.signal(signum, before)
        wake.close()
        woken.close()
