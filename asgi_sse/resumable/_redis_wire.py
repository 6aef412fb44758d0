"""The Redis log's hot path on the wire: appends and blocking reads over
connections of their own, one future per command, replies parsed by hiredis.

Why not redis-py's client for these two: on this path it spends about 100 us
of Python per command (a pool checkout, retries, observability hooks, a
StreamReader), which was most of what the log added to an event's latency
(docs/benchmarks.md). Connecting stays redis-py's: a connection that the
client's own pool makes, set up its way (address, TLS, AUTH, database), is
handed to this protocol after its handshake and switched to RESP2, in which
a server sends replies only (pushes need RESP3), so replies pair with commands
in order; one that nobody asked for ends the connection. Asyncio only, as
redis-py's asyncio client is.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections import deque
from functools import cache
from typing import Any

from anyio import Lock, fail_after
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis

from ._store import BackendUnavailable

__all__ = ["PASSING", "Line", "Wire", "check_client"]

#: Redis's passing troubles, as redis-py raises them: no connection (``LOADING``
#: after a restart included), a replica that is read-only after a failover, a
#: server out of memory until keys expire. The backend retries them.
PASSING = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    OSError,
    TimeoutError,
)
#: The same troubles as error replies read here.
_PASSING_REPLIES = ("READONLY", "OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY ")


def check_client(client: Redis, block: float) -> None:
    """What the backend needs of the client: bytes, and a ``socket_timeout``
    (if any) longer than its blocking calls' ``block``."""
    settings = client.connection_pool.connection_kwargs
    if settings.get("decode_responses"):
        raise ValueError("RedisBackend stores bytes: give it a client without decode_responses")
    timeout = settings.get("socket_timeout", _default_timeout(client))
    if timeout is not None and not timeout > block:
        raise ValueError(f"the client's socket_timeout ({timeout}s) must exceed block ({block}s)")


def _default_timeout(client: Redis) -> float | None:
    """A client that sets none (``from_url``) has its connections' (5 s in redis-py 8)."""
    for kind in client.connection_pool.connection_class.__mro__:
        init = vars(kind).get("__init__", object.__init__)
        found = inspect.signature(init).parameters.get("socket_timeout")
        if found is not None:
            return found.default if isinstance(found.default, (int, float)) else None
    return None


def _command(args: tuple[bytes | str | int, ...]) -> bytes:
    """RESP's form of a command: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class Wire(asyncio.Protocol):
    """One connection: commands are written at once (pipelined), and each
    reply resolves the oldest waiting future. A reply whose caller left (a
    cancelled read) is dropped, so the pairing holds; a reply later than its
    bound ends the connection, which is then no longer to be trusted."""

    def __init__(self, connection: Any) -> None:
        import hiredis  # noqa: PLC0415 (redis[hiredis], the extra's)

        self._connection = connection  # redis-py's, kept to close it its way
        self._parser = hiredis.Reader(replyError=redis_errors.ResponseError)
        self._waiting: deque[tuple[asyncio.Future[Any], asyncio.TimerHandle]] = deque()
        self._transport: asyncio.WriteTransport | None = None

    @classmethod
    async def open(cls, pool: ConnectionPool, within: float) -> Wire:
        connection = pool.make_connection()  # type: ignore[no-untyped-call]
        await connection.connect()
        # redis-py keeps its stream as this private attribute (5.x to 8.x; tested: 8.2); its
        # transport is all that is taken, once redis-py's handshake is done.
        stream = connection._writer
        assert stream is not None
        wire = cls(connection)
        stream.transport.set_protocol(wire)
        wire._transport = stream.transport
        try:
            if str(connection.get_protocol()) == "3":
                await wire.call(("HELLO", 2), within)  # keeps the connection's user and database
        except BaseException:
            await wire.aclose()
            raise
        return wire

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def call(self, command: tuple[Any, ...], within: float) -> asyncio.Future[Any]:
        """Send a command now; the future resolves with its reply, or raises its
        error reply (``ResponseError``), ``ConnectionError`` or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._transport is None or self._transport.is_closing():
            future.set_exception(redis_errors.ConnectionError("the connection is closed"))
            return future
        self._waiting.append((future, loop.call_later(within, self._late, within)))
        self._transport.write(_command(command))
        return future

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        while True:
            try:
                reply = self._parser.gets()
            except Exception as exc:  # not RESP: nothing more on it can be trusted
                self._fail(redis_errors.ConnectionError(f"bad reply from redis: {exc}"))
                return
            if reply is False:
                return
            if not self._waiting:  # unasked: the pairing is gone
                self._fail(redis_errors.ConnectionError("redis sent a reply nobody asked for"))
                return
            future, timer = self._waiting.popleft()
            timer.cancel()
            if future.done():  # its caller left
                continue
            if isinstance(reply, redis_errors.ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def _late(self, within: float) -> None:
        self._fail(TimeoutError(f"redis did not answer within {within}s"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(redis_errors.ConnectionError(f"redis closed the connection ({exc})"))

    def _fail(self, error: Exception) -> None:
        if self._transport is not None:
            self._transport.close()
        while self._waiting:
            future, timer = self._waiting.popleft()
            timer.cancel()
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        self._fail(redis_errors.ConnectionError("the connection is closed"))
        await self._connection.disconnect(nowait=True)  # and redis-py forgets its stream


class Line:
    """A :class:`Wire` opened when first needed, and again after it breaks:
    what one publishing attempt, or one watcher, holds while it lasts."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._wire: Wire | None = None
        self._opening = Lock()

    async def call(self, *command: Any, within: float) -> Any:
        """A command's reply within ``within`` seconds. Passing troubles raise
        :class:`BackendUnavailable`; a line that timed out or broke is closed,
        and opened again on its next call."""
        wire = self._wire
        try:
            if wire is None or wire.closed:
                wire = await self._open(within)
            return await wire.call(command, within)
        except redis_errors.ResponseError as exc:
            if str(exc).startswith(_PASSING_REPLIES):
                raise BackendUnavailable(f"redis: {exc}") from exc
            raise
        except PASSING as exc:
            if wire is not None and wire is self._wire:  # not one another call opened since
                await self.aclose()
            raise BackendUnavailable(f"redis: {exc or 'no answer in time'}") from exc

    async def _open(self, within: float) -> Wire:
        with fail_after(within):
            async with self._opening:  # one at a time: a second caller takes the first's
                if self._wire is None or self._wire.closed:
                    await self.aclose()  # a broken one: redis-py must forget its stream too
                    self._wire = await Wire.open(self._pool, within)
                return self._wire

    async def script(self, source: str, keys: list[str], args: Any, within: float) -> Any:
        """A Lua script by its digest, or by its source where the server has
        lost it (a restart, ``SCRIPT FLUSH``), which loads it again."""
        try:
            digest = _digest(source)
            return await self.call("EVALSHA", digest, len(keys), *keys, *args, within=within)
        except redis_errors.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", source, len(keys), *keys, *args, within=within)

    async def aclose(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            await wire.aclose()


@cache
def _digest(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)
