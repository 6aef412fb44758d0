"""Every backend, as the Backend contract tests take them: MemoryBackend on
asyncio and trio, RedisBackend on asyncio against a real redis-server started
here. A test module takes them by importing these fixtures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from redis_server import start_redis

from asgi_sse.resumable._memory import MemoryBackend

GRACE = 0.1
LEASE = 0.3  # short, so a lost publisher and an unwatched job show quickly
BLOCK = 0.5  # RedisBackend's longest blocking read: longer than GRACE, see the unwatched test


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for this module's tests (each uses its own key prefix)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


CASES = [
    pytest.param(("memory", "asyncio"), id="memory-asyncio"),
    pytest.param(("memory", "trio"), id="memory-trio"),
    pytest.param(("redis", "asyncio"), id="redis-asyncio"),
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(case: tuple[str, str]) -> str:
    """Overrides conftest's: RedisBackend runs on asyncio only."""
    return case[1]


@pytest.fixture
def kind(case: tuple[str, str]) -> str:
    return case[0]


class Clock:
    """anyio's clock, which a test can move forward: the memory backend's time."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return anyio.current_time() + self.ahead


@pytest.fixture
async def backend(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if kind == "memory":
        yield MemoryBackend(clock=Clock())
        return
    from redis.asyncio import Redis  # noqa: PLC0415

    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    url = request.getfixturevalue("redis_url")
    client = Redis.from_url(url)
    try:
        yield RedisBackend(client, prefix=f"t-{uuid.uuid4().hex}:", lease=LEASE, block=BLOCK)
    finally:
        await client.aclose()


def frames(*ids: int) -> list[tuple[int, bytes]]:
    return [(i, b"id: %d\ndata: %d\n\n" % (i, i)) for i in ids]
