"""The Redis log's own connections (``_redis_wire``), on a real redis-server:
set up by redis-py (TCP or a Unix socket, RESP2 or RESP3), then commands paired
with replies in order, through error replies, a caller that leaves, a lost
script and a server that stops answering."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import AsyncIterator

import anyio
import pytest
from backends import frames
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis_server import RedisServer, redis_server

from asgi_sse.resumable import BackendUnavailable
from asgi_sse.resumable._redis_wire import Line
from asgi_sse.resumable.redis import RedisBackend

__all__ = ["redis_server"]  # the fixture, used by name

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture
async def client(redis_server: RedisServer, request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """A client of either protocol, over TCP or the Unix socket (``request.param``)."""
    transport, protocol = getattr(request, "param", ("tcp", 3))
    url = redis_server.url if transport == "tcp" else redis_server.unix_url
    client = Redis.from_url(url, protocol=protocol)
    yield client
    await client.aclose()


@pytest.fixture
async def line(client: Redis) -> AsyncIterator[Line]:
    """An open line: its first command has been answered."""
    line = Line(client.connection_pool)
    assert await line.call("PING", within=5) == b"PONG"
    yield line
    await line.aclose()


@pytest.mark.parametrize("client", [("tcp", 3), ("tcp", 2), ("unix", 3)], indirect=True, ids=str)
async def test_a_job_is_published_and_read_over_lines_set_up_as_the_client_says(
    client: Redis,
) -> None:
    backend = RedisBackend(client, lease=1.0, block=0.5)
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1, 2), 1)
        async with backend.watching("j"):
            assert (await backend.read("j", 0)).events == frames(1, 2)
            await backend.append("j", frames(3), 1)
            assert (await backend.read("j", 2)).events == frames(3)
        await backend.finish("j", 3, keep=60)
    assert (await backend.read("j", 3)).end_id == 3  # and a read outside a watch


async def test_a_script_the_server_lost_is_sent_again(
    client: Redis, redis_server: RedisServer
) -> None:
    backend = RedisBackend(client, lease=1.0, block=0.5)
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1), 1)
        with SyncRedis.from_url(redis_server.url) as admin:
            admin.script_flush()  # as a restart without persistence of scripts does
        await backend.append("j", frames(2), 1)
        assert (await backend.read("j", 0)).events == frames(1, 2)


async def test_an_error_reply_is_raised_and_the_line_goes_on(line: Line) -> None:
    with pytest.raises(ResponseError, match="unknown command"):
        await line.call("NO-SUCH-COMMAND", within=1)
    assert await line.call("PING", within=1) == b"PONG"


async def test_a_caller_that_leaves_does_not_take_the_next_callers_reply(
    line: Line, redis_server: RedisServer
) -> None:
    with anyio.move_on_after(0.05) as scope:  # open, so written at once; left while it blocks
        await line.call("BLPOP", "a-list", 30, within=60)
    assert scope.cancelled_caught
    with SyncRedis.from_url(redis_server.url) as other:
        other.rpush("a-list", "x")  # the BLPOP, still blocked in Redis, takes it
        # Its reply comes first, and is dropped: PING gets its own.
        assert await line.call("PING", within=5) == b"PONG"
        assert other.llen("a-list") == 0  # so it was the BLPOP's reply that went first


async def test_a_server_that_stops_answering_is_unavailable_until_it_answers_again(
    line: Line, redis_server: RedisServer
) -> None:
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(BackendUnavailable, match=r"did not answer within 0\.2s"):
            await line.call("PING", within=0.2)
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    assert await line.call("PING", within=5) == b"PONG"  # over a new connection


async def test_a_closed_server_is_unavailable_and_the_line_reopens_once_it_is_back(
    line: Line, redis_server: RedisServer
) -> None:
    redis_server.stop()
    with pytest.raises(BackendUnavailable):
        await line.call("PING", within=1)
    redis_server.start()
    assert await line.call("PING", within=5) == b"PONG"


async def test_a_connection_the_server_closed_between_calls_is_replaced_and_forgotten(
    line: Line, redis_server: RedisServer
) -> None:
    with SyncRedis.from_url(redis_server.url) as admin:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1  # an idle timeout's end
    with anyio.fail_after(5):
        while line._wire is not None and not line._wire.closed:  # until the loop has heard
            await anyio.sleep(0.01)
    assert await line.call("PING", within=5) == b"PONG"  # over a new connection
    await line.aclose()
    gc.collect()  # redis-py warns of a connection it was never told is closed: none here
