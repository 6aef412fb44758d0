"""The Backend contract for jobs run in attempts (by a job engine): claims that
continue one log, a publisher shut out by a later delivery, events for a job
still waiting, cancels, and jobs abandoned while they waited. Run against every
backend, as in test_store."""

from __future__ import annotations

import anyio
import pytest
from backends import LEASE, anyio_backend, backend, case, frames, kind, redis_url
from conftest import BOUND
from test_store import read_until

from asgi_sse.resumable._store import Backend, JobExists, JobLost

__all__ = ["anyio_backend", "backend", "case", "kind", "redis_url"]  # the fixtures, used by name

pytestmark = pytest.mark.anyio


async def test_an_attempt_given_back_is_continued_by_the_next(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j") as first:
        assert (first.last_id, first.attempt, first.taken_over) == (0, 1, False)
        await backend.append("j", frames(1, 2), 1)
        await backend.release("j")
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.last_id) == ("pending", 2)  # not lost: waiting for its next attempt
    async with backend.publishing("j") as second:
        assert (second.last_id, second.attempt) == (2, 2)
        await backend.append("j", frames(3), 1)
        await backend.finish("j", 3, keep=60)
    assert await read_until(backend, "j", 0, 3) == frames(1, 2, 3)


async def test_an_ended_or_lost_job_is_never_claimed_again(backend: Backend) -> None:
    await backend.create("lost", keep=60)
    async with backend.publishing("lost"):
        await backend.append("lost", frames(1), 1)
    for job in ("lost",):
        with pytest.raises(JobExists):
            async with backend.publishing(job, takeover=True):
                pytest.fail("a job that is over was claimed")


async def test_a_later_delivery_takes_over_and_shuts_the_first_out(
    backend: Backend, kind: str
) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1), 1)
        if kind == "memory":  # one process: its publisher is alive, never taken over
            with pytest.raises(JobExists):
                async with backend.publishing("j", takeover=True):
                    pytest.fail("a live publisher in this process was taken over")
            return
        from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

        assert isinstance(backend, RedisBackend)
        elsewhere = RedisBackend(backend.client, prefix=backend.prefix, lease=LEASE)  # a worker
        async with elsewhere.publishing("j", takeover=True) as claim:
            assert (claim.last_id, claim.attempt, claim.taken_over) == (1, 2, True)
            with pytest.raises(JobLost):
                await backend.append("j", frames(2), 1)  # the first attempt writes nothing more
            await elsewhere.append("j", frames(2), 1)
            await elsewhere.finish("j", 2, keep=60)
    assert await read_until(backend, "j", 0, 2) == frames(1, 2)


async def test_a_waiting_job_takes_notes_until_it_starts(backend: Backend) -> None:
    await backend.create("j", keep=60)
    assert await backend.note("j", frames(1)[0])
    assert not await backend.note("j", frames(3)[0])  # not the next id
    async with backend.publishing("j") as claim:
        assert claim.last_id == 1
        assert not await backend.note("j", frames(2)[0])  # it runs: its publisher numbers now
    assert await read_until(backend, "j", 0, 1) == frames(1)


async def test_a_waiting_job_cancelled_ends_at_once_and_never_runs(backend: Backend) -> None:
    await backend.create("j", keep=60)
    assert await backend.note("j", frames(1)[0])
    assert await backend.cancel("j", frames(1)[0]) == "moved"  # its last id is 1 now
    assert await backend.cancel("j", frames(2)[0]) == "ended"
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.end_id) == ("ended", 2)
    assert await read_until(backend, "j", 0, 2) == frames(1, 2)
    assert await backend.cancel("j", frames(3)[0]) == "over"
    with pytest.raises(JobExists):
        async with backend.publishing("j", takeover=True):
            pytest.fail("a cancelled job ran")


async def test_a_running_job_cancelled_is_told_at_once(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        told = anyio.Event()

        async def wait() -> None:
            await backend.wait_cancelled("j")
            told.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            assert await backend.cancel("j", frames(1)[0]) == "told"
            with anyio.fail_after(BOUND):
                await told.wait()


async def test_a_job_unwatched_while_it_waited_is_claimed_abandoned(backend: Backend) -> None:
    for job in ("unwatched", "watched", "young"):
        await backend.create(job, keep=60)
    async with backend.publishing("unwatched", grace=0) as claim:
        assert claim.abandoned
    async with backend.watching("watched"), backend.publishing("watched", grace=0) as claim:
        assert not claim.abandoned
    async with backend.publishing("young", grace=60) as claim:
        assert not claim.abandoned
