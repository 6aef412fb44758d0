"""The Backend contract for jobs run in attempts (by a job engine): claims that
continue one log, a publisher shut out by a later delivery, events for a job
still waiting, cancels, and jobs abandoned while they waited. Run against every
backend, as in test_store."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
from backends import anyio_backend, backend, case, frames, kind, redis_url
from conftest import BOUND
from processes import Running, worker
from test_store import expired, read_forever, read_until, time_passes

from asgi_sse.resumable._store import Backend, EndedByCancel, JobExists, JobLost

__all__ = ["anyio_backend", "backend", "case", "kind", "redis_url"]  # the fixtures, used by name

pytestmark = pytest.mark.anyio
#: For what needs two processes: a publisher elsewhere.
REDIS_ONLY = pytest.mark.parametrize("case", [("redis", "asyncio")], ids=["redis-asyncio"])


async def test_an_attempt_given_back_is_continued_by_the_next(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j") as first:
        assert (first.last_id, first.attempt, first.taken_over) == (0, 1, False)
        await backend.append("j", frames(1, 2), 1)
        assert await backend.release("j", frames(3)[0])
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.last_id) == ("pending", 2)  # not lost: waiting for its next attempt
    async with backend.publishing("j") as second:
        assert (second.last_id, second.attempt) == (2, 2)
        await backend.append("j", frames(3), 1)
        await backend.finish("j", 3, keep=60)
    assert await read_until(backend, "j", 0, 3) == frames(1, 2, 3)


async def test_an_ended_or_lost_job_is_never_claimed_again(backend: Backend) -> None:
    await backend.create("ended", keep=60)
    async with backend.publishing("ended"):
        await backend.append("ended", frames(1), 1)
        await backend.finish("ended", 1, keep=60)
    await backend.create("lost", keep=60)
    async with backend.publishing("lost"):
        await backend.append("lost", frames(1), 1)  # and leaves without an end
    for takeover in (False, True):
        with pytest.raises(JobExists):
            async with backend.publishing("ended", takeover=takeover):
                pytest.fail("a job that has ended was claimed")
        with pytest.raises(JobLost):
            async with backend.publishing("lost", takeover=takeover):
                pytest.fail("a job that is lost was claimed")
        with pytest.raises(JobLost):
            async with backend.publishing("unknown", takeover=takeover):
                pytest.fail("an unknown job was claimed")


#: The publisher elsewhere's lease: long, so that it is alive until a test says otherwise.
ELSEWHERE_LEASE = 1.5


async def lease_runs_out(backend: Backend, job: str) -> None:
    """End the lease of ``job``'s publisher (stopped or killed by now) at once, and
    return once Redis says it has expired (a keyevent notification): what its
    death looks like from outside, without waiting a lease for it."""
    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    assert isinstance(backend, RedisBackend)
    client, alive = backend.client, backend._key(job, "alive").encode()
    # A renewal already on its way sets it again: then it runs out a lease later, the
    # publisher being stopped.
    await expired(client, alive, first=lambda: client.pexpire(alive, 1))


@contextmanager
def publisher_elsewhere(backend: Backend, redis_url: str, job: str, mode: str) -> Iterator[Running]:
    """A publisher of ``job`` in a process of its own (tests/publisher_process.py),
    claimed by the time this returns."""
    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    assert isinstance(backend, RedisBackend)
    lease = str(ELSEWHERE_LEASE)
    argv = ("python", "publisher_process.py", redis_url, backend.prefix, job, lease, mode)
    with worker("publisher", *argv) as running:
        running.wait_for_line("claimed")
        yield running


async def test_a_later_delivery_takes_over_only_from_a_dead_publisher(
    backend: Backend, kind: str, request: pytest.FixtureRequest
) -> None:
    await backend.create("j", keep=60)
    if kind == "memory":  # one process: its publisher is alive, never taken over
        async with backend.publishing("j"):
            with pytest.raises(JobExists):
                async with backend.publishing("j", takeover=True):
                    pytest.fail("a live publisher in this process was taken over")
        return
    with publisher_elsewhere(backend, request.getfixturevalue("redis_url"), "j", "append") as first:
        # Alive, it renews its lease while a takeover waits for it to run out: it keeps the job.
        with pytest.raises(JobExists):
            async with backend.publishing("j", takeover=True):
                pytest.fail("a live publisher was taken over")
        first.signal(signal.SIGSTOP)  # frozen (a pause, a partition): its lease runs out
        await lease_runs_out(backend, "j")
        async with backend.publishing("j", takeover=True) as claim:
            first.signal(signal.SIGCONT)
            assert (claim.attempt, claim.taken_over) == (2, True)
            await anyio.to_thread.run_sync(first.wait_for_line, "shut out")  # at its next write
            end = claim.last_id + 1
            await backend.append("j", frames(end), 1)
            await backend.finish("j", end, keep=60)
    events = await read_until(backend, "j", 0, end)
    assert [event_id for event_id, _ in events] == list(range(1, end + 1))  # one log, no gap


@REDIS_ONLY  # in one process, nothing shuts its publisher out
async def test_a_publisher_shut_out_is_told_while_it_waits(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await backend.create("j", keep=60)
    with publisher_elsewhere(backend, request.getfixturevalue("redis_url"), "j", "wait") as first:
        first.signal(signal.SIGSTOP)
        await lease_runs_out(backend, "j")
        async with backend.publishing("j", takeover=True):
            first.signal(signal.SIGCONT)  # its next renewal finds the job taken
            await anyio.to_thread.run_sync(first.wait_for_line, "shut out")
            assert "cancelled" not in first.log


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
    with pytest.raises(EndedByCancel):  # a delivery that comes late is told why it is refused
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


async def test_a_cancel_is_for_good_even_as_the_attempt_fails_to_be_retried(
    backend: Backend,
) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        await backend.append("j", frames(1), 1)
        assert await backend.cancel("j", frames(2)[0]) == "told"
        await backend.append("j", frames(2), 1)  # its failure, which the engine would retry
        assert not await backend.release("j", frames(3)[0])  # ended instead, cancelled
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.end_id) == ("ended", 3)
    assert await read_until(backend, "j", 0, 3) == frames(1, 2, 3)
    with pytest.raises(EndedByCancel):
        async with backend.publishing("j", takeover=True):
            pytest.fail("a cancelled job ran again")


async def test_a_cancel_before_the_wait_is_not_missed(backend: Backend) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        assert await backend.cancel("j", frames(1)[0]) == "told"
        with anyio.fail_after(BOUND):
            await backend.wait_cancelled("j")
            await backend.wait_cancelled("j")  # asked again (its signal taken): still cancelled


@REDIS_ONLY  # in one process, its publisher is never taken over
async def test_a_cancel_is_for_good_even_against_a_takeover(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await backend.create("j", keep=60)
    with publisher_elsewhere(backend, request.getfixturevalue("redis_url"), "j", "wait") as first:
        first.signal(signal.SIGSTOP)  # it cannot act on it (nor renew its lease)
        assert await backend.cancel("j", frames(1)[0]) == "told"  # its lease has a while to run
        await lease_runs_out(backend, "j")
        try:
            async with backend.publishing("j", takeover=True) as claim:
                assert (claim.cancelled, claim.taken_over) == (True, True)  # the next one ends it
        finally:
            first.signal(signal.SIGCONT)


@REDIS_ONLY  # in one process, its publisher does not die alone
async def test_a_job_whose_publisher_died_is_cancelled_at_once(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    await backend.create("j", keep=60)
    with publisher_elsewhere(backend, request.getfixturevalue("redis_url"), "j", "wait") as first:
        first.signal(signal.SIGKILL)
        first.process.wait()
        await lease_runs_out(backend, "j")
        assert await backend.cancel("j", frames(1)[0]) == "ended"  # nobody to tell: ended here
    info = await backend.info("j")
    assert info is not None
    assert (info.state, info.end_id) == ("ended", 1)
    assert await read_until(backend, "j", 0, 1) == frames(1)
    with pytest.raises(EndedByCancel):  # its engine's late delivery (its worker died)
        async with backend.publishing("j", takeover=True):
            pytest.fail("a cancelled job ran again")


async def test_a_waiting_job_is_forgotten_after_its_keep_watched_or_not(
    backend: Backend,
) -> None:
    """A job whose task never comes (a lost message) must not say "queued" for ever."""
    await backend.create("j", keep=0.5)
    assert await backend.note("j", frames(1)[0])
    async with backend.watching("j"):
        await time_passes(backend, "j", 0.5)
        assert await backend.info("j") is None
        with anyio.fail_after(BOUND), pytest.raises(JobLost):  # its watcher is told
            await read_forever(backend, "j")


@REDIS_ONLY  # in memory, what is forgotten is forgotten at once
async def test_every_key_of_a_job_expires_whatever_wrote_it_first(backend: Backend) -> None:
    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    assert isinstance(backend, RedisBackend)

    async def no_key_for_ever(job: str) -> None:
        keys = [k async for k in backend.client.scan_iter(f"{backend.prefix}{{{job}}}:*")]
        assert keys
        for key in keys:
            assert await backend.client.pttl(key) > 0, key

    await backend.create("cancelled", keep=60)
    await backend.cancel("cancelled", frames(1)[0])  # the log begins with its end
    await no_key_for_ever("cancelled")
    await backend.create("noted", keep=60)
    await backend.note("noted", frames(1)[0])  # the log begins with a note
    await no_key_for_ever("noted")
    await backend.create("appended", keep=60)
    async with backend.publishing("appended"):
        await backend.append("appended", frames(1), 1)  # the log begins with a batch
        await no_key_for_ever("appended")


@REDIS_ONLY  # in memory, a call cannot lose its reply
async def test_a_claim_repeated_after_a_lost_reply_gets_the_same_answer(backend: Backend) -> None:
    await backend.create("k", keep=60)
    args = (60_000, "a-token", 0, 0)  # grace 0, unwatched: abandoned
    first = await backend._script("claim", "k", *args)  # type: ignore[attr-defined]
    again = await backend._script("claim", "k", *args)  # type: ignore[attr-defined]
    assert first == again
    assert (first[0], first[2]) == (3, 1)  # abandoned, attempt 1: not a plain claim the second time


async def test_a_job_that_ended_on_its_own_despite_a_cancel_is_not_called_cancelled(
    backend: Backend,
) -> None:
    await backend.create("j", keep=60)
    async with backend.publishing("j"):
        assert await backend.cancel("j", frames(1)[0]) == "told"
        await backend.append("j", frames(1), 1)  # it completed before it heard
        await backend.finish("j", 1, 60)
    with pytest.raises(JobExists) as refused:  # its own end stands: a late delivery is a duplicate
        async with backend.publishing("j", takeover=True):
            pytest.fail("an ended job ran again")
    assert type(refused.value) is JobExists  # not EndedByCancel
