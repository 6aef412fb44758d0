"""The pure-ASGI response: the only module that speaks ASGI messages.

Three tasks share one task group, as in Starlette's streaming response: one
sends (the only caller of ``send``), one listens for ``http.disconnect`` and one
runs the source. A server may drop a ``send`` to a client that has gone without
a word, or block it forever on one that stopped reading (hypercorn does both),
so disconnect is learnt from ``receive()`` and every ``send`` has a timeout.
Whatever ends the stream, the job is told to stop and the response returns only
after its worker thread has.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from anyio import (
    CancelScope,
    CapacityLimiter,
    EndOfStream,
    create_task_group,
    current_time,
    move_on_after,
    sleep,
)

from ._bridge import Channel
from ._encoder import HEARTBEAT, Encoder
from ._jobs import Job, Source, run_source

__all__ = ["DEFAULT_BUFFER_BYTES", "EventStream", "stream_progress"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("asgi_sse")

# No ``connection`` header: it is illegal on HTTP/2 and the server's business.
_HEADERS = {
    b"content-type": b"text/event-stream; charset=utf-8",
    b"cache-control": b"no-cache",
    b"x-accel-buffering": b"no",  # nginx: pass each event on, do not buffer
}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field names
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "content-length"}
)

_default_encoder = Encoder()

#: Bytes of encoded events held per stream before a producer waits.
DEFAULT_BUFFER_BYTES = 1024 * 1024


def _check_headers(headers: Mapping[str, str]) -> dict[bytes, bytes]:
    checked = dict(_HEADERS)
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if name.lower() in _HOP_BY_HOP:
            raise ValueError(f"header {name!r} is hop-by-hop; the server sets it, if anyone")
        for part in (name, value):
            if any(char in part for char in "\r\n\0"):
                raise ValueError(f"header {name!r} contains CR, LF or NUL: {part!r}")
        checked[name.lower().encode("latin-1")] = value.encode("latin-1")
    return checked


def _check_seconds(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")


class EventStream:
    """An ASGI response that streams a source's events as Server-Sent Events.

    ``source`` is a :class:`Job` (a blocking function reporting through
    ``on_progress``), a sync iterable (consumed in a worker thread) or an async
    iterable. Items of an iterable are :class:`ServerSentEvent` objects or plain
    values: ``str`` is sent as text, anything else as JSON. The stream ends with
    exactly one ``completed`` event (carrying the job's result, or a sync
    generator's return value) or one ``error`` event.

    Options, all keyword-only:

    - ``limiter``: the capacity limiter for worker threads (default: asgi-sse's
      own, per event loop, see :func:`default_limiter`).
    - ``max_buffer_bytes``: encoded events held between producer and sender
      before the producer waits; what one slow client can cost in memory.
    - ``heartbeat``: seconds of silence before a ``: ping`` comment, or ``None``.
    - ``send_timeout``: seconds a single send may take before the client counts
      as gone (it stopped reading), or ``None`` to wait forever.
    - ``encoder``: an :class:`Encoder`, e.g. one that transliterates.
    - ``on_error``: turns the job's exception into the ``error`` event's data
      (the default names the exception type and nothing more).
    - ``headers``: extra response headers; these replace asgi-sse's own of the
      same name.
    """

    __slots__ = (
        "encoder",
        "headers",
        "heartbeat",
        "limiter",
        "max_buffer_bytes",
        "on_error",
        "send_timeout",
        "source",
    )

    def __init__(
        self,
        source: Source,
        /,
        *,
        limiter: CapacityLimiter | None = None,
        max_buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        heartbeat: float | None = 15.0,
        send_timeout: float | None = 30.0,
        encoder: Encoder | None = None,
        on_error: Callable[[Exception], Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(source, (str, bytes, bytearray, Mapping)) or not isinstance(
            source, (Job, AsyncIterable, Iterable)
        ):
            raise TypeError(
                "source must be a Job, an iterable or an async iterable of events,"
                f" got {type(source).__name__}"
            )
        if max_buffer_bytes < 1:
            raise ValueError(f"max_buffer_bytes must be at least 1, got {max_buffer_bytes!r}")
        _check_seconds("heartbeat", heartbeat)
        _check_seconds("send_timeout", send_timeout)
        self.source = source
        self.limiter = limiter
        self.max_buffer_bytes = max_buffer_bytes
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
        self.encoder = encoder or _default_encoder
        self.on_error = on_error
        self.headers = _check_headers(headers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"EventStream serves HTTP requests, not {scope['type']!r}")
        channel = Channel(self.max_buffer_bytes)
        sent_at = [current_time()]
        async with create_task_group() as tg:
            try:
                tg.start_soon(self._watch_disconnect, receive, channel, tg.cancel_scope)
                if not await self._send(
                    send,
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": list(self.headers.items()),
                    },
                ):
                    return
                tg.start_soon(self._produce, channel)
                if self.heartbeat is not None:
                    tg.start_soon(self._beat, channel, self.heartbeat, sent_at)
                await self._pump(send, channel, sent_at)
            finally:
                # Tell the job before the task group waits for its thread.
                channel.cancel()
                tg.cancel_scope.cancel()

    async def _produce(self, channel: Channel) -> None:
        await run_source(
            self.source,
            channel,
            encoder=self.encoder,
            limiter=self.limiter,
            on_error=self.on_error,
        )

    async def _pump(self, send: Send, channel: Channel, sent_at: list[float]) -> None:
        """Send every batch as one body message, until the last event is out."""
        while True:
            try:
                batch = await channel.receive()
            except EndOfStream:
                if channel.cancelled:
                    return
                break
            body = batch[0] if len(batch) == 1 else b"".join(batch)
            if not await self._send(
                send, {"type": "http.response.body", "body": body, "more_body": True}
            ):
                return
            sent_at[0] = current_time()
        await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, message: Message) -> bool:
        """Send, or give up on a client that is gone or has not taken it in time."""
        with move_on_after(self.send_timeout) as scope:
            try:
                await send(message)
            except OSError as exc:  # ASGI: a server may raise it for a closed connection
                logger.debug("event stream send failed: %r", exc)
                return False
        if scope.cancelled_caught:
            logger.warning(
                "event stream send timed out after %ss; closing the stream", self.send_timeout
            )
            return False
        return True

    @staticmethod
    async def _watch_disconnect(receive: Receive, channel: Channel, scope: CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        channel.cancel()
        scope.cancel()

    @staticmethod
    async def _beat(channel: Channel, interval: float, sent_at: list[float]) -> None:
        """Queue a comment after ``interval`` seconds without a send.

        It goes through the channel, between whole events, so the pump stays the
        only sender and the send timeout covers heartbeats too.
        """
        while True:
            idle = current_time() - sent_at[0]
            if idle >= interval:
                channel.put_nowait(HEARTBEAT)
                idle = 0.0
            await sleep(interval - idle)


def stream_progress(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> EventStream:
    """Stream a blocking function's progress, with default options.

    ``func`` is called in a worker thread as
    ``func(*args, on_progress=callback, **kwargs)``; each
    ``callback(step, details)`` becomes a ``progress`` event, and the return value
    a final ``completed`` event. For options, build the stream yourself:
    ``EventStream(Job(func, *args, **kwargs), heartbeat=5)``.
    """
    return EventStream(Job(func, *args, **kwargs))
