"""One ASGI middleware for app-wide policy, whatever the framework underneath.

It puts a hub in every request's scope (streams find it there, so no global
state and nothing bound to one event loop at import), and takes part in the
lifespan protocol to end streams at shutdown.

About shutdown and the ASGI spec: a server sends ``lifespan.shutdown`` only
after it has closed its connections. hypercorn (like uvicorn) first waits up to
its graceful timeout for open requests, then cancels them; a stream that is
cancelled so sends its final event before it goes (see ``_response``). What is
left for ``lifespan.shutdown`` is to end any stream still open, refuse new ones
and wait, within a bound, for jobs to return. An app that can act earlier (a
``shutdown_trigger`` of hypercorn's ``serve``, an admin endpoint) calls
:meth:`EventStreamMiddleware.shutdown` itself. Where the server waits on open
responses before it tells the app anything (uvicorn without a graceful timeout,
granian, hypercorn over HTTP/2), ``shutdown_signals`` hears the signal first
(see ``_shutdown``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Collection, Sequence
from typing import Any

from anyio import CapacityLimiter, create_task_group

from ._http import ASGIApp, Message, Receive, Scope, Send, answer_lifespan
from ._hub import SCOPE_KEY, Governed, Hub, Stats
from ._observe import Observer
from ._run import DEFAULT_THREADS
from ._shutdown import chained

__all__ = ["EventStreamMiddleware"]


logger = logging.getLogger("asgi_sse")


class EventStreamMiddleware:
    """App-wide policy for every event stream of the wrapped app.

    Wrap the app you serve: ``app = EventStreamMiddleware(app, max_streams=100)``.

    - ``threads``: one worker-thread limiter shared by all streams (a stream's
      own ``limiter=`` still wins).
    - ``max_streams``: how many streams may run their job at once; ``None`` for
      no cap. Over it, a new stream is refused with 503 and ``Retry-After``
      before it starts...
    - ``queue``: ...unless fewer than ``queue`` streams are already waiting: then
      it is admitted and sent ``queued`` events (``{"position": n}``, 1 is next)
      until a slot frees.
    - ``retry_after``: seconds sent in ``Retry-After`` with a 503.
    - ``shutdown_grace``: seconds :meth:`shutdown` waits for jobs to return.
    - ``jobs``: resumable jobs (:class:`asgi_sse.resumable.Jobs`) to run under
      the same policy: its thread limiter, and its slots, for which they wait
      in line like streams (their watchers are told their place).
    - ``observers``: what reports its streams and jobs to operators
      (:mod:`asgi_sse.metrics`: Prometheus, OpenTelemetry, or your own).
    - ``shutdown_signals``: signals (``(signal.SIGTERM, signal.SIGINT)``) on which
      the process runs :meth:`shutdown` at once and then hands the signal on to the
      server's own handler, for servers that otherwise wait on open streams for
      ever. Installed at lifespan startup, in the process that runs the app (for
      hypercorn, ``--workers 0``: its worker processes never receive the signal),
      and removed at lifespan shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_streams: int | None = None,
        queue: int = 0,
        threads: int = DEFAULT_THREADS,
        retry_after: int = 5,
        shutdown_grace: float = 5.0,
        jobs: Governed | None = None,
        shutdown_signals: Collection[int] = (),
        observers: Sequence[Observer] = (),
    ) -> None:
        self.app = app
        self._hub = Hub(
            max_streams=max_streams,
            queue=queue,
            threads=threads,
            retry_after=retry_after,
            observers=observers,
        )
        self.shutdown_grace = shutdown_grace
        self.shutdown_signals = tuple(shutdown_signals)
        wrong = set(self.shutdown_signals) - (
            signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
        )
        if wrong:
            raise ValueError(f"shutdown_signals: no handler can catch {sorted(wrong)!r}")
        if jobs is not None:
            jobs.govern_by(self._hub)

    @property
    def stats(self) -> Stats:
        """Live counters, as a snapshot."""
        return self._hub.stats()

    @property
    def limiter(self) -> CapacityLimiter:
        """The worker-thread limiter shared by the app's streams."""
        return self._hub.limiter

    async def shutdown(self) -> None:
        """Refuse new streams (503), end every open one with a final ``error``
        event ``{"type": "ServerShutdown"}`` after the events already reported,
        stop their jobs, and wait up to ``shutdown_grace`` seconds for them."""
        await self._hub.shutdown(self.shutdown_grace)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # any framework's types
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.app({**scope, SCOPE_KEY: self._hub}, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.shutdown_signals:
            await self._speak_lifespan(scope, receive, send)
            return
        if threading.current_thread() is not threading.main_thread():
            # Raised here, a server in lifespan "auto" mode (uvicorn's default)
            # would take it for no lifespan support, and end no stream at all.
            logger.error(
                "shutdown_signals is ignored: this server runs the lifespan outside the"
                " main thread, where Python delivers no signal; call"
                " EventStreamMiddleware.shutdown() from the server's shutdown hook"
            )
            await self._speak_lifespan(scope, receive, send)
            return
        failure: Exception | None = None  # raised as it is, not in an exception group
        with chained(self.shutdown_signals, self.shutdown) as on_signal:
            async with create_task_group() as tg:
                tg.start_soon(on_signal)
                try:
                    await self._speak_lifespan(scope, receive, send)
                except Exception as exc:
                    failure = exc
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _speak_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = False

        async def receive_and_act() -> Message:
            nonlocal received
            received = True
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                # Streams first: the app's own shutdown may close what they use.
                await self.shutdown()
            return message

        try:
            await self.app(scope, receive_and_act, send)
        except Exception:
            if received:
                raise
            # The app does not speak lifespan (it raised before listening): speak
            # it on its behalf, so shutdown still ends the streams.
            logger.debug("the wrapped app does not support lifespan; asgi-sse answers it")
            await answer_lifespan(receive_and_act, send)
