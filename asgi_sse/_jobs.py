"""A blocking job as a source: ``func(*args, on_progress)`` in a worker thread.

It runs through ``anyio.to_thread`` under asgi-sse's own capacity limiter, so
streams never starve (or are starved by) everything else in the process that
shares anyio's default 40 threads. Each report is encoded in the worker thread,
off the event loop, and numbered by the run that reports it.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, ClassVar, Generic, TypeVar

from anyio import CapacityLimiter, to_thread

from ._bridge import Channel
from ._encoder import Encoder
from ._exceptions import JobCancelled
from ._run import BaseRun, RunOptions, carried, describe

__all__ = ["Job", "JobRun", "Reporter"]

T = TypeVar("T")


class Job(Generic[T]):
    """A blocking call to stream: ``func(*args, on_progress=..., **kwargs)``.

    The arguments are checked against ``func``'s signature here, so a bad call
    fails in the handler (a normal HTTP error) rather than as an empty stream.
    """

    __slots__ = ("args", "func", "kwargs")

    uses: ClassVar[frozenset[str]] = frozenset({"limiter", "on_error", "coalesce"})

    def __init__(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> None:
        if "on_progress" in kwargs:
            raise TypeError(f"on_progress is passed to {_name(func)} by asgi-sse; do not pass it")
        signature = _signature(func)
        if signature is not None:
            try:
                signature.bind(*args, on_progress=None, **kwargs)
            except TypeError as exc:
                raise TypeError(f"cannot call {_name(func)} with these arguments: {exc}") from None
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Job({getattr(self.func, '__qualname__', self.func)!r})"

    async def open(self, scope: Mapping[str, Any], channel: Channel, options: RunOptions) -> JobRun:
        return JobRun(self, channel, options, describe(self, scope))


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", repr(func))


_signatures: weakref.WeakKeyDictionary[Callable[..., Any], inspect.Signature | None] = (
    weakref.WeakKeyDictionary()
)


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    """``func``'s signature, checked once per function (held weakly): inspecting
    it costs more than the rest of a stream's set-up."""
    try:
        return _signatures[func]
    except (KeyError, TypeError):  # not seen yet, or not weakly referable
        pass
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__):
        raise TypeError(
            f"{_name(func)} is async: Job runs blocking functions in a worker thread."
            " Stream async code as an async iterable of events instead."
        )
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have none: nothing to check
        signature = None
    if signature is not None and all(
        name != "on_progress" and p.kind is not p.VAR_KEYWORD
        for name, p in signature.parameters.items()
    ):
        raise TypeError(f"{_name(func)} must accept an on_progress keyword argument")
    with suppress(TypeError):
        _signatures[func] = signature
    return signature


class Reporter:
    """The ``on_progress(step, details)`` callback a job receives.

    Safe to call from any thread: events are numbered under a lock held while
    each is handed over, so ids follow the order on the wire. A job that
    reports rarely can check :attr:`cancelled` between reports.
    """

    __slots__ = ("_channel", "_encode", "_json", "_lock", "_put", "_template", "last_id")

    def __init__(self, channel: Channel, encoder: Encoder) -> None:
        self._channel = channel
        self._put = channel.put
        self._encode = encoder.fast_json
        self._json = encoder.json
        self._template = encoder.numbered("progress")
        self._lock = threading.Lock()
        self.last_id = 0  #: the id of the last event handed over

    @property
    def cancelled(self) -> bool:
        """True once nobody is listening; the job should stop."""
        return self._channel.cancelled

    def __call__(self, step: str, details: Mapping[str, Any] | None = None) -> None:
        # Encoded here, in the worker thread, off the event loop. A cancelled
        # stream raises JobCancelled from put.
        if not isinstance(details, dict):
            details = {} if details is None else dict(details)
        data = {"step": step, "details": details}
        try:
            payload = self._encode(data)
        except Exception:
            payload = self._json(data)  # the careful path: it cleans, or says what is wrong
        with self._lock:
            # Keyed by its step: a coalescing channel may supersede it by a later one.
            self._put(self._template % (self.last_id + 1, payload), step)
            self.last_id += 1

    @contextmanager
    def numbering(self) -> Iterator[int]:
        """The next id, held: no report can take it until the block ends."""
        with self._lock:
            yield self.last_id + 1


class JobRun(BaseRun):
    """A :class:`Job` in a worker thread, reporting through its :class:`Reporter`.

    ``log=True`` numbers its places in line too, for a resumable job's log,
    where every event has an id."""

    __slots__ = ("_log", "job", "reporter")

    def __init__(
        self, job: Job[Any], channel: Channel, options: RunOptions, what: str, *, log: bool = False
    ) -> None:
        super().__init__(channel, options, what)
        self.job = job
        self.reporter = Reporter(channel, options.encoder)
        self._log = log

    async def _produce(self, limiter: CapacityLimiter) -> Any:
        return await to_thread.run_sync(self._call, limiter=limiter)

    def _call(self) -> Any:
        if self.channel.cancelled:  # the client left while the job waited for a thread
            raise JobCancelled("the client is gone")
        job = self.job
        with carried():
            return job.func(*job.args, on_progress=self.reporter, **job.kwargs)

    def _numbering(self) -> AbstractContextManager[int | None]:
        return self.reporter.numbering()

    def queued(self, position: int) -> None:
        if not self._log:
            super().queued(position)
            return
        with self.reporter.numbering() as next_id:
            data = {"position": position}
            self.channel.put_nowait(self.options.encoder.message("queued", next_id, data))
            self.reporter.last_id = next_id
