"""``Jobs.perform`` and ``Jobs.cancel``, the doors the job engines use, in process
on the in-memory backend (asyncio and trio); test_engines runs them on real
Celery and RQ workers."""

from __future__ import annotations

import threading

import anyio
import pytest
from conftest import BOUND
from sse_spec import parse_stream

from asgi_sse import Job, JobCancelled, Reporter
from asgi_sse.resumable import JobExists, JobLost, Jobs

pytestmark = pytest.mark.anyio


async def log(jobs: Jobs, job_id: str) -> list[tuple[str, str, str]]:
    """(id, event, data) of every event the job's log holds, read to its end."""
    seen, after = b"", 0
    with anyio.fail_after(BOUND):
        while True:
            page = await jobs.backend.read(job_id, after)
            for event_id, frame in page.events:
                seen, after = seen + frame, event_id
            if page.end_id is not None and after >= page.end_id:
                return [(e["id"], e["event"], e["data"]) for e in parse_stream(seen)]


def twice(attempts: list[int], on_progress: Reporter) -> str:
    attempts.append(len(attempts) + 1)
    on_progress("attempt", {"n": len(attempts)})
    if len(attempts) == 1:
        raise ValueError("first")
    return "done"


async def test_perform_returns_the_result_and_a_retried_failure_continues_the_log() -> None:
    jobs, attempts = Jobs(), []
    job_id = await jobs.create()
    with pytest.raises(ValueError, match="first"):  # the engine sees the failure, to retry it
        await jobs.perform(Job(twice, attempts), id=job_id, retry_if=lambda e: True)
    info = await jobs.backend.info(job_id)
    assert info is not None
    assert info.state == "pending"  # waiting for its next attempt, not ended
    assert await jobs.perform(Job(twice, attempts), id=job_id) == "done"
    assert await log(jobs, job_id) == [
        ("1", "progress", '{"step":"attempt","details":{"n":1}}'),
        ("2", "retrying", '{"type":"ValueError","attempt":1}'),
        ("3", "progress", '{"step":"attempt","details":{"n":2}}'),
        ("4", "completed", '"done"'),
    ]
    with pytest.raises(JobExists):  # delivered once more: it has ended, and does not run
        await jobs.perform(Job(twice, attempts), id=job_id)
    assert attempts == [1, 2]


async def test_a_failure_not_to_be_retried_ends_the_job() -> None:
    jobs = Jobs()
    job_id = await jobs.create()
    with pytest.raises(ValueError, match="first"):
        await jobs.perform(Job(twice, []), id=job_id, retry_if=lambda e: False)
    assert [event for _, event, _ in await log(jobs, job_id)] == ["progress", "error"]


async def test_a_performed_job_cancelled_raises_job_cancelled_for_its_engine() -> None:
    jobs, started = Jobs(), threading.Event()

    def until_cancelled(on_progress: Reporter) -> None:
        on_progress("started", {})
        started.set()
        while True:
            on_progress("tick", {})  # raises JobCancelled once the job is cancelled
            threading.Event().wait(0.01)  # the job's pace, not a synchronisation

    job_id = await jobs.create()
    outcome: list[BaseException] = []

    async def perform() -> None:
        try:
            await jobs.perform(Job(until_cancelled), id=job_id)
        except JobCancelled as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(perform)
        with anyio.fail_after(BOUND):
            await anyio.to_thread.run_sync(started.wait)
        assert await jobs.cancel(job_id)
    assert len(outcome) == 1
    (*_, last) = await log(jobs, job_id)
    assert last[1:] == ("error", '{"type":"JobCancelled"}')
    assert not await jobs.cancel(job_id)  # it has ended


async def test_a_waiting_job_cancelled_never_runs_and_says_where_it_waited() -> None:
    jobs, ran = Jobs(), []
    job_id = await jobs.create()
    await jobs.note_queued(job_id, 3)
    assert await jobs.cancel(job_id)
    with pytest.raises(JobCancelled):  # its engine's delivery is told why it does not run
        await jobs.perform(Job(lambda on_progress: ran.append(1)), id=job_id)
    assert ran == []
    assert await log(jobs, job_id) == [
        ("1", "queued", '{"position":3}'),
        ("2", "error", '{"type":"JobCancelled"}'),
    ]
    with pytest.raises(JobLost):
        await jobs.cancel("no-such-job")


async def test_perform_refuses_a_bad_id_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="job id"):
        await Jobs().perform(Job(lambda on_progress: None), id="a b")


async def test_a_retry_if_that_raises_ends_the_job_with_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = Jobs()
    job_id = await jobs.create()

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("a bug in the engine's door")

    with pytest.raises(ValueError, match="first"):
        await jobs.perform(Job(twice, []), id=job_id, retry_if=broken)
    (*_, last) = await log(jobs, job_id)
    assert last[1:] == ("error", '{"type":"ValueError"}')  # ended, not left waiting
    assert "retry_if failed" in caplog.text


async def test_a_job_that_returned_is_not_retried_even_if_its_result_cannot_be_sent() -> None:
    jobs, asked = Jobs(), []

    def retry_if(exc: BaseException) -> bool:
        asked.append(exc)
        return True

    class Unsayable:
        def __str__(self) -> str:
            raise RuntimeError("no text either")

    unsayable = Unsayable()
    job_id = await jobs.create()
    result = await jobs.perform(Job(lambda on_progress: unsayable), id=job_id, retry_if=retry_if)
    assert result is unsayable  # the engine keeps what it returned
    assert [event for _, event, _ in await log(jobs, job_id)] == ["error"]
    assert asked == []


async def test_a_job_cancelled_as_it_fails_to_be_retried_ends_cancelled_not_retried() -> None:
    """Whichever comes first, the cancel or the failure, the job ends with JobCancelled
    (the release that loses the race is the contract tests' case, test_attempts)."""
    jobs = Jobs()
    web = Jobs(jobs.backend)  # another process's, on the same backend
    job_id = await jobs.create()

    def cancelled_then_fails(on_progress: Reporter) -> None:
        on_progress("started", {})
        anyio.from_thread.run(web.cancel, job_id)  # told: the job fails before it looks
        raise ValueError("to be retried")

    with pytest.raises(JobCancelled):  # not the failure: the engine must not retry it
        await jobs.perform(Job(cancelled_then_fails), id=job_id, retry_if=lambda e: True)
    (*_, last) = await log(jobs, job_id)
    assert last[1:] == ("error", '{"type":"JobCancelled"}')
    info = await jobs.backend.info(job_id)
    assert info is not None
    assert info.state == "ended"
