"""What a stream runs: the source protocol, and the run options owned in one place.

A source decides, per request, what to answer: a plain response (a watch's
204, 400 or 404), or a :class:`Run` bound to the request's channel. A run
fills the channel and closes it with exactly one terminal event. The stream
and the middleware know sources only through this protocol: a :class:`Job`,
an iterable and a resumable job's watch are the same thing to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from anyio import CapacityLimiter
from anyio.lowlevel import RunVar, checkpoint

from ._bridge import Channel
from ._encoder import Encoder
from ._exceptions import JobCancelled
from ._http import Refusal
from ._hub import Hub, Ticket

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_THREADS",
    "SHUTDOWN_ERROR",
    "BaseRun",
    "Raised",
    "Run",
    "RunOptions",
    "Source",
    "carried",
    "default_encoder",
    "default_error_data",
    "default_limiter",
    "describe",
    "run_under",
]

logger = logging.getLogger("asgi_sse")

#: Tokens of the limiter used when a stream is given none.
DEFAULT_THREADS = 40

#: Bytes of encoded events held per stream before a producer waits.
DEFAULT_BUFFER_BYTES = 1024 * 1024

#: The data of the ``error`` event that ends a stream cut short by shutdown.
SHUTDOWN_ERROR = {"type": "ServerShutdown"}

_default_limiter: RunVar[CapacityLimiter] = RunVar("asgi_sse.default_limiter")
#: The encoder of a stream or job given none.
default_encoder = Encoder()


def default_limiter() -> CapacityLimiter:
    """The limiter shared by streams given none, one per event loop.

    Resize it at start-up with ``default_limiter().total_tokens = n``.
    """
    try:
        return _default_limiter.get()
    except LookupError:
        limiter = CapacityLimiter(DEFAULT_THREADS)
        _default_limiter.set(limiter)
        return limiter


@dataclass(frozen=True)
class RunOptions:
    """How a source runs, wherever it runs: in a stream, or published by a
    resumable job. Checked here, once.

    ``limiter`` None means the app's (the middleware's ``threads=``), else
    :func:`default_limiter`."""

    limiter: CapacityLimiter | None = None
    encoder: Encoder = field(default=default_encoder)
    on_error: Callable[[Exception], Any] | None = None
    max_buffer_bytes: int = DEFAULT_BUFFER_BYTES
    coalesce: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_buffer_bytes, bool) or not isinstance(self.max_buffer_bytes, int):
            raise TypeError(f"max_buffer_bytes must be an int, got {self.max_buffer_bytes!r}")
        if self.max_buffer_bytes < 1:
            raise ValueError(f"max_buffer_bytes must be at least 1, got {self.max_buffer_bytes!r}")

    def given(self) -> set[str]:
        """The options set to something other than their default."""
        return {
            name
            for name, default in (("limiter", None), ("on_error", None), ("coalesce", False))
            if getattr(self, name) is not default
        }


class Run(Protocol):
    """One request's run of a source, bound to that request's channel."""

    @property
    def takes_slot(self) -> bool:
        """Whether it waits for one of the app's slots (``max_streams``): it
        runs code. A watch only reads a log, so it takes none."""

    async def __call__(self, limiter: CapacityLimiter) -> None:
        """Fill the channel, then close it with the terminal event; when the
        channel is cancelled (nobody listens), stop without one."""

    def queued(self, position: int) -> None:
        """Tell the client its place in line for a slot (1 is next)."""

    def farewell(self) -> bytes | None:
        """The last event of a run ended early (shutdown), numbered after what
        it reported; None to end without one (a watch: its job goes on)."""


class Source(Protocol):
    """Anything an :class:`~asgi_sse.EventStream` can stream."""

    #: The run options it uses, among ``limiter``, ``on_error`` and ``coalesce``; the stream
    #: refuses the others rather than ignore them.
    uses: ClassVar[frozenset[str]]

    async def open(
        self, scope: Mapping[str, Any], channel: Channel, options: RunOptions
    ) -> Run | Refusal:
        """This request's answer: a :class:`Run` into ``channel``, or a plain
        response (:class:`~asgi_sse.Refusal`) to send instead."""


class Raised(Exception):
    """A source's ``BaseException`` that is not an ``Exception`` (``SystemExit``,
    ``GeneratorExit``, a library's own), carried out as an ordinary failure:
    re-raised in the event loop, it would pass for a cancellation or stop the
    server, and on HTTP/2 take the connection's other streams with it.
    (Signals reach the main thread only, so in a worker these come from the
    job's own code.)"""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


@contextmanager
def carried(*passing: type[BaseException]) -> Iterator[None]:
    """Carry a source's ``BaseException`` out as :class:`Raised`; ``Exception``,
    asgi-sse's own ``JobCancelled`` and ``passing`` go on as they are."""
    goes_on: tuple[type[BaseException], ...] = (Exception, JobCancelled, *passing)
    try:
        yield
    except goes_on:
        raise
    except BaseException as exc:
        raise Raised(exc) from exc


async def run_under(
    run: Run,
    channel: Channel,
    limiter: CapacityLimiter | None,
    hub: Hub | None,
    ticket: Ticket | None,
) -> None:
    """Run under the app's policy, if there is one: its limiter (unless given
    one), and, for a run that takes one, a slot waited for in line (told its
    place through ``run.queued``). ``ticket`` None: no slot to wait for."""
    if hub is None:
        await run(limiter or default_limiter())
        return
    limiter = limiter or hub.limiter
    if ticket is None or not run.takes_slot:
        await run(limiter)
        return
    async with hub.slot(ticket, run.queued):
        # It may have waited in line: is its client still there? (A disconnect
        # that came with the slot is seen first.)
        await checkpoint()
        if not channel.cancelled:
            if not hub.observers:
                await run(limiter)
                return
            with hub.observers.job(ticket.record, ticket.job_id, ticket.waited, channel):
                await run(limiter)


def describe(source: object, scope: Mapping[str, Any]) -> str:
    """A run's name in the log: its source and the request it serves."""
    method, path = scope.get("method", ""), scope.get("path", "")
    return f"event stream {source!r} for {method} {path}".rstrip()


def default_error_data(exc: BaseException) -> Any:
    """Name the error, and nothing else: messages can hold secrets."""
    return {"type": type(exc).__name__}


class BaseRun:
    """What every run of a job or an iterable shares: one terminal event,
    numbered after the run's own when it numbers them."""

    takes_slot: ClassVar[bool] = True
    __slots__ = ("channel", "options", "what")

    def __init__(self, channel: Channel, options: RunOptions, what: str) -> None:
        self.channel = channel
        self.options = options
        self.what = what  # for the log: which job, for which request

    async def _produce(self, limiter: CapacityLimiter) -> Any:
        raise NotImplementedError

    def _numbering(self) -> AbstractContextManager[int | None]:
        return nullcontext(None)  # iterables number their own events, if at all

    def queued(self, position: int) -> None:
        data = {"position": position}
        self.channel.put_nowait(self.options.encoder.message("queued", None, data))

    def farewell(self, data: Any = SHUTDOWN_ERROR) -> bytes:
        """An ``error`` event to end early with, numbered after the run's own."""
        with self._numbering() as next_id:
            return self.options.encoder.message("error", next_id, data)

    async def __call__(self, limiter: CapacityLimiter) -> None:
        channel = self.channel
        try:
            result = await self._produce(limiter)
        except JobCancelled as exc:
            if channel.cancelled:
                return  # nobody is listening: nothing to say, nobody to say it to
            # The job raised it itself while the client still listens: an error like any other.
            logger.error("%s raised JobCancelled itself", self.what, exc_info=exc)
            self._close(self._error, exc)
        except Exception as exc:
            failure = exc.exc if isinstance(exc, Raised) else exc
            if channel.cancelled:
                logger.error("%s failed after its client left", self.what, exc_info=failure)
                return
            logger.error("%s failed", self.what, exc_info=failure)
            self._close(self._error, failure)
        else:
            self._close(self._completed, result)

    def _close(self, last: Callable[[Any, int | None], bytes], value: Any) -> None:
        """Close with the terminal event, numbered after every report: a report
        still under way in another thread of the job (waiting for room, say)
        is refused first, or numbering would wait on it, and it on the loop."""

        def terminal() -> bytes:
            with self._numbering() as next_id:
                return last(value, next_id)

        self.channel.end(terminal, early=False)

    def _completed(self, result: Any, next_id: int | None) -> bytes:
        try:
            return self.options.encoder.message("completed", next_id, result)
        except Exception as exc:  # the result cannot be encoded, not even as str()
            logger.error("%s: its result could not be encoded", self.what, exc_info=exc)
            return self._error(exc, next_id)

    def _error(self, exc: BaseException, next_id: int | None) -> bytes:
        encoder, on_error = self.options.encoder, self.options.on_error
        data = default_error_data(exc)
        if on_error is not None and isinstance(exc, Exception):
            try:
                data = on_error(exc)
            except Exception:
                logger.exception("on_error hook failed; sending the default error data")
        try:
            return encoder.message("error", next_id, data)
        except Exception:
            logger.exception("on_error data could not be encoded; sending the default")
            return encoder.message("error", next_id, default_error_data(exc))
