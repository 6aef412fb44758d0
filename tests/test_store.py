"""The Backend contract, run against every backend, and the sans-IO log rules.

Each contract test runs on MemoryBackend (asyncio and trio) and on RedisBackend
(asyncio only: redis-py's client) against a real redis-server started here.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from backends import BLOCK, GRACE, LEASE, anyio_backend, backend, case, frames, kind, redis_url
from conftest import BOUND

from asgi_sse.resumable._log import (
    MAX_EVENT_ID,
    BadEventId,
    Retention,
    Trimmer,
    check_job_id,
    parse_event_id,
)
from asgi_sse.resumable._memory import MemoryBackend
from asgi_sse.resumable._store import (
    Backend,
    BackendUnavailable,
    JobExists,
    JobLost,
)

__all__ = ["anyio_backend", "backend", "case", "kind", "redis_url"]  # the fixtures, used by name


async def read_until(backend: Backend, job: str, after: int, last: int) -> list[tuple[int, bytes]]:
    """Every event after ``after`` up to ``last``: a backend may return empty pages."""
    got: list[tuple[int, bytes]] = []
    with anyio.fail_after(BOUND):
        while after < last:
            page = await backend.read(job, after)
            got.extend(page.events)
            if page.events:
                after = page.events[-1][0]
    return got


async def read_forever(backend: Backend, job: str) -> None:
    """Read until the backend raises: it may return empty pages first."""
    while True:
        await backend.read(job, 0)


# -- the Backend contract ---------------------------------------------------------------


@pytest.mark.anyio
async def test_create_twice_is_refused(backend: Backend) -> None:
    await backend.create("a", keep=60)
    with pytest.raises(JobExists):
        await backend.create("a", keep=60)
    await backend.create("b", keep=60)  # another id is independent


@pytest.mark.anyio
async def test_publishing_claims_once(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        with pytest.raises(JobExists):
            async with backend.publishing("j"):
                pytest.fail("a second publisher was let in")
    with pytest.raises(JobLost):
        async with backend.publishing("unknown"):
            pytest.fail("an unknown job was published")


@pytest.mark.anyio
async def test_ended_job_cannot_be_published_again(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1), 1)
        await backend.finish("j", 1, keep=60)
    with pytest.raises(JobExists):
        async with backend.publishing("j"):
            pytest.fail("an ended job was published again")


@pytest.mark.anyio
async def test_read_after_cursor_returns_exactly_the_rest_in_order(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1, 2), 1)
        await backend.append("j", frames(3, 4, 5), 1)
        assert await read_until(backend, "j", 2, 5) == frames(3, 4, 5)
        assert await read_until(backend, "j", 0, 5) == frames(1, 2, 3, 4, 5)
        assert await read_until(backend, "j", 4, 5) == frames(5)


@pytest.mark.anyio
async def test_append_retried_with_the_same_ids_is_a_no_op(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1, 2), 1)
        await backend.append("j", frames(1, 2), 1)  # the retry of a batch whose reply was lost
        await backend.append("j", frames(3), 1)
        await backend.append("j", frames(3), 1)
        assert await read_until(backend, "j", 0, 3) == frames(1, 2, 3)
        info = await backend.info("j")
        assert info is not None
        assert info.last_id == 3


@pytest.mark.anyio
async def test_trimmed_history_reads_from_the_first_kept(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1, 2, 3, 4, 5), 1)
        await backend.append("j", frames(6), 4)  # keep 4.. from now on
        page = await backend.read("j", 1)
        assert page.events == frames(4, 5, 6)
        assert page.events[0][0] > 1 + 1  # the gap a watcher reports
        await backend.append("j", (), 6)  # trimming alone, as expiry by age does
        assert (await backend.read("j", 0)).events == frames(6)
        assert (await backend.read("j", 5)).events == frames(6)


@pytest.mark.anyio
async def test_finish_then_read_returns_the_end(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1, 2, 3, 4), 1)
        await backend.finish("j", 4, keep=60)
    with anyio.fail_after(BOUND):
        page = await backend.read("j", 2)
        assert page.events == frames(3, 4)
        assert page.end_id == 4
        page = await backend.read("j", 4)  # the client has it all: no wait
        assert list(page.events) == []
        assert page.end_id == 4


@pytest.mark.anyio
async def test_info_follows_the_job(backend: Backend) -> None:
    assert await backend.info("j") is None
    await backend.create("j", keep=60)
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.last_id, info.end_id) == ("pending", 0, None)
    async with backend.publishing("j"):
        info = await backend.info("j")
        assert info is not None
        assert info.state == "running"
        await backend.append("j", frames(1, 2, 3), 1)
        info = await backend.info("j")
        assert info is not None
        assert (info.state, info.last_id, info.end_id) == ("running", 3, None)
        await backend.finish("j", 3, keep=60)
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.last_id, info.end_id) == ("ended", 3, 3)


@pytest.mark.anyio
async def test_publisher_leaving_without_finish_is_lost(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1, 2), 1)
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.last_id, info.end_id) == ("lost", 2, None)


@pytest.mark.anyio
async def test_blocked_reader_learns_the_publisher_is_lost(backend: Backend) -> None:
    await backend.create("j", keep=60)
    outcome: list[str] = []
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg, backend.publishing("j"):
            await backend.append("j", frames(1), 1)

            async def reader() -> None:
                after = 1
                try:
                    while True:  # empty pages are allowed until the loss is seen
                        page = await backend.read("j", after)
                        assert not page.events
                        assert page.end_id is None
                except JobLost:
                    outcome.append("lost")

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
    assert outcome == ["lost"]


@pytest.mark.anyio
async def test_read_of_an_unknown_job_is_lost(backend: Backend) -> None:
    with anyio.fail_after(BOUND), pytest.raises(JobLost):
        await read_forever(backend, "nobody")


@pytest.mark.anyio
async def test_blocked_read_is_woken_by_an_append(backend: Backend) -> None:
    await backend.create("j", keep=60)
    got: list[Any] = []
    first, done = anyio.Event(), anyio.Event()
    async with backend.publishing("j"):
        await backend.append("j", frames(1), 1)

        async def reader() -> None:
            async with backend.watching("j"):  # as a watch reads: its connection made by
                assert (await backend.read("j", 0)).events == frames(1)  # a first read
                first.set()
                got.append(await backend.read("j", 1))  # then one read: the one woken
            done.set()

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await first.wait()
                # The reader is waiting in read() (on Redis: its XREAD written, on its
                # connection opened by the first read, before it waits).
                await anyio.wait_all_tasks_blocked()
                assert not done.is_set()
                await backend.append("j", frames(2), 1)
                await done.wait()
    assert got[0].events == frames(2)


@pytest.mark.anyio
async def test_wait_unwatched_returns_after_grace_without_watchers(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        start = anyio.current_time()
        with anyio.fail_after(BOUND):
            await backend.wait_unwatched("j", GRACE)
        assert anyio.current_time() - start >= GRACE * 0.99  # the grace is a lower bound


@pytest.mark.anyio
async def test_wait_unwatched_keeps_waiting_while_watched(backend: Backend, kind: str) -> None:
    await backend.create("j", keep=60)
    returned = anyio.Event()
    async with backend.publishing("j"):
        if kind == "memory":
            async with backend.watching("j"):
                with anyio.move_on_after(GRACE * 3) as bound:  # a bound, not a threshold
                    await backend.wait_unwatched("j", GRACE)
                assert bound.cancelled_caught, "wait_unwatched returned while watched"
        else:

            async def waiter() -> None:
                await backend.wait_unwatched("j", GRACE)
                returned.set()

            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as tg:
                    async with backend.watching("j"):
                        tg.start_soon(waiter)
                        # A read with nothing to read returns after BLOCK (> GRACE):
                        # proof that more than the grace went by while watched.
                        page = await backend.read("j", 0)
                        assert not page.events
                        assert not returned.is_set(), "wait_unwatched returned while watched"
                    await returned.wait()  # and, unwatched, it returns
                    assert returned.is_set()
        with anyio.fail_after(BOUND):  # unwatched now: it returns
            await backend.wait_unwatched("j", GRACE)


async def time_passes(backend: Any, job_id: str, keep: float) -> None:
    """Let ``keep`` seconds pass for ``job_id``'s record, without sleeping: the
    memory backend's clock is moved on; Redis expires the record itself, and
    says so (a keyevent notification), which is what is waited for."""
    if isinstance(backend, MemoryBackend):
        backend._clock.ahead += keep  # type: ignore[attr-defined]
        return
    await expired(backend.client, backend._key(job_id, "meta").encode())


async def expired(
    client: Any, key: bytes, *, first: Callable[[], Awaitable[Any]] | None = None
) -> None:
    """Return once Redis has expired ``key``, as it says (a keyevent notification),
    listening from before the first look (and before ``first()``, if given)."""
    await client.config_set("notify-keyspace-events", "Ex")
    expiries = client.pubsub()
    await expiries.subscribe("__keyevent@0__:expired")
    try:
        if first is not None:
            await first()
        with anyio.fail_after(BOUND):
            while await client.exists(key):
                message = await expiries.get_message(timeout=BOUND)
                if message is not None and message["data"] == key:
                    break
    finally:
        await expiries.aclose()


@pytest.mark.anyio
async def test_finished_job_is_forgotten_after_keep(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1), 1)
        await backend.finish("j", 1, keep=0.5)
    assert await backend.info("j") is not None  # kept for now
    await time_passes(backend, "j", 0.5)
    assert await backend.info("j") is None
    with anyio.fail_after(BOUND), pytest.raises(JobLost):
        await read_forever(backend, "j")


@pytest.mark.anyio
async def test_unclaimed_job_is_forgotten_after_keep(backend: Backend) -> None:
    await backend.create("j", keep=0.3)
    assert await backend.info("j") is not None
    await time_passes(backend, "j", 0.3)
    assert await backend.info("j") is None
    await backend.create("j", keep=60)  # the id is free again


# -- the sans-IO rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_events": 0},
        {"max_events": -1},
        {"max_events": 1.5},
        {"max_events": True},
        {"max_bytes": 0},
        {"max_bytes": "10"},
        {"max_age": 0},
        {"max_age": -1.0},
        {"max_age": True},
        {"max_age": "5"},
        {"max_age": float("nan")},
    ],
)
def test_retention_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be a positive"):
        Retention(**kwargs)


def test_retention_accepts_sensible_values() -> None:
    r = Retention(max_events=1, max_bytes=1, max_age=0.5)
    assert (r.max_events, r.max_bytes, r.max_age) == (1, 1, 0.5)
    Retention(max_age=7)


def test_trimmer_by_count() -> None:
    t = Trimmer(Retention(max_events=3, max_bytes=10**9, max_age=1000))
    assert [t.add(i, 10, now=0.0) for i in range(1, 7)] == [1, 1, 1, 2, 3, 4]
    assert t.first == 4


def test_trimmer_by_bytes() -> None:
    t = Trimmer(Retention(max_events=1000, max_bytes=100, max_age=1000))
    assert t.add(1, 40, now=0.0) == 1
    assert t.add(2, 40, now=0.0) == 1  # 80 bytes
    assert t.add(3, 40, now=0.0) == 2  # 120: the oldest goes
    assert t.add(4, 100, now=0.0) == 4  # 180, then 140, then 100
    assert t.add(5, 1, now=0.0) == 5  # 101


def test_trimmer_by_bytes_exact() -> None:
    t = Trimmer(Retention(max_events=1000, max_bytes=100, max_age=1000))
    assert t.add(1, 60, now=0.0) == 1
    assert t.add(2, 40, now=0.0) == 1  # exactly 100 is within the limit
    assert t.add(3, 1, now=0.0) == 2  # 101: the oldest goes
    assert t.add(4, 60, now=0.0) == 3  # 41 + 60 = 101: 2 goes, 61 kept


def test_trimmer_by_age() -> None:
    t = Trimmer(Retention(max_events=1000, max_bytes=10**9, max_age=10))
    assert t.add(1, 1, now=0.0) == 1
    assert t.add(2, 1, now=5.0) == 1
    assert t.expire(9.9) == 1
    assert t.expire(10.0) == 2  # event 1 is max_age old
    assert t.add(3, 1, now=14.0) == 2
    assert t.expire(15.0) == 3
    assert t.expire(1000.0) == 3  # the newest is kept however old


def test_trimmer_always_keeps_the_newest() -> None:
    t = Trimmer(Retention(max_events=1, max_bytes=1, max_age=1))
    assert t.add(1, 500, now=0.0) == 1  # too big, yet the only one
    assert t.add(2, 500, now=0.0) == 2
    assert t.expire(100.0) == 2
    assert t.add(3, 1, now=200.0) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 0), ("", 0), ("0", 0), ("42", 42), ("1", 1), (str(MAX_EVENT_ID), MAX_EVENT_ID)],
)
def test_parse_event_id_accepts_what_we_send(value: str | None, expected: int) -> None:
    assert parse_event_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "01",
        "00",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "1_000",
        "9" * 20,
        str(MAX_EVENT_ID + 1),
        "9" * 400,
        "\uff19",  # fullwidth 9: int() would take it
        "\u0661",  # Arabic-Indic 1: likewise
        "\x00",
        "1\x00",
        "abc",
    ],
)
def test_parse_event_id_refuses_anything_else(value: str) -> None:
    with pytest.raises(BadEventId):
        parse_event_id(value)


def test_bad_event_id_message_is_bounded() -> None:
    with pytest.raises(BadEventId) as caught:
        parse_event_id("7" * 10_000)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("job_id", ["a", "A-z_0.9:~", "x" * 128, "aGVsbG8td29ybGQ"])
def test_check_job_id_accepts(job_id: str) -> None:
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize(
    "job_id",
    ["", "x" * 129, "a b", "a/b", "a%20b", "é", "a\x00", "{a}", "a\n", ".", "..", 5, None],
)
def test_check_job_id_refuses(job_id: Any) -> None:
    with pytest.raises(ValueError, match="a job id is 1 to 128"):
        check_job_id(job_id)


@pytest.mark.anyio
async def test_a_reader_of_a_job_that_never_starts_learns_it_is_gone(backend: Backend) -> None:
    """Expiry fires no event of its own: the read must still end."""
    await backend.create("j", keep=0.3)
    with anyio.fail_after(BOUND), pytest.raises(JobLost):
        await read_forever(backend, "j")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_out_of_memory_is_an_outage_to_wait_out(redis_url: str) -> None:
    """A server refusing writes for lack of memory (or read-only after a
    failover) is a passing trouble: callers retry, they do not fail the job."""
    from redis.asyncio import Redis  # noqa: PLC0415

    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    client = Redis.from_url(redis_url)
    backend = RedisBackend(client, prefix=f"t-{uuid.uuid4().hex}:", lease=LEASE, block=BLOCK)
    try:
        await backend.create("j", keep=60)
        async with backend.publishing("j"):
            await client.config_set("maxmemory", 1)
            try:
                with pytest.raises(BackendUnavailable, match="maxmemory"):
                    await backend.append("j", frames(1), 1)
            finally:
                await client.config_set("maxmemory", 0)
            await backend.append("j", frames(1), 1)  # the same append, once memory is back
            page = await backend.read("j", 0)
        assert [n for n, _ in page.events] == [1]
    finally:
        await client.aclose()


def test_a_redis_backend_refuses_a_client_its_blocking_reads_would_time_out() -> None:
    from redis.asyncio import Redis  # noqa: PLC0415

    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"socket_timeout \(1\.0s\) must exceed block"):
        RedisBackend(Redis(socket_timeout=1.0), block=1.0)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisBackend(Redis(decode_responses=True))
    with pytest.raises(ValueError, match=r"socket_timeout \(5s\)"):  # redis-py's own default
        RedisBackend(Redis.from_url("redis://127.0.0.1:1/0"), block=5.0)
    assert RedisBackend(Redis(socket_timeout=5.0), block=1.0).block == 1.0  # nothing connects
