"""One request's event stream, from admission to its last byte.

Both doors of :class:`~asgi_sse.EventStream` (the ASGI call, and :meth:`Exchange.body`
for frameworks that send the body themselves) build one per request. Three tasks, the
fewest the race with the client needs: the request's sends (the only caller of ``send``),
the source's run, and one that listens for ``http.disconnect`` and keeps the timer. A
server may drop a send to a client gone, or block it forever on one that stopped reading
(hypercorn does both): disconnect is learnt from ``receive()``, every send is timed, and
only what the server took is counted. Whatever ends the stream, the job is told to stop;
the exchange returns only after its thread has. A stream the server cancels (its graceful
shutdown ran out) still sends what the job reported and a last ``error`` event, briefly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import monotonic
from typing import TYPE_CHECKING

from anyio import (
    CancelScope,
    EndOfStream,
    create_task_group,
    get_cancelled_exc_class,
    move_on_after,
    sleep,
)
from anyio.abc import TaskGroup

from ._bridge import Channel
from ._encoder import HEARTBEAT
from ._http import Receive, Refusal, Scope, Send, refusal
from ._hub import Hub, Ticket
from ._run import Run, run_under
from ._shutdown import absorb_native_cancel
from ._timer import Due, Timer

if TYPE_CHECKING:
    from ._response import EventStream

__all__ = ["FAREWELL_TIMEOUT", "Exchange"]

logger = logging.getLogger("asgi_sse")

#: Seconds the last message of a stream the server cut may take (shutdown waits no longer).
FAREWELL_TIMEOUT = 1.0


class Exchange:
    """One request's stream: its admission ticket, channel, run and timer."""

    __slots__ = (
        "_cancel",
        "behind",
        "channel",
        "complete",
        "ended",
        "hub",
        "pending",
        "run",
        "scope",
        "stream",
        "ticket",
        "timer",
    )

    def __init__(self, stream: EventStream, scope: Scope, hub: Hub | None) -> None:
        self.stream = stream
        self.scope = scope
        self.hub = hub
        self.ticket: Ticket | None = None
        self.pending: tuple[list[bytes], int] = ([], 0)  # a batch handed over, and its size
        self.channel = Channel(stream.options.max_buffer_bytes, coalesce=stream.options.coalesce)
        self.run: Run | None = None
        self.ended = False  # the client left, or the last message is on its way
        self.behind = False  # a send was cut off before the server took it all
        self.complete = False  # the response's last message went out
        self.timer = Timer(stream.heartbeat, stream.send_timeout, monotonic())
        self._cancel: CancelScope | None = None

    def admit(self) -> Refusal | None:
        """Take a place among the app's streams, or the 503 to send instead."""
        hub = self.hub
        if hub is not None:
            self.ticket = hub.admit()
            if self.ticket is None:
                return refusal(hub)
            self.ticket.end = self.end
        return None

    async def open(self) -> Refusal | None:
        """Let the source decide: None to stream, or the answer to send instead."""
        stream, hub = self.stream, self.hub
        answer = await stream.source.open(self.scope, self.channel, stream.options)
        if isinstance(answer, Refusal):
            self.leave()
            return answer
        self.run = answer
        if hub is not None and self.ticket is not None and hub.closing:
            self.leave()  # shutdown began while the source decided
            hub.refused += 1
            return refusal(hub)
        return None

    def end(self) -> None:
        """End early (shutdown): the job stops, what it reported still goes out."""
        if self.run is not None:
            self.channel.end(self.run.farewell)

    def leave(self) -> None:
        ticket, self.ticket = self.ticket, None  # (at most once)
        if ticket is not None and self.hub is not None:
            self.hub.leave(ticket)

    def give_up(self) -> None:
        """End the stream now, not after a send in progress (a server may shield
        its writes, as hypercorn's trio worker does): the job is told at once, so
        its thread and token come back at its next report, and the stream leaves
        the app's count. A framework's own send is left to it."""
        self.ended = True
        self.leave()
        self.channel.cancel()
        if self._cancel is not None:
            self._cancel.cancel()

    async def __call__(self, receive: Receive, send: Send) -> None:
        try:
            answer = await self.open()
            if answer is not None:
                await answer(self.scope, receive, send)
                return
            start = {"type": "http.response.start", "status": 200, "headers": self.stream.headers}
            async with create_task_group() as tg:
                self._cancel = tg.cancel_scope
                tg.start_soon(self._listen, receive)  # first: every send is timed
                try:
                    if await self._send(send, start):
                        self._start(tg)
                        await self._send_all(send)
                finally:
                    # Tell the job before the task group waits for its thread.
                    self.channel.cancel()
                    tg.cancel_scope.cancel()
        except get_cancelled_exc_class():
            if not (self.complete and absorb_native_cancel()):
                raise
        finally:
            self.leave()

    async def _send_all(self, send: Send) -> None:
        try:
            while True:
                try:
                    body = await self._next_body()
                except EndOfStream:
                    break
                message = {"type": "http.response.body", "body": body, "more_body": True}
                if not await self._send(send, message):
                    return
        except get_cancelled_exc_class():
            if not self.ended and not self.behind:
                await self._farewell(send)
            raise
        if self.ended:
            return  # given up (the client left): the cancellation is on its way
        self.ended = True
        last = {"type": "http.response.body", "body": b"", "more_body": False}
        self.complete = await self._send(send, last)

    async def _next_body(self) -> bytes:
        """The channel's next batch as one body: a burst of events leaves in one send."""
        batch = await self.channel.receive()
        body = batch[0] if len(batch) == 1 else b"".join(batch)
        self.pending = batch, len(body)
        return body

    def _taken(self) -> None:
        """The server took the batch handed over: count it, once (a send cut is not sent)."""
        (batch, size), self.pending = self.pending, ([], 0)
        if batch and self.hub is not None:
            self.hub.sent(batch, len(batch) - batch.count(HEARTBEAT), size, self.ticket)

    async def _send(self, send: Send, message: dict[str, object]) -> bool:
        """Send, timed; False for a connection the server says is closed."""
        self.timer.sending(monotonic())
        try:
            await send(message)
        except OSError as exc:  # ASGI: a server may raise it for a closed connection
            logger.debug("event stream send failed: %r", exc)
            return False
        except BaseException:
            self.behind = True
            raise
        self.timer.sent()
        self._taken()
        return True

    async def _farewell(self, send: Send) -> None:
        """The server gave up on the request (its graceful timeout): say so, so
        no client takes the cut for a finished job. Briefly, and not to a client
        cut off mid-send (behind): shutdown must not wait on slow readers."""
        assert self.run is not None
        self.ended = True  # a disconnect now is no news, and must not cut this send
        ended = self.channel.closed  # its terminal event is among the rest already
        rest = self.channel.take_rest()
        last = None if ended else self.run.farewell()
        rest += [] if last is None else [last]
        body = b"".join(rest)
        self.pending = rest, len(body)
        with move_on_after(FAREWELL_TIMEOUT, shield=True):
            try:
                await send({"type": "http.response.body", "body": body})
            except OSError as exc:  # the client has gone too: the cancellation goes on
                logger.debug("event stream farewell failed: %r", exc)
            else:
                self.complete = True
                self._taken()

    @asynccontextmanager
    async def body(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """The encoded stream, after :meth:`open`, for frameworks that send the body
        themselves. It takes its place among the app's streams here, so a response
        dropped unsent holds none; if the app filled up since the status was sent,
        the body is one ``error`` event (``ServerBusy``). The framework watches for
        disconnect; its sends are timed (and counted) as the gap between handing
        out a chunk and being asked for the next."""
        refused = self.admit()
        if refused is not None:
            yield refused.as_event()
            return
        try:
            async with create_task_group() as tg:
                self._start(tg)
                tg.start_soon(self._listen, None)
                try:
                    yield self
                finally:
                    self.channel.cancel()
                    tg.cancel_scope.cancel()
        finally:
            self.leave()

    def __aiter__(self) -> Exchange:  # the body door's chunks
        return self

    async def __anext__(self) -> bytes:
        self.timer.sent()
        self._taken()  # asked for the next: the framework's send of the last returned
        try:
            body = await self._next_body()
        except EndOfStream:
            raise StopAsyncIteration from None
        self.timer.sending(monotonic())
        return body

    def _start(self, tg: TaskGroup) -> None:
        """Run the source: the stream is observed from here (admitted, its source said yes)."""
        hub, ticket, run = self.hub, self.ticket, self.run
        assert run is not None
        if hub is not None and ticket is not None:
            hub.running(ticket, self.scope, getattr(self.stream.source, "job_id", None))
        tg.start_soon(run_under, run, self.channel, self.stream.options.limiter, hub, ticket)

    async def _listen(self, receive: Receive | None) -> None:
        """Wait for the client to leave (ASGI door) or the timer: one task, one scope a tick."""
        while True:
            delay = self.timer.delay(monotonic())
            if receive is None:
                await sleep(delay)
            else:
                with move_on_after(delay):  # one scope per tick, not per message
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    self._disconnected()
                    return
            if self._tick():
                return

    def _tick(self) -> bool:
        """Do what the timer says is due; True once given up (a heartbeat is sent timed)."""
        due = self.timer.due(monotonic())
        if due is Due.HEARTBEAT:
            self.channel.put_nowait(HEARTBEAT)
        elif due is Due.GIVE_UP:
            limit = self.timer.limit
            logger.warning("event stream send timed out after %ss; closing the stream", limit)
            if self.hub is not None:
                self.hub.send_timeouts += 1
            self.give_up()
            return True
        return False

    def _disconnected(self) -> None:
        if self.ended:  # the last message is on its way: no news, and a cancel would land
            return  # inside it (hypercorn-trio delivers it from there, leaving the socket open)
        if self.hub is not None:
            self.hub.disconnects += 1
        self.give_up()
