"""Resumable jobs on the job engines users run: real ``rq worker`` and ``celery
worker`` processes (prefork and threads pools) run them, a real hypercorn serves
their watchers (``engines_app``), a real redis-server holds queues and logs.

Each test waits on what it checks (an event in the stream, a worker's log line,
the engine's own record of the end, a note the job wrote), never on time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import pytest
from celery import Celery
from processes import BOUND, Running, launch, worker
from redis import Redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ConstantBackoff
from redis.retry import Retry as SyncRetry
from redis_server import RedisServer, start_redis
from rq.job import Job as RQJob
from rq.job import JobStatus
from rq.results import Result
from sse_spec import parse_stream

from asgi_sse.resumable import BackendUnavailable, Retention
from asgi_sse.resumable._engine import Settings

TERMINAL = ("completed", "error")


@dataclass
class Engine:
    """One job engine, as the tests drive it: its workers and its record of a job's end."""

    name: str  # rq, celery-prefork, celery-threads
    url: str

    @property
    def kind(self) -> str:
        return self.name.split("-")[0]

    def worker(self, queue: str, *options: str) -> AbstractContextManager[Running]:
        env = {"ENGINE_TEST_REDIS": self.url}
        if self.kind == "rq":
            # rq 3.0 with redis-py 8.2 can hang in its last step for a minute: the
            # UNSUBSCRIBE reply may wake its command thread before the flag that stops
            # it is cleared, and PubSubWorkerThread.stop() now waits for the thread.
            argv = ("rq", "worker", "-u", self.url, *options, queue)
            return worker(self.name, *argv, env=env, last_step=RQ_LAST_STEP)
        pool = self.name.split("-")[1]
        argv = ["celery", "-A", "celery_tasks", "worker", "-Q", queue, "--pool", pool]
        argv += ["-c", "2", "-l", "info", "-n", f"{queue}@%h"]
        argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
        return worker(self.name, *argv, env=env)

    @contextmanager
    def started(self, queue: str) -> Iterator[Running]:
        with self.worker(queue) as running:
            running.wait_for_line("Listening on" if self.kind == "rq" else " ready.")
            yield running

    def outcome(self, job_id: str) -> tuple[str, Any]:
        """The engine's own record of the job's end, waited for (the log ends first):
        ("SUCCESS", its result), ("FAILURE", the error's text) or ("REVOKED", None)."""
        if self.kind == "rq":
            connection = Redis.from_url(self.url)
            job = RQJob.fetch(job_id, connection=connection)
            result = job.latest_result(timeout=int(BOUND))
            assert result is not None, f"RQ recorded no end of job {job_id}"
            if result.type == Result.Type.SUCCESSFUL:
                return "SUCCESS", result.return_value
            # Failed for good: not to be retried, nor stopped (a retry's result is RETRIED).
            assert (result.type, job.get_status()) == (Result.Type.FAILED, JobStatus.FAILED)
            return "FAILURE", result.exc_string
        outcome = Celery(backend=self.url).AsyncResult(job_id)
        value = outcome.get(timeout=BOUND, propagate=False)
        if outcome.state == "REVOKED":
            return "REVOKED", None
        return outcome.state, value if outcome.state == "SUCCESS" else repr(value)


ENGINES = ["rq", "celery-prefork", "celery-threads"]
CELERY = ["celery-prefork", "celery-threads"]
#: Where a job's process can be killed apart from its worker: the threads pool runs
#: jobs in the worker's own process.
KILLABLE = ["rq", "celery-prefork"]
RQ_LAST_STEP = "unsubscribing from channel"  # rq's Worker.unsubscribe, its teardown's last


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server: RedisServer = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, redis_url: str) -> Engine:
    """Module-scoped, so that each engine's web process and worker serve all its tests."""
    return Engine(request.param, redis_url)


@pytest.fixture(scope="module")
def web(engine: Engine) -> Iterator[httpx.Client]:
    env = {"ENGINE_TEST_REDIS": engine.url, "ENGINE": engine.kind}
    with (
        launch("hypercorn-asyncio", "engines_app:app", env=env) as running,
        httpx.Client(base_url=running.url, timeout=BOUND) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def default_worker(engine: Engine) -> Iterator[Running]:
    with engine.started("default") as running:
        yield running


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def tag() -> str:
    return uuid.uuid4().hex


def enqueue(web: httpx.Client, **query: Any) -> str:
    response = web.post("/jobs", params=query)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def watch(
    web: httpx.Client, job_id: str, *, stop: str | None = None, **query: Any
) -> list[dict[str, str]]:
    """The job's events, read until its terminal event (or the first ``stop`` event)."""
    seen = b""
    with web.stream("GET", f"/jobs/{job_id}/events", params=query) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            seen += chunk
            events = parse_stream(seen)
            if events and events[-1]["event"] in (stop, *TERMINAL):
                return events
    raise AssertionError(f"the stream ended before its end: {seen!r}")


def data(event: dict[str, str]) -> Any:
    return json.loads(event["data"])


def ids(events: list[dict[str, str]]) -> list[int]:
    return [int(e["id"]) for e in events]


def notes(redis: Redis, job_tag: str) -> list[bytes]:
    return list(redis.lrange(f"notes:{job_tag}", 0, -1))


def without_queued(events: list[dict[str, str]]) -> list[dict[str, str]]:
    """A worker may start the job before the web side says where it waits: both are right."""
    return [e for e in events if e["event"] != "queued"]


def delivered(engine: Engine, queue: str, job_ids: list[str]) -> None:
    """Start a worker on ``queue`` and return once it has dealt with every job there
    (RQ: a burst worker, which exits when the queue is empty; Celery: a worker's
    log line for each task it refused to run)."""
    if engine.kind == "rq":
        with engine.worker(queue, "--burst") as burst:
            burst.wait_for_line("done, quitting")  # the queue is empty: it dealt with each
            with suppress(subprocess.TimeoutExpired):  # hung in its last step: killed below
                burst.process.wait(BOUND)
        return
    with engine.started(queue) as running:
        for job_id in job_ids:
            running.wait_for_line(f"[{job_id}] ignored")


def test_a_job_streams_its_reports_and_its_result_from_a_real_worker(
    web: httpx.Client, engine: Engine, default_worker: Running
) -> None:
    job_id = enqueue(web, task="steps", tag=tag(), n=5)
    events = watch(web, job_id)
    assert ids(events) == list(range(1, len(events) + 1))
    work = without_queued(events)
    assert [data(e)["details"]["i"] for e in work[:-1]] == [1, 2, 3, 4, 5]
    assert work[-1]["event"] == "completed"
    result = data(work[-1])
    assert result["steps"] == 5
    assert engine.outcome(job_id) == ("SUCCESS", result)  # the engine's own result backend
    # Resumed from the middle, on another connection: the rest, once.
    assert watch(web, job_id, last_event_id=events[2]["id"]) == events[3:]


def test_a_job_waiting_in_the_queue_says_where_and_a_cancelled_one_never_runs(
    web: httpx.Client, engine: Engine, redis: Redis
) -> None:
    queue, tags = f"idle-{tag()}", [tag(), tag()]
    job_ids = [enqueue(web, task="steps", tag=t, n=3, queue=queue) for t in tags]
    for position, job_id in enumerate(job_ids, start=1):
        (queued,) = watch(web, job_id, stop="queued", queue=queue)
        assert (queued["event"], queued["id"]) == ("queued", "1")
        assert data(queued) == {"position": position}
    for job_id in job_ids:
        cancelled = web.post(f"/jobs/{job_id}/cancel", params={"queue": queue})
        assert cancelled.json() == {"cancelled": True}
    delivered(engine, queue, job_ids)  # Celery delivers a revoked task to a new worker
    for job_tag, job_id in zip(tags, job_ids, strict=True):
        events = watch(web, job_id, queue=queue)
        assert [(e["event"], e["id"]) for e in events] == [("queued", "1"), ("error", "2")]
        assert data(events[-1]) == {"type": "JobCancelled"}
        assert notes(redis, job_tag) == []
    again = web.post(f"/jobs/{job_ids[0]}/cancel", params={"queue": queue})
    assert again.json() == {"cancelled": False}


def test_a_queued_job_nobody_watched_for_its_grace_never_runs(
    web: httpx.Client, engine: Engine, redis: Redis
) -> None:
    queue, job_tag = f"idle-{tag()}", tag()
    job_id = enqueue(web, task="steps", tag=job_tag, n=3, queue=queue, grace=0)
    delivered(engine, queue, [job_id])  # delivered, though nobody watches
    events = watch(web, job_id, queue=queue, grace=0)
    assert [e["event"] for e in without_queued(events)] == ["error"]
    assert data(events[-1]) == {"type": "JobAbandoned"}
    assert notes(redis, job_tag) == []


@pytest.mark.parametrize(
    ("task", "seen"), [("until_cancelled", b"cancelled"), ("polls", b"saw cancelled")]
)
@pytest.mark.usefixtures("default_worker")
def test_a_running_job_is_cancelled_at_its_next_report_and_not_retried(
    web: httpx.Client, engine: Engine, redis: Redis, task: str, seen: bytes
) -> None:
    job_tag = tag()
    job_id = enqueue(web, task=task, tag=job_tag, retry=2)
    watch(web, job_id, stop="progress")  # it runs
    assert web.post(f"/jobs/{job_id}/cancel").json() == {"cancelled": True}
    events = watch(web, job_id)
    assert events[-1]["event"] == "error"
    assert data(events[-1]) == {"type": "JobCancelled"}
    assert ids(events) == list(range(1, len(events) + 1))
    state, _ = engine.outcome(job_id)
    assert state == ("FAILURE" if engine.kind == "rq" else "REVOKED")
    assert notes(redis, job_tag) == [b"ran", seen]  # ran once: not retried


@pytest.mark.parametrize("engine", CELERY, indirect=True)
@pytest.mark.usefixtures("default_worker")
def test_a_cancelled_job_is_not_retried_even_by_autoretry_for_anything(
    web: httpx.Client, engine: Engine, redis: Redis
) -> None:
    job_tag = tag()
    job_id = enqueue(web, task="until_cancelled_retried", tag=job_tag)
    watch(web, job_id, stop="progress")
    assert web.post(f"/jobs/{job_id}/cancel").json() == {"cancelled": True}
    events = watch(web, job_id)
    assert [e["event"] for e in events if e["event"] == "retrying"] == []
    assert data(events[-1]) == {"type": "JobCancelled"}
    assert engine.outcome(job_id) == ("REVOKED", None)
    assert notes(redis, job_tag) == [b"ran", b"cancelled"]  # ran once


@pytest.mark.parametrize("engine", CELERY, indirect=True)
def test_a_retry_limit_in_retry_kwargs_is_the_one_the_log_follows(
    web: httpx.Client, engine: Engine, default_worker: Running
) -> None:
    job_id = enqueue(web, task="fails_retried", tag=tag())
    events = without_queued(watch(web, job_id))
    assert [(e["event"], data(e).get("type")) for e in events] == [
        ("progress", None),
        ("retrying", "ValueError"),
        ("progress", None),
        ("error", "ValueError"),  # retried once, as Celery does: then it ends
    ]
    state, error = engine.outcome(job_id)
    assert state == "FAILURE"
    assert "ValueError" in error


def forgotten(redis: Redis, job_id: str, part: str = "meta") -> None:
    """Return once Redis has expired the job's record (or its publisher's lease,
    ``part="alive"``): a keyevent notification."""
    key = f"asgi-sse:{{{job_id}}}:{part}".encode()
    redis.config_set("notify-keyspace-events", "Ex")
    with redis.pubsub() as expiries:
        expiries.subscribe("__keyevent@0__:expired")  # before the first look
        while redis.exists(key):
            message = expiries.get_message(timeout=BOUND)
            assert message is not None, f"job {job_id}'s {part} never expired"
            if message["data"] == key:
                return


def test_a_job_forgotten_while_it_waited_is_refused_and_recorded_lost(
    web: httpx.Client, engine: Engine, redis: Redis
) -> None:
    queue, job_tag = f"idle-{tag()}", tag()
    job_id = enqueue(web, task="steps", tag=job_tag, n=3, queue=queue, max_age=0.5)
    forgotten(redis, job_id)  # unwatched in the queue for its max_age
    with engine.started(queue):
        state, error = engine.outcome(job_id)
    assert state == "FAILURE"  # not stuck as pending or started: the engine is told
    assert "JobLost" in error
    assert notes(redis, job_tag) == []


def test_a_job_that_raises_ends_with_its_type_only(
    web: httpx.Client, engine: Engine, default_worker: Running
) -> None:
    job_id = enqueue(web, task="fails", tag=tag())
    events = without_queued(watch(web, job_id))
    assert [e["event"] for e in events] == ["progress", "error"]
    assert data(events[-1]) == {"type": "ValueError"}
    state, error = engine.outcome(job_id)
    assert state == "FAILURE"
    assert "a secret the client must not see" in error  # the engine keeps what the client must not


def test_a_retried_job_says_so_and_its_ids_go_on(
    web: httpx.Client, engine: Engine, default_worker: Running
) -> None:
    job_id = enqueue(web, task="flaky", tag=tag(), retry=1)
    events = watch(web, job_id)
    assert ids(events) == list(range(1, len(events) + 1))
    assert [(e["event"], data(e)) for e in without_queued(events)] == [
        ("progress", {"step": "attempt", "details": {"n": 1}}),
        ("retrying", {"type": "ValueError", "attempt": 1}),
        ("progress", {"step": "attempt", "details": {"n": 2}}),
        ("completed", {"attempts": 2}),
    ]
    assert engine.outcome(job_id) == ("SUCCESS", {"attempts": 2})


def kill_when_started(web: httpx.Client, job_id: str, **query: Any) -> int:
    """SIGKILL the process that runs the job, once it has reported its pid."""
    (*_, started) = watch(web, job_id, stop="progress", **query)
    pid = int(data(started)["details"]["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize("engine", KILLABLE, indirect=True)
def test_a_worker_killed_mid_job_is_lost_to_its_watchers(
    web: httpx.Client, engine: Engine, default_worker: Running
) -> None:
    job_id = enqueue(web, task="hangs", tag=tag(), lease=0.5)
    kill_when_started(web, job_id, lease=0.5)
    events = without_queued(watch(web, job_id, lease=0.5))
    assert [e["event"] for e in events] == ["progress", "error"]
    assert data(events[-1]) == {"type": "JobLost"}


@pytest.mark.parametrize("engine", CELERY, indirect=True)
def test_a_job_cancelled_while_its_worker_was_dead_is_revoked_when_delivered_late(
    web: httpx.Client, engine: Engine, redis: Redis
) -> None:
    queue, job_tag = f"dies-{tag()}", tag()
    job_id = enqueue(web, task="hangs", tag=job_tag, queue=queue, lease=0.5)
    with engine.started(queue) as running:
        watch(web, job_id, stop="progress", lease=0.5)
        running.signal(signal.SIGKILL, group=True)  # the whole machine, say: Celery records nothing
        running.process.wait(BOUND)
    forgotten(redis, job_id, "alive")  # its publisher's lease ran out
    assert web.post(f"/jobs/{job_id}/cancel").json() == {"cancelled": True}  # ended at once
    # Its broker delivers it again (acks_late, past its visibility timeout), as the
    # web side first sent it: with its log's settings.
    settings = Settings("asgi-sse:", 0.5, 0.5, asdict(Retention()), 10.0, False).to_dict()
    kwargs = {"_asgi_sse": {"job_id": job_id, "settings": settings}}
    sender = Celery(broker=engine.url)
    sender.send_task("engine_tasks.hangs", [job_tag], kwargs, task_id=job_id, queue=queue)
    with engine.started(queue) as running:
        running.wait_for_line(f"[{job_id}] ignored")
        assert engine.outcome(job_id) == ("REVOKED", None)  # not left pending for good
    assert redis.get(f"attempts:{job_tag}") == b"1"  # and it never ran again


@pytest.mark.parametrize("engine", KILLABLE, indirect=True)
def test_a_job_delivered_again_after_its_worker_died_goes_on(
    web: httpx.Client, engine: Engine, default_worker: Running
) -> None:
    job_id = enqueue(web, task="hangs", tag=tag(), retry=1)
    pid = kill_when_started(web, job_id)
    events = watch(web, job_id)
    assert ids(events) == list(range(1, len(events) + 1))
    work = [(e["event"], data(e)) for e in without_queued(events)]
    assert work[:2] == [
        ("progress", {"step": "attempt", "details": {"n": 1, "pid": pid}}),
        ("retrying", {"type": "WorkerLost", "attempt": 1}),
    ]
    assert work[2][1]["details"]["n"] == 2
    assert work[3:] == [("completed", {"attempts": 2})]


def test_bad_input_is_refused_before_anything_is_queued(web: httpx.Client) -> None:
    query = {"task": "steps", "tag": "t", "arg": "unserializable"}  # as its n
    unserializable = web.post("/jobs", params=query)
    assert unserializable.status_code == 422
    assert "cannot send this job" in unserializable.json()["detail"]
    missing_an_argument = web.post("/jobs", params={"task": "steps", "tag": "t"})  # no n
    assert missing_an_argument.status_code == 422  # checked against the function, on every engine
    assert "cannot call steps" in missing_an_argument.json()["detail"]
    not_a_progress_job = web.post("/jobs", params={"task": "no_progress", "tag": "t"})
    assert not_a_progress_job.status_code == 422
    assert "progress" in not_a_progress_job.json()["detail"]
    assert web.get("/jobs/no-such-job/events").status_code == 404
    assert web.post("/jobs/no-such-job/cancel").status_code == 404


@contextmanager
def port_nobody_listens_on() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield sock.getsockname()[1]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("kind", ["rq", "celery"])
async def test_redis_unreachable_at_enqueue_is_a_clear_error(kind: str) -> None:
    import engine_tasks  # noqa: PLC0415

    with port_nobody_listens_on() as port:
        url = f"redis://127.0.0.1:{port}/0"
        jobs: Any
        if kind == "rq":
            from rq import Queue  # noqa: PLC0415

            from asgi_sse.resumable.rq import RQJobs  # noqa: PLC0415

            jobs, task = (
                RQJobs(Queue(connection=Redis.from_url(url)), lease=0.2),
                engine_tasks.steps,
            )
        else:
            from asgi_sse.resumable.celery import CeleryJobs, progress_task  # noqa: PLC0415

            app = Celery("unreachable", broker=url)
            task = progress_task(app, name="unreachable.steps")(engine_tasks.steps)
            jobs = CeleryJobs(app, lease=0.2)
        with pytest.raises(BackendUnavailable):
            await jobs.enqueue(task, "t", 1)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_celery_broker_unreachable_at_enqueue_is_a_clear_error(
    redis_url: str, redis: Redis
) -> None:
    """The log's Redis answers, the broker does not: 503, and the record it made ends."""
    import engine_tasks  # noqa: PLC0415

    from asgi_sse.resumable.celery import CeleryJobs, progress_task  # noqa: PLC0415

    with port_nobody_listens_on() as port:
        app = Celery("no-broker", broker=f"redis://127.0.0.1:{port}/0")
        app.conf.asgi_sse_redis_url = redis_url
        app.conf.broker_transport_options = {"max_retries": 1}  # kombu's retries, soon over
        task = progress_task(app, name="no_broker.steps")(engine_tasks.steps)
        prefix = f"no-broker-{tag()}:"
        jobs = CeleryJobs(app, prefix=prefix)
        try:
            with pytest.raises(BackendUnavailable, match="broker"):
                await jobs.enqueue(task, "t", 1)
        finally:
            await jobs.backend.client.aclose()
    (record,) = redis.keys(f"{prefix}*:meta")  # made before the broker was asked
    assert redis.hget(record, "state") == b"ended"  # and ended: nobody waits for it
    for key in redis.keys(f"{prefix}*"):
        assert redis.pttl(key) > 0, key  # and forgotten in time, log and all


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_rq_jobs_keep_their_logs_where_the_queue_is_even_over_a_unix_socket(
    redis_server: RedisServer, redis: Redis
) -> None:
    from rq import Queue  # noqa: PLC0415

    from asgi_sse.resumable.rq import RQJobs  # noqa: PLC0415

    prefix = f"unix-{tag()}:"
    jobs = RQJobs(Queue(connection=Redis.from_url(redis_server.unix_url)), prefix=prefix)
    try:
        job_id = await jobs.create()
    finally:
        await jobs.backend.client.aclose()
    assert redis.hget(f"{prefix}{{{job_id}}}:meta", "state") == b"pending"  # the same server
    # And TLS stays TLS (the class that speaks it; there is no TLS server here to reach).
    tls = RQJobs(Queue(connection=Redis.from_url("rediss://127.0.0.1:1/0?ssl_cert_reqs=none")))
    pool = tls.backend.client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    # A sync client's retry policy carries over as the asyncio kind (redis-py 8.2 warns
    # when handed the sync one, and older versions cannot await it).
    policy = SyncRetry(ConstantBackoff(0.25), 7, (OSError,))
    twin = RQJobs(Queue(connection=Redis(port=redis_server.port, retry=policy)))
    retry = twin.backend.client.connection_pool.connection_kwargs["retry"]
    assert isinstance(retry, AsyncRetry)
    assert (retry.get_retries(), retry._supported_errors) == (7, (OSError,))
    assert retry._backoff.compute(1) == 0.25
