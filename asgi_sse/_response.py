"""The pure-ASGI event stream.

Three tasks share one task group, as in Starlette's streaming response: one
sends (the only caller of ``send``), one listens for ``http.disconnect`` and one
runs the source. A server may drop a ``send`` to a client that has gone without
a word, or block it forever on one that stopped reading (hypercorn does both),
so disconnect is learnt from ``receive()`` and every ``send`` has a timeout.
Whatever ends the stream, the job is told to stop and the response returns only
after its worker thread has. A stream the server cancels (its graceful shutdown
ran out) still sends what the job reported and a last ``error`` event, shielded.

Past 300 lines, on purpose: the ASGI call and :meth:`EventStream.body` (for
frameworks that send the body themselves) are two doors onto one lifecycle,
which reads best in one place.
"""

from __future__ import annotations

import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from functools import partial
from typing import Any, Protocol, TypedDict, Union

from anyio import (
    CancelScope,
    CapacityLimiter,
    EndOfStream,
    Event,
    create_task_group,
    current_time,
    get_cancelled_exc_class,
    move_on_after,
    sleep,
)
from anyio.lowlevel import checkpoint

from ._bridge import Channel
from ._encoder import HEARTBEAT, Encoder
from ._http import Headers, Message, Receive, Refusal, Scope, Send, check_headers, refusal
from ._hub import SCOPE_KEY, Hub, Ticket
from ._jobs import Job, run_source
from ._jobs import Source as _RunSource
from ._watch import Follow, Watch

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "SHUTDOWN_ERROR",
    "EventStream",
    "Source",
    "StreamOptions",
    "stream_progress",
]

logger = logging.getLogger("asgi_sse")

_default_encoder = Encoder()

#: Bytes of encoded events held per stream before a producer waits.
DEFAULT_BUFFER_BYTES = 1024 * 1024

#: The data of the ``error`` event that ends a stream cut short by shutdown.
SHUTDOWN_ERROR = {"type": "ServerShutdown"}

#: Seconds the last message of a stream cut by the server may take: shutdown
#: does not wait longer on a client that reads slowly.
FAREWELL_TIMEOUT = 1.0

#: What an :class:`EventStream` can stream: a :class:`Job`, an iterable or an
#: async iterable of events, or a resumable job's :class:`Watch`.
Source = Union[_RunSource, Watch]


class StreamOptions(TypedDict, total=False):
    """:class:`EventStream`'s keyword options but ``headers``, for wrappers that
    pass them on (``**options: Unpack[StreamOptions]``): their names and types
    only, so the defaults stay here."""

    limiter: CapacityLimiter | None
    max_buffer_bytes: int
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
    iterable, or a resumable job to follow (:meth:`Jobs.watch`). Items of an
    iterable are :class:`ServerSentEvent` objects or plain values: ``str`` is
    sent as text, anything else as JSON. The stream ends with exactly one
    ``completed`` event (carrying the job's result, or a sync generator's return
    value) or one ``error`` event; a watch ends with its job's.

    Options, all keyword-only:

    - ``limiter``: the capacity limiter for worker threads (default: asgi-sse's
      own, per event loop, see :func:`default_limiter`).
    - ``max_buffer_bytes``: encoded events held between producer and sender
      before the producer waits; what one slow client can cost in memory.
    - ``heartbeat``: seconds of silence before a ``: ping`` comment, or ``None``.
    - ``send_timeout``: seconds a single send may take before the client counts
      as gone (it stopped reading; it is noticed within a quarter more), or
      ``None`` to wait forever.
    - ``encoder``: an :class:`Encoder`, e.g. one that transliterates.
    - ``on_error``: turns the job's exception into the ``error`` event's data
      (the default names the exception type and nothing more).
    - ``headers``: extra response headers, a mapping or (name, value) pairs
      (pairs may repeat a name, as ``set-cookie`` does); these replace
      asgi-sse's own of the same name. After construction, ``stream.headers``
      is the full list sent, as ASGI byte pairs (adapters copy it).

    Under :class:`EventStreamMiddleware` the stream follows the app's policy:
    its limiter, its cap (503 or a place in line), its counters, its shutdown.
    """

    __slots__ = (
        "_follow",
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
        headers: Headers | None = None,
    ) -> None:
        if isinstance(source, (str, bytes, bytearray, Mapping)) or not isinstance(
            source, (Job, Watch, AsyncIterable, Iterable)
        ):
            raise TypeError(
                "source must be a Job, a Watch, an iterable or an async iterable of events,"
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
        self.headers = check_headers(headers or {})
        self._follow: Follow | None = None

    def refusal(self, scope: Scope) -> Refusal | None:
        """The 503 to answer instead, if the app's middleware is full or closing.

        For frameworks that send the response themselves (Quart); an ASGI call
        checks this itself.
        """
        hub: Hub | None = scope.get(SCOPE_KEY)
        return refusal(hub) if hub is not None and hub.refuses() else None

    async def prepare(self, scope: Scope) -> Refusal | None:
        """For a :class:`Watch`: the answer to send instead of the stream (400,
        404, or 204 once the client has the job's last event), or None to
        stream. An ASGI call does this itself, per request; frameworks that
        send the status before the body (Quart) call it first, then
        :meth:`body`, which takes what it decided."""
        self._follow = None
        if not isinstance(self.source, Watch):
            return None
        answer = await self.source.prepare(scope)
        if isinstance(answer, Refusal):
            return answer
        self._follow = answer
        return None

    @asynccontextmanager
    async def body(self, scope: Scope | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        """The encoded stream, for frameworks that send the body themselves.

        Leaving the context stops the job and waits for its thread. Watching
        for disconnect is then the framework's part; a send the framework
        takes longer than ``send_timeout`` over stops the job and ends the
        stream, which then yields no more.
        """
        follow, self._follow = self._follow, None  # one prepare, one body
        if isinstance(self.source, Watch) and follow is None:
            raise RuntimeError("await stream.prepare(scope) before the body of a Watch")
        hub: Hub | None = None if scope is None else scope.get(SCOPE_KEY)
        channel = Channel(self.max_buffer_bytes)
        ticket = None if hub is None else hub.admit(partial(self._end, channel), force=True)
        give_up = partial(_give_up, channel, hub, ticket, None, None)
        try:
            async with self._chunks(channel, hub, ticket, follow, give_up) as chunks:
                yield chunks
        finally:
            if hub is not None and ticket is not None:
                hub.leave(ticket)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"EventStream serves HTTP requests, not {scope['type']!r}")
        follow = None  # this request's own: the stream may serve several at once
        if isinstance(self.source, Watch):
            answer = await self.source.prepare(scope)
            if isinstance(answer, Refusal):
                await answer(scope, receive, send)
                return
            follow = answer
        hub: Hub | None = scope.get(SCOPE_KEY)
        channel = Channel(self.max_buffer_bytes)
        ticket = None
        if hub is not None:
            ticket = hub.admit(partial(self._end, channel))
            if ticket is None:
                channel.cancel()  # never used: close its streams
                await refusal(hub)(scope, receive, send)
                return
        try:
            async with create_task_group() as tg:
                try:
                    ended = Event()
                    sender = _Sender(send)
                    give_up = partial(_give_up, channel, hub, ticket, ended, tg.cancel_scope)
                    tg.start_soon(self._watch_disconnect, receive, ended, give_up, hub)
                    if self.send_timeout is not None:
                        tg.start_soon(_watch_sends, sender, self.send_timeout, give_up, hub)
                    await self._stream(sender, channel, hub, ticket, ended, follow=follow)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if hub is not None and ticket is not None:
                hub.leave(ticket)

    async def _stream(
        self,
        send: _Sender,
        channel: Channel,
        hub: Hub | None,
        ticket: Ticket | None,
        ended: Event,
        *,
        follow: Follow | None,
    ) -> None:
        """Start, send the chunks, end. ``ended`` is set once the client has left,
        or once the last message is on its way (a disconnect after it is no news)."""
        if not await send({"type": "http.response.start", "status": 200, "headers": self.headers}):
            return
        async with self._chunks(channel, hub, ticket, follow) as chunks:
            try:
                async for chunk in chunks:
                    if not await send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    ):
                        return
            except get_cancelled_exc_class():
                if not ended.is_set() and not send.behind:
                    # The server gave up on the request (its graceful shutdown timed
                    # out): say so, so no client takes the cut for a finished job.
                    # Briefly: shutdown must not wait on a client that reads slowly,
                    # and one cut off mid-send (behind) is not told at all.
                    rest = channel.take_rest()
                    farewell = self._farewell(channel.numbered)
                    if farewell is not None:
                        rest.append(farewell)
                    with move_on_after(FAREWELL_TIMEOUT, shield=True):
                        await send({"type": "http.response.body", "body": b"".join(rest)})
                raise
        ended.set()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @asynccontextmanager
    async def _chunks(
        self,
        channel: Channel,
        hub: Hub | None,
        ticket: Ticket | None,
        follow: Follow | None,
        give_up: Callable[[], None] | None = None,
    ) -> AsyncIterator[_Chunks]:
        """Run the source and the heartbeat; yield the encoded chunks as they come.

        With ``give_up`` (the body door), the framework's sends are timed too:
        a send is what happens between handing out one chunk and being asked
        for the next."""
        chunks = _Chunks(channel, hub)
        async with create_task_group() as tg:
            try:
                tg.start_soon(self._produce, channel, hub, ticket, follow)
                if self.heartbeat is not None:
                    tg.start_soon(self._beat, channel, self.heartbeat, chunks)
                if give_up is not None and self.send_timeout is not None:
                    tg.start_soon(_watch_sends, chunks, self.send_timeout, give_up, hub)
                yield chunks
            finally:
                # Tell the job before the task group waits for its thread.
                channel.cancel()
                tg.cancel_scope.cancel()

    async def _produce(
        self, channel: Channel, hub: Hub | None, ticket: Ticket | None, follow: Follow | None
    ) -> None:
        if follow is not None:  # reads a log: no thread, so no slot to wait for
            await follow.run(channel)
            return
        assert not isinstance(self.source, Watch)
        limiter = self.limiter
        slot: AbstractAsyncContextManager[None] = nullcontext()
        if hub is not None and ticket is not None:
            limiter = limiter or hub.limiter
            slot = hub.slot(ticket, partial(self._queued, channel))
        async with slot:
            if ticket is not None:  # it may have waited in line: is its client still there?
                await checkpoint()  # (a disconnect that came with the slot is seen first)
                if channel.cancelled:
                    return  # no: its job never starts
            await run_source(
                self.source, channel, encoder=self.encoder, limiter=limiter, on_error=self.on_error
            )

    def _queued(self, channel: Channel, position: int) -> None:
        channel.put_nowait(self.encoder.message("queued", None, {"position": position}))

    def _farewell(self, numbered: int) -> bytes | None:
        """The last event of a stream ended by shutdown, numbered after the job's
        events. None for a watch: the job goes on, and the client should
        reconnect (to another process) rather than take it for ended."""
        if isinstance(self.source, Watch):
            return None
        next_id = numbered + 1 if isinstance(self.source, Job) else None
        return self.encoder.message("error", next_id, SHUTDOWN_ERROR)

    def _end(self, channel: Channel) -> None:
        """End the stream early: the job is stopped, what it reported still goes out."""
        channel.end(self._farewell)

    @staticmethod
    async def _watch_disconnect(
        receive: Receive, ended: Event, give_up: Callable[[], None], hub: Hub | None
    ) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if ended.is_set():
            # The last message is on its way, and a disconnect now is no news.
            # Cancelling would land inside that send: hypercorn's trio worker
            # delivers the disconnect from within it, and would be cut short
            # closing the connection, leaving it open.
            return
        if hub is not None:
            hub.disconnects += 1
        give_up()

    @staticmethod
    async def _beat(channel: Channel, interval: float, chunks: _Chunks) -> None:
        """Queue a comment after ``interval`` seconds without a chunk.

        It goes through the channel, between whole events, so the sender stays
        the only sender and the send timeout covers heartbeats too.
        """
        while True:
            idle = current_time() - chunks.taken_at
            if idle >= interval:
                channel.put_nowait(HEARTBEAT)
                idle = 0.0
            await sleep(interval - idle)


class _Sender:
    """The ASGI ``send``, counting sends and noting one in progress (for the
    watchdog: a counter is cheaper than a clock), noting a send cut off
    before the server took it all (``behind``: the client is not reading),
    and answering False for a connection the server says is closed."""

    __slots__ = ("_send", "behind", "busy", "sends")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.sends = 0
        self.busy = False
        self.behind = False

    async def __call__(self, message: Message) -> bool:
        self.sends += 1
        self.busy = True
        try:
            await self._send(message)
        except OSError as exc:  # ASGI: a server may raise it for a closed connection
            logger.debug("event stream send failed: %r", exc)
            return False
        except BaseException:
            self.behind = True
            raise
        finally:
            self.busy = False
        return True


class _Probe(Protocol):
    """What the send watchdog reads: how many sends began, and whether one is
    under way (the ASGI door's ``send``, or a framework's between two chunks)."""

    sends: int
    busy: bool


async def _watch_sends(
    probe: _Probe, limit: float, give_up: Callable[[], None], hub: Hub | None
) -> None:
    """Give up on the stream once a single send has taken ``limit`` seconds:
    the client stopped reading. One task times every send, because a cancel
    scope per send costs more than the rest of an idle event's path. It looks
    four times per ``limit``, so a stuck send ends after 1 to 1.25 times
    ``limit``."""
    watched, since = -1, 0.0  # the send in progress at the last look, and when seen
    while True:
        await sleep(limit / 4)
        now = current_time()
        if not probe.busy:
            watched = -1
        elif probe.sends != watched:
            watched, since = probe.sends, now
        elif now - since >= limit:  # it began before it was first seen
            break
    logger.warning("event stream send timed out after %ss; closing the stream", limit)
    if hub is not None:
        hub.send_timeouts += 1
    give_up()


def _give_up(
    channel: Channel,
    hub: Hub | None,
    ticket: Ticket | None,
    ended: Event | None,
    scope: CancelScope | None,
) -> None:
    """End a stream now, without waiting for a send in progress to return (a
    server may shield its socket writes, as hypercorn's trio worker does): the
    job is told at once, so its thread and limiter token come back at its next
    report, and the stream leaves the app's count now. ``scope`` (the ASGI
    door's) is then cancelled; a framework's own send is left to the framework."""
    if ended is not None:
        ended.set()
    if hub is not None and ticket is not None:
        hub.leave(ticket)
    channel.cancel()
    if scope is not None:
        scope.cancel()


class _Chunks:
    """The channel's batches as body chunks: one chunk per batch, so a burst of
    events leaves in one send."""

    __slots__ = ("_channel", "_hub", "busy", "sends", "taken_at")

    def __init__(self, channel: Channel, hub: Hub | None) -> None:
        self._channel = channel
        self._hub = hub
        self.taken_at = current_time()
        self.sends = 0  # chunks handed out...
        self.busy = False  # ...and the last one not yet sent (for the body door's watchdog)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        self.busy = False
        batch: list[bytes] = []
        while not batch:  # a delivery that lost the race to a direct take is empty
            try:
                batch = await self._channel.receive()
            except EndOfStream:
                raise StopAsyncIteration from None
        self.taken_at = current_time()
        if self._hub is not None:
            self._hub.events_sent += len(batch) - batch.count(HEARTBEAT)
        self.sends += 1
        self.busy = True
        return batch[0] if len(batch) == 1 else b"".join(batch)


def stream_progress(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> EventStream:
    """Stream a blocking function's progress, with default options.

    ``func`` is called in a worker thread as
    ``func(*args, on_progress=callback, **kwargs)``; each
    ``callback(step, details)`` becomes a ``progress`` event, and the return value
    a final ``completed`` event. For options, build the stream yourself:
    ``EventStream(Job(func, *args, **kwargs), heartbeat=5)``.
    """
    return EventStream(Job(func, *args, **kwargs))
