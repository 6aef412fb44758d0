"""The pure-ASGI event stream: options, and the two doors onto one exchange.

An :class:`EventStream` holds what is the same for every request (the source,
the run options, the timers, the headers); each request gets its own
:class:`~asgi_sse._exchange.Exchange`, through the ASGI call or, for frameworks
that send the body themselves, through :meth:`EventStream.exchange`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, TypedDict, Union

from anyio import CapacityLimiter

from . import _run
from ._encoder import Encoder
from ._exchange import Exchange
from ._http import Headers, Receive, Refusal, Scope, Send, check_headers, refusal
from ._hub import SCOPE_KEY
from ._items import as_source
from ._jobs import Job
from ._run import DEFAULT_BUFFER_BYTES, RunOptions, default_encoder

__all__ = ["EventStream", "Source", "StreamOptions", "stream_progress"]

#: What an :class:`EventStream` can stream: a :class:`Job`, a resumable job's
#: watch (:meth:`asgi_sse.resumable.Jobs.watch`), or an iterable or async
#: iterable of events.
Source = Union[_run.Source, Iterable[Any], AsyncIterable[Any]]


class StreamOptions(TypedDict, total=False):
    """:class:`EventStream`'s keyword options but ``headers``, for wrappers that
    pass them on (``**options: Unpack[StreamOptions]``): their names and types
    only, so the defaults stay here."""

    limiter: CapacityLimiter | None
    max_buffer_bytes: int
    coalesce: bool
    heartbeat: float | None
    send_timeout: float | None
    encoder: Encoder | None
    on_error: Callable[[Exception], Any] | None


def _check_seconds(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")


class EventStream:
    """An ASGI response that streams a source's events as Server-Sent Events.

    ``source`` is a :class:`Job` (a blocking function reporting through
    ``on_progress``), a sync iterable (consumed in a worker thread), an async
    iterable, or a resumable job to follow (:meth:`asgi_sse.resumable.Jobs.watch`).
    Items of an iterable are :class:`ServerSentEvent` objects or plain values:
    ``str`` is sent as text, anything else as JSON. The stream ends with exactly
    one ``completed`` event (carrying the job's result, or a sync generator's
    return value) or one ``error`` event; a watch ends with its job's.

    Options, all keyword-only:

    - ``limiter``: the capacity limiter for worker threads (default: the
      middleware's, else asgi-sse's own per event loop, see
      :func:`default_limiter`). Only for sources that run in a thread.
    - ``max_buffer_bytes``: encoded events held between producer and sender
      before the producer waits; what one slow client can cost in memory.
    - ``coalesce``: for a :class:`Job` whose progress is a state, not a record:
      while the client is behind (the buffer is full), a progress event replaces
      the unsent one of the same step instead of making the job wait, so a slow
      client never slows the job and gets the latest value of every step. Other
      events are never dropped; ids keep increasing, with gaps where events
      were superseded. Memory stays within ``max_buffer_bytes`` plus one event
      per step.
    - ``heartbeat``: seconds of silence before a ``: ping`` comment, or ``None``.
    - ``send_timeout``: seconds a single send may take before the client counts
      as gone (it stopped reading), or ``None`` to wait forever.
    - ``encoder``: an :class:`Encoder`, e.g. one that transliterates.
    - ``on_error``: turns the job's exception into the ``error`` event's data
      (the default names the exception type and nothing more). Not for a
      watch: its job's events were made where it ran.
    - ``headers``: extra response headers, a mapping or (name, value) pairs
      (pairs may repeat a name, as ``set-cookie`` does); these replace
      asgi-sse's own of the same name. After construction, ``stream.headers``
      is the full list sent, as ASGI byte pairs (adapters copy it).

    Under :class:`EventStreamMiddleware` the stream follows the app's policy:
    its limiter, its cap (503 or a place in line), its counters, its shutdown.
    """

    __slots__ = ("headers", "heartbeat", "options", "send_timeout", "source")

    def __init__(
        self,
        source: Source,
        /,
        *,
        limiter: CapacityLimiter | None = None,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        coalesce: bool = False,
        heartbeat: float | None = 15.0,
        send_timeout: float | None = 30.0,
        encoder: Encoder | None = None,
        on_error: Callable[[Exception], Any] | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.source = as_source(source)
        options = RunOptions(
            limiter, encoder or default_encoder, on_error, max_buffer_bytes, coalesce=coalesce
        )
        unused = options.given() - self.source.uses
        if unused:
            raise TypeError(
                f"a {type(source).__name__} does not use {' or '.join(sorted(unused))}:"
                " it runs no code of its own here"
            )
        _check_seconds("heartbeat", heartbeat)
        _check_seconds("send_timeout", send_timeout)
        self.options = options
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
        self.headers = check_headers(headers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"EventStream serves HTTP requests, not {scope['type']!r}")
        exchange = Exchange(self, scope, scope.get(SCOPE_KEY))
        refused = exchange.admit()
        if refused is not None:
            await refused(scope, receive, send)
            return
        await exchange(receive, send)

    def exchange(self, scope: Scope) -> Exchange | Refusal:
        """This request's stream, for frameworks that send the body themselves
        (Quart), or the 503 to answer instead if the app's middleware is full
        now. Then ``await exchange.open()`` (None, or the answer the source
        decided instead: a watch's 204, 400 or 404), then
        ``async with exchange.body() as chunks``, where the stream takes its
        place. Leaving the body stops the job and waits for its thread."""
        hub = scope.get(SCOPE_KEY)
        if hub is not None and hub.refuses():
            return refusal(hub)
        return Exchange(self, scope, hub)


def stream_progress(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> EventStream:
    """Stream a blocking function's progress, with default options.

    ``func`` is called in a worker thread as
    ``func(*args, on_progress=callback, **kwargs)``; each
    ``callback(step, details)`` becomes a ``progress`` event, and the return value
    a final ``completed`` event. For options, build the stream yourself:
    ``EventStream(Job(func, *args, **kwargs), heartbeat=5)``.
    """
    return EventStream(Job(func, *args, **kwargs))
