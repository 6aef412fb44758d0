"""Sources of events: a blocking job, a sync iterable or an async iterable.

Each is run into a :class:`Channel` and ended with exactly one terminal event.
Blocking code runs through ``anyio.to_thread`` under asgi-sse's own capacity
limiter, so streams never starve (or are starved by) everything else in the
process that shares anyio's default 40 threads. Events are encoded in the worker
thread, off the event loop.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, contextmanager, nullcontext
from typing import Any, Generic, TypeVar, Union

from anyio import CapacityLimiter, get_cancelled_exc_class, to_thread
from anyio.lowlevel import RunVar

from ._bridge import Channel
from ._encoder import Encoder
from ._events import ServerSentEvent
from ._exceptions import JobCancelled

__all__ = ["DEFAULT_THREADS", "Job", "Reporter", "Source", "default_limiter", "run_source"]

logger = logging.getLogger("asgi_sse")
T = TypeVar("T")

#: Tokens of the limiter used when a stream is given none.
DEFAULT_THREADS = 40

_default_limiter: RunVar[CapacityLimiter] = RunVar("asgi_sse.default_limiter")


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


class Job(Generic[T]):
    """A blocking call to stream: ``func(*args, on_progress=..., **kwargs)``.

    The arguments are checked against ``func``'s signature here, so a bad call
    fails in the handler (a normal HTTP error) rather than as an empty stream.
    """

    __slots__ = ("args", "func", "kwargs")

    def __init__(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> None:
        name = getattr(func, "__qualname__", repr(func))
        if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__):
            raise TypeError(
                f"{name} is async: Job runs blocking functions in a worker thread."
                " Stream async code as an async iterable of events instead."
            )
        if "on_progress" in kwargs:
            raise TypeError(f"on_progress is passed to {name} by asgi-sse; do not pass it")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have none: nothing to check
            signature = None
        if signature is not None:
            accepts = "on_progress" in signature.parameters or any(
                p.kind is p.VAR_KEYWORD for p in signature.parameters.values()
            )
            if not accepts:
                raise TypeError(f"{name} must accept an on_progress keyword argument")
            try:
                signature.bind(*args, on_progress=None, **kwargs)
            except TypeError as exc:
                raise TypeError(f"cannot call {name} with these arguments: {exc}") from None
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Job({getattr(self.func, '__qualname__', self.func)!r})"


#: What an :class:`~asgi_sse.EventStream` can stream.
Source = Union[Job[Any], AsyncIterable[Any], Iterable[Any]]


class Reporter:
    """The ``on_progress(step, details)`` callback a job receives.

    Safe to call from any thread; events are numbered in the order they reach
    the wire. A job that reports rarely can check :attr:`cancelled` between
    reports.
    """

    __slots__ = ("_channel", "_json", "_template")

    def __init__(self, channel: Channel, encoder: Encoder) -> None:
        self._channel = channel
        self._json = encoder.json
        self._template = encoder.numbered("progress")

    @property
    def cancelled(self) -> bool:
        """True once nobody is listening; the job should stop."""
        return self._channel.cancelled

    @property
    def last_id(self) -> int:
        return self._channel.numbered

    def __call__(self, step: str, details: Mapping[str, Any] | None = None) -> None:
        # Encoded here, in the worker thread, off the event loop. A cancelled
        # stream raises JobCancelled from put_numbered.
        if not isinstance(details, dict):
            details = {} if details is None else dict(details)
        payload = self._json({"step": step, "details": details})
        self._channel.put_numbered(self._template, payload)


def _encode_item(encoder: Encoder, item: Any) -> bytes:
    if isinstance(item, ServerSentEvent):
        return encoder.encode(item)
    if isinstance(item, str):
        return encoder.text(item) + b"\n"
    return b"data: %b\n\n" % encoder.json(item)


class _Raised(Exception):
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
def _carried(*passing: type[BaseException]) -> Iterator[None]:
    """Carry a source's ``BaseException`` out as :class:`_Raised`; ``Exception``,
    asgi-sse's own ``JobCancelled`` and ``passing`` go on as they are."""
    goes_on: tuple[type[BaseException], ...] = (Exception, JobCancelled, *passing)
    try:
        yield
    except goes_on:
        raise
    except BaseException as exc:
        raise _Raised(exc) from exc


def _run_job(job: Job[Any], reporter: Reporter, channel: Channel) -> Any:
    if channel.cancelled:  # the client left while the job waited for a thread
        raise JobCancelled("the client is gone")
    with _carried():
        return job.func(*job.args, on_progress=reporter, **job.kwargs)


def _drain(iterable: Iterable[Any], channel: Channel, encoder: Encoder) -> Any:
    """Consume a sync iterable in a worker thread; return a generator's return value."""
    with _carried():
        iterator = iter(iterable)
        try:
            while not channel.cancelled:
                try:
                    item = next(iterator)
                except StopIteration as stop:
                    return stop.value
                channel.put(_encode_item(encoder, item))
            raise JobCancelled("the client is gone")
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # run the generator's finally blocks here, not at GC


def default_error_data(exc: BaseException) -> Any:
    """Name the error, and nothing else: messages can hold secrets."""
    return {"type": type(exc).__name__}


async def run_source(
    source: Source,
    channel: Channel,
    *,
    encoder: Encoder,
    limiter: CapacityLimiter | None,
    on_error: Callable[[Exception], Any] | None,
) -> None:
    """Run ``source`` into ``channel`` and close it with one terminal event.

    When the channel is cancelled (nobody listens) it ends without one.
    """
    limiter = limiter or default_limiter()
    reporter = None
    try:
        if isinstance(source, Job):
            reporter = Reporter(channel, encoder)
            result = await to_thread.run_sync(_run_job, source, reporter, channel, limiter=limiter)
        elif isinstance(source, AsyncIterable):
            result = None
            await _consume(source, channel, encoder)
        else:
            result = await to_thread.run_sync(_drain, source, channel, encoder, limiter=limiter)
    except JobCancelled as exc:
        if channel.cancelled:
            return  # nobody is listening: nothing to say, nobody to say it to
        # The job raised it itself while the client still listens: an error like any other.
        logger.error("event stream job raised JobCancelled itself", exc_info=exc)
        channel.close(_error_event(encoder, reporter, None, exc))
        return
    except Exception as exc:
        failure = exc.exc if isinstance(exc, _Raised) else exc
        if channel.cancelled:
            logger.error("event stream job failed after its client left", exc_info=failure)
            return
        logger.error("event stream job failed", exc_info=failure)
        channel.close(_error_event(encoder, reporter, on_error, failure))
        return
    try:
        last = encoder.message("completed", _next_id(reporter), result)
    except Exception as exc:  # the result cannot be encoded, not even as str()
        logger.error("event stream result could not be encoded", exc_info=exc)
        last = _error_event(encoder, reporter, on_error, exc)
    channel.close(last)


async def _consume(source: AsyncIterable[Any], channel: Channel, encoder: Encoder) -> None:
    """Put an async source's items into the channel. In the event loop, the
    loop's own cancellation and a signal's ``KeyboardInterrupt`` or
    ``SystemExit`` must go on; any other ``BaseException`` is the source's."""
    with _carried(KeyboardInterrupt, SystemExit, get_cancelled_exc_class()):
        async with _aclosing(source) as items:
            async for item in items:
                await channel.aput(_encode_item(encoder, item))


def _next_id(reporter: Reporter | None) -> int | None:
    """Progress events are numbered; iterables number their own events, if at all."""
    return None if reporter is None else reporter.last_id + 1


def _error_event(
    encoder: Encoder,
    reporter: Reporter | None,
    on_error: Callable[[Exception], Any] | None,
    exc: BaseException,
) -> bytes:
    data = default_error_data(exc)
    if on_error is not None and isinstance(exc, Exception):
        try:
            data = on_error(exc)
        except Exception:
            logger.exception("on_error hook failed; sending the default error data")
    try:
        return encoder.message("error", _next_id(reporter), data)
    except Exception:
        logger.exception("on_error data could not be encoded; sending the default")
        return encoder.message("error", _next_id(reporter), default_error_data(exc))


def _aclosing(source: AsyncIterable[Any]) -> AbstractAsyncContextManager[AsyncIterable[Any]]:
    """Close async generators as soon as the stream ends, not when collected."""
    if hasattr(source, "aclose"):
        return aclosing(source)  # type: ignore[type-var]
    return nullcontext(source)
