"""Resumable jobs (Jobs with the in-memory backend) over a real socket.

The app is a few lines of plain ASGI served by hypercorn in a thread; it enters
``Jobs`` in its lifespan, as a real app must. Where it matters the test sets the
job's pace (a semaphore per step), and the passing of a grace period is proved
by a second, unwatched "clock" job being abandoned, not by sleeping.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest
from conftest import BOUND, Endless, serve
from httpx_sse import ServerSentEvent, connect_sse
from sse_spec import parse_stream

from asgi_sse import EventStream, Job, JobCancelled, Reporter
from asgi_sse.resumable import JobLost, Jobs, MemoryBackend, Retention

GRACE = 0.5
TERMINAL = ("completed", "error")

# -- jobs whose pace the test sets -------------------------------------------------------


class Stepper:
    """Reports step i only once the test has allowed it; counts its runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.permits = threading.Semaphore(0)
        self.calls = 0
        self.outcome: list[str] = []
        self.stopped = threading.Event()

    def allow(self, steps: int) -> None:
        self.permits.release(steps)

    def __call__(self, on_progress: Reporter) -> dict[str, int]:
        self.calls += 1
        try:
            for i in range(1, self.n + 1):
                if not self.permits.acquire(timeout=BOUND):
                    raise TimeoutError(f"the test never allowed step {i}")
                on_progress("step", {"i": i})
        except JobCancelled:
            self.outcome.append("cancelled")
            raise
        finally:
            self.stopped.set()
        return {"n": self.n}


def burst(n: int, on_progress: Reporter) -> dict[str, int]:
    """As fast as it can: a reconnect races it."""
    for i in range(1, n + 1):
        on_progress("step", {"i": i})
    return {"n": n}


# -- the app -------------------------------------------------------------------------------


async def serve_jobs(jobs: Jobs, receive: Any, send: Any) -> None:
    """The app's lifespan: the jobs run in its task group while it serves."""
    await receive()
    async with jobs:
        await send({"type": "lifespan.startup.complete"})
        await receive()
    await send({"type": "lifespan.shutdown.complete"})


def make_app(
    jobs: Jobs, registry: dict[str, Callable[[], Job[Any]]], retry: int | None = None
) -> Any:
    """POST /create; POST /jobs?job=<name>[&id=][&keep_running=1]; GET /jobs/<id>/events."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_jobs(jobs, receive, send)
            return
        parts = scope["path"].strip("/").split("/")
        query = parse_qs(scope["query_string"].decode())
        if scope["method"] == "POST" and parts == ["create"]:
            await answer(send, 201, {"id": await jobs.create()})
        elif scope["method"] == "POST" and parts == ["jobs"]:
            job = registry[query["job"][0]]()
            job_id = await jobs.start(
                job, id=query.get("id", [None])[0], keep_running="keep_running" in query
            )
            await answer(send, 201, {"id": job_id})
        elif scope["method"] == "GET" and len(parts) == 3 and parts[::2] == ["jobs", "events"]:
            await EventStream(jobs.watch(parts[1], retry=retry))(scope, receive, send)
        else:
            await answer(send, 404, {"type": "NotFound"})

    return app


async def answer(send: Any, status: int, body: dict[str, Any]) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@contextmanager
def running(
    jobs: Jobs, registry: dict[str, Callable[[], Job[Any]]], retry: int | None = None
) -> Iterator[tuple[str, httpx.Client]]:
    with (
        serve(make_app(jobs, registry, retry), wrap=False) as served,
        httpx.Client(base_url=served.url, timeout=BOUND) as client,
    ):
        yield served.url, client


def start(client: httpx.Client, job: str, **params: str) -> str:
    response = client.post("/jobs", params={"job": job, **params})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def watch(
    client: httpx.Client,
    job_id: str,
    *,
    last: str | None = None,
    query: str | None = None,
    count: int | None = None,
) -> list[ServerSentEvent]:
    """Events from ``job_id``'s stream: ``count`` of them, or up to the terminal one."""
    headers = {} if last is None else {"last-event-id": last}
    params = {} if query is None else {"last_event_id": query}
    got: list[ServerSentEvent] = []
    with connect_sse(
        client, "GET", f"/jobs/{job_id}/events", headers=headers, params=params
    ) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            if not sse.event and not sse.data:  # httpx-sse's dispatch after a comment
                continue
            got.append(sse)
            if sse.event in TERMINAL or (count is not None and len(got) == count):
                break
    return got


def ids(events: list[ServerSentEvent]) -> list[int]:
    return [int(e.id) for e in events if e.event != "gap"]


def details(events: list[ServerSentEvent]) -> list[int]:
    return [json.loads(e.data)["details"]["i"] for e in events if e.event == "progress"]


class Watcher(threading.Thread):
    """A client that stays connected, reading, until told to leave."""

    def __init__(self, client: httpx.Client, job_id: str, last: str | None = None) -> None:
        super().__init__(daemon=True)
        self.client, self.job_id, self.last = client, job_id, last
        self.events: list[ServerSentEvent] = []
        self.changed = threading.Condition()
        self.leave = threading.Event()
        self.failure: list[BaseException] = []

    def run(self) -> None:
        headers = {} if self.last is None else {"last-event-id": self.last}
        try:
            with connect_sse(
                self.client, "GET", f"/jobs/{self.job_id}/events", headers=headers
            ) as source:
                for sse in source.iter_sse():
                    if not sse.event and not sse.data:
                        continue
                    with self.changed:
                        self.events.append(sse)
                        self.changed.notify_all()
                    if self.leave.is_set() or sse.event in TERMINAL:
                        return
        except BaseException as exc:
            self.failure.append(exc)
        finally:
            with self.changed:
                self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: len(self.events) >= count or not self.is_alive(), BOUND
            )
        assert len(self.events) >= count, (self.failure, self.events)

    def stop(self) -> list[ServerSentEvent]:
        self.leave.set()
        self.join(BOUND)
        assert not self.is_alive()
        assert not self.failure, self.failure
        return self.events


def unwatched_grace_passes(client: httpx.Client) -> None:
    """Return once a fresh, never-watched job has been abandoned: a whole grace
    period has gone by since this was called."""
    clock = Endless(polls=True)
    _clocks.append(clock)
    start(client, f"clock{len(_clocks) - 1}")
    assert clock.stopped.wait(BOUND), "an unwatched job was not abandoned"
    assert clock.outcome == ["noticed"]


_clocks: list[Endless] = []


def clocks() -> dict[str, Callable[[], Job[Any]]]:
    class Registry(dict):  # type: ignore[type-arg]
        def __missing__(self, name: str) -> Callable[[], Job[Any]]:
            assert name.startswith("clock")
            return lambda: Job(_clocks[int(name[5:])])

    return Registry()


# -- resuming --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
def test_reconnect_resumes_after_the_last_event(how: str) -> None:
    stepper = Stepper(6)
    with running(Jobs(grace=60), {"s": lambda: Job(stepper)}) as (_, client):
        job_id = start(client, "s")
        stepper.allow(3)
        first = watch(client, job_id, count=3)
        assert ids(first) == [1, 2, 3]
        assert details(first) == [1, 2, 3]
        stepper.allow(3)
        if how == "header":
            rest = watch(client, job_id, last="3")
        else:
            rest = watch(client, job_id, query="3")
    assert ids(rest) == [4, 5, 6, 7]
    assert [e.event for e in rest] == ["progress"] * 3 + ["completed"]
    assert details(rest) == [4, 5, 6]
    assert json.loads(rest[-1].data) == {"n": 6}
    assert stepper.calls == 1


def test_header_and_query_must_agree() -> None:
    stepper = Stepper(2)
    with running(Jobs(grace=60), {"s": lambda: Job(stepper)}) as (_, client):
        job_id = start(client, "s")
        stepper.allow(2)
        assert ids(watch(client, job_id)) == [1, 2, 3]
        refused = client.get(
            f"/jobs/{job_id}/events",
            headers={"last-event-id": "1"},
            params={"last_event_id": "2"},
        )
        assert refused.status_code == 400
        assert refused.json()["type"] == "BadLastEventId"
        agreed = watch(client, job_id, last="1", query="1")
        assert ids(agreed) == [2, 3]


def test_reconnect_racing_a_fast_producer_misses_nothing() -> None:
    n = 400
    with running(Jobs(grace=60), {"b": lambda: Job(burst, n)}) as (_, client):
        for k in (1, 37, 250):
            job_id = start(client, "b")
            first = watch(client, job_id, count=k)
            rest = watch(client, job_id, last=first[-1].id)
            assert ids(first) + ids(rest) == list(range(1, n + 2)), k
            assert details(first + rest) == list(range(1, n + 1))
            assert [e.event for e in first + rest].count("completed") == 1


def test_terminal_delivered_then_reconnect_gets_204() -> None:
    stepper = Stepper(2)
    with running(Jobs(grace=60), {"s": lambda: Job(stepper)}) as (_, client):
        job_id = start(client, "s")
        stepper.allow(1)
        assert ids(watch(client, job_id, count=1)) == [1]
        # Before the end, a reconnect at the newest id continues.
        stepper.allow(1)
        assert ids(watch(client, job_id, last="1")) == [2, 3]
        done = client.get(f"/jobs/{job_id}/events", headers={"last-event-id": "3"})
        assert done.status_code == 204
        assert done.content == b""
        done = client.get(f"/jobs/{job_id}/events", params={"last_event_id": "3"})
        assert done.status_code == 204
        assert [e.event for e in watch(client, job_id, last="2")] == ["completed"]


def test_every_watcher_gets_every_event_and_the_job_runs_once() -> None:
    stepper = Stepper(5)
    with running(Jobs(grace=60), {"s": lambda: Job(stepper)}) as (_, client):
        job_id = start(client, "s")
        watchers = [Watcher(client, job_id) for _ in range(3)]
        for w in watchers:
            w.start()
        stepper.allow(1)
        for w in watchers:  # all three are connected and live
            w.wait_for(1)
        stepper.allow(4)
        for w in watchers:
            w.join(BOUND)
            assert not w.is_alive()
            assert not w.failure
            assert ids(w.events) == [1, 2, 3, 4, 5, 6]
            assert details(w.events) == [1, 2, 3, 4, 5]
            assert w.events[-1].event == "completed"
    assert stepper.calls == 1


@pytest.mark.parametrize(
    ("retention", "next_id"),
    [
        (Retention(max_events=3), 9),  # 9, 10 and the terminal 11 are kept
        (Retention(max_bytes=1), 11),  # every event is too big: the newest is kept all the same
    ],
)
def test_expired_history_is_reported_as_a_gap(retention: Retention, next_id: int) -> None:
    with running(Jobs(grace=60, retention=retention), {"b": lambda: Job(burst, 10)}) as (
        _,
        client,
    ):
        job_id = start(client, "b")
        assert watch(client, job_id)[-1].event == "completed"  # the job has ended
        got = watch(client, job_id, last="2")
    assert got[0].event == "gap"
    assert json.loads(got[0].data) == {
        "type": "HistoryGone",
        "last_event_id": 2,
        "next_id": next_id,
    }
    assert not got[0].id  # a gap carries no id: the cursor moves with the next event
    assert ids(got) == list(range(next_id, 12))
    assert details(got) == list(range(next_id, 11))
    assert got[-1].event == "completed"
    assert json.loads(got[-1].data) == {"n": 10}


# -- grace -----------------------------------------------------------------------------


def test_job_is_abandoned_once_its_last_watcher_leaves() -> None:
    endless = Endless()
    with running(Jobs(grace=GRACE), {"e": lambda: Job(endless)}) as (_, client):
        job_id = start(client, "e")
        first = watch(client, job_id, count=2)
        assert ids(first) == [1, 2]
        assert endless.stopped.wait(BOUND), "the unwatched job was never cancelled"
        assert endless.outcome == ["cancelled"]
        assert endless.flag_when_cancelled is True
        rest = watch(client, job_id, last="2")
    assert ids(rest) == list(range(3, 3 + len(rest)))
    assert rest[-1].event == "error"
    assert json.loads(rest[-1].data) == {"type": "JobAbandoned"}
    assert all(e.event == "progress" for e in rest[:-1])


def test_watched_job_is_kept_and_a_reconnect_within_the_grace_keeps_it() -> None:
    endless = Endless()
    registry = clocks()
    registry["e"] = lambda: Job(endless)
    # A longer grace here: the reconnect below must land within it.
    with running(Jobs(grace=2 * GRACE), registry) as (_, client):
        # Watched from before it starts, so it is never unwatched.
        job_id = str(client.post("/create").json()["id"])
        watcher = Watcher(client, job_id)
        watcher.start()
        start(client, "e", id=job_id)
        watcher.wait_for(1)
        unwatched_grace_passes(client)
        unwatched_grace_passes(client)
        assert not endless.stopped.is_set(), endless.outcome
        first = watcher.stop()
        again = Watcher(client, job_id, last=first[-1].id)  # at once: within the grace
        again.start()
        again.wait_for(1)
        unwatched_grace_passes(client)
        unwatched_grace_passes(client)
        assert not endless.stopped.is_set(), endless.outcome
        again.wait_for(len(again.events) + 1)  # still producing
        second = again.stop()
        assert endless.stopped.wait(BOUND), "unwatched at last, it was never cancelled"
        assert endless.outcome == ["cancelled"]
    both = ids(first) + ids(second)
    assert both == list(range(1, len(both) + 1))
    assert all(e.event == "progress" for e in first + second)


def test_keep_running_job_is_never_abandoned() -> None:
    endless = Endless()
    registry = clocks()
    registry["e"] = lambda: Job(endless)
    with running(Jobs(grace=GRACE), registry) as (_, client):
        job_id = start(client, "e", keep_running="1")
        unwatched_grace_passes(client)
        unwatched_grace_passes(client)
        assert not endless.stopped.is_set(), endless.outcome
        got = watch(client, job_id, count=3)
        assert [e.event for e in got] == ["progress"] * 3
    # The server's shutdown told it to stop.
    assert endless.stopped.wait(BOUND)
    assert endless.outcome == ["cancelled"]


# -- hostile requests ------------------------------------------------------------------

HOSTILE = ["-1", "abc", "01", "9" * 400, "99999999999999999999", "+1", "1.0", "1e3", "3"]


def test_hostile_last_event_ids_are_refused_and_the_server_goes_on() -> None:
    stepper = Stepper(4)
    with running(Jobs(grace=60), {"s": lambda: Job(stepper)}) as (_, client):
        job_id = start(client, "s")
        stepper.allow(2)
        assert ids(watch(client, job_id, count=2)) == [1, 2]  # "3" is past its last event
        url = f"/jobs/{job_id}/events"
        refusals = [client.get(url, headers={"last-event-id": v}) for v in HOSTILE]
        refusals += [client.get(url, params={"last_event_id": v}) for v in HOSTILE]
        refusals += [
            client.get(url, params={"last_event_id": v})
            for v in ["1 ", " 1", "é", "\uff11", "\x00"]
        ]
        refusals.append(client.get(url, headers=[(b"last-event-id", "é".encode())]))
        refusals.append(client.get(url, headers=[("last-event-id", "1"), ("last-event-id", "1")]))
        for response in refusals:
            assert response.status_code == 400, (response.request.headers, response.request.url)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["type"] == "BadLastEventId"
        stepper.allow(2)
        assert ids(watch(client, job_id, last="2")) == [3, 4, 5]


@pytest.mark.parametrize(
    "job_id", ["nope", "a%20b", "x" * 129, "%C3%A9", "a%00b", "%7Bx%7D", "%2E", "%2E%2E"]
)
def test_unknown_or_illegal_job_ids_are_404(job_id: str) -> None:
    with running(Jobs(grace=60), {}) as (_, client):
        for headers in ({}, {"last-event-id": "1"}):
            response = client.get(f"/jobs/{job_id}/events", headers=headers)
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/json"
            assert response.json()["type"] == "JobNotFound"
        assert client.post("/create").status_code == 201  # and it still serves


def test_retry_is_sent_first() -> None:
    stepper = Stepper(1)
    with running(Jobs(grace=60), {"s": lambda: Job(stepper)}, retry=1234) as (_, client):
        job_id = start(client, "s")
        stepper.allow(1)
        with client.stream("GET", f"/jobs/{job_id}/events") as response:
            body = response.read()
    assert body.startswith(b"retry: 1234\n\n")
    assert [(e["event"], e["id"]) for e in parse_stream(body)] == [
        ("progress", "1"),
        ("completed", "2"),
    ]


# -- shutdown --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_shutdown_ends_a_running_job_with_server_shutdown() -> None:
    endless = Endless()
    jobs = Jobs(grace=60)
    with anyio.fail_after(BOUND):
        async with jobs:
            job_id = await jobs.start(Job(endless))
            page = await jobs.backend.read(job_id, 0)
            assert page.events
            assert page.end_id is None
        assert endless.stopped.is_set()
        assert endless.outcome == ["cancelled"]
        log: list[tuple[int, bytes]] = []
        after, end_id = 0, None
        while end_id is None or after < end_id:
            page = await jobs.backend.read(job_id, after)
            log.extend(page.events)
            after = log[-1][0] if log else 0
            end_id = page.end_id
    assert [n for n, _ in log] == list(range(1, end_id + 1))
    events = parse_stream(b"".join(frame for _, frame in log))
    assert [e["event"] for e in events[:-1]] == ["progress"] * (end_id - 1)
    assert events[-1]["event"] == "error"
    assert events[-1]["id"] == str(end_id)
    assert json.loads(events[-1]["data"]) == {"type": "ServerShutdown"}


class BrokenLog(MemoryBackend):
    """A real in-memory backend whose log refuses one job's appends with an
    error that is not an outage (a bug, a full disk): the fault to contain."""

    def __init__(self, broken: str) -> None:
        super().__init__()
        self.broken = broken

    async def append(self, job_id: str, events: Any, first: int) -> None:
        if job_id == self.broken:
            raise RuntimeError("the log refuses this append")
        await super().append(job_id, events, first)


async def read_to_end(jobs: Jobs, job_id: str) -> int:
    """Follow a job's log by cursor, as a watcher does; return its terminal id."""
    after, end_id = 0, None
    while end_id is None or after < end_id:
        page = await jobs.backend.read(job_id, after)
        after = page.events[-1][0] if page.events else after
        end_id = page.end_id
    return end_id


@pytest.mark.anyio
async def test_a_job_whose_log_fails_is_stopped_and_lost_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken_job, good_job, later_job = Endless(), Stepper(3), Stepper(1)
    jobs = Jobs(BrokenLog("bad"), grace=60)
    with anyio.fail_after(BOUND):
        async with jobs:
            await jobs.start(Job(broken_job), id="bad")
            await jobs.start(Job(good_job), id="good")
            good_job.allow(3)
            assert await read_to_end(jobs, "good") == 4
            with pytest.raises(JobLost):  # its watchers are told, not left waiting
                await jobs.backend.read("bad", 0)
            info = await jobs.backend.info("bad")
            assert info is not None
            assert info.state == "lost"
            await jobs.start(Job(later_job), id="later")  # Jobs itself still runs
            later_job.allow(1)
            assert await read_to_end(jobs, "later") == 2
        assert broken_job.stopped.is_set()  # its thread was told to stop
        assert broken_job.outcome == ["cancelled"]
    assert "job bad could not be published" in caplog.text


class Stuck:
    """Reports once, then blocks (a long computation) until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.outcome: list[str] = []

    def __call__(self, on_progress: Reporter) -> None:
        on_progress("started", {})
        if not self.release.wait(BOUND):
            raise TimeoutError("the test never released the job")
        try:
            on_progress("late", {})
        except JobCancelled:
            self.outcome.append("cancelled")
            raise


def test_an_abandoned_jobs_end_is_recorded_before_its_thread_stops() -> None:
    """A reconnect must not wait on a computation that nobody will read: the
    log ends (and its terminal id gets 204) while the thread is still busy."""
    stuck = Stuck()
    registry = clocks()
    registry["stuck"] = lambda: Job(stuck)
    with running(Jobs(grace=GRACE), registry) as (_, client):
        job_id = start(client, "stuck")
        events = watch(client, job_id, count=1)  # then leave: nobody watches
        assert [e.event for e in events] == ["progress"]
        unwatched_grace_passes(client)  # a reconnect would watch it: wait without one
        rest = watch(client, job_id, last="1")
        assert [(e.event, e.id, json.loads(e.data)) for e in rest] == [
            ("error", "2", {"type": "JobAbandoned"})
        ]
        assert not stuck.release.is_set()  # the thread is still inside its computation
        assert (
            client.get(f"/jobs/{job_id}/events", headers={"last-event-id": "2"}).status_code == 204
        )
        stuck.release.set()
    assert stuck.outcome == ["cancelled"]  # at its next report, it was told


def test_one_event_stream_of_a_watch_serves_each_request_from_its_own_place() -> None:
    """An EventStream may be mounted as an app and serve many requests at once:
    each resumes from its own Last-Event-ID."""
    gate = Stepper(4)
    jobs = Jobs(grace=60)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_jobs(jobs, receive, send)
            return
        if scope["method"] == "POST":
            await answer(send, 201, {"id": await jobs.start(Job(gate), id="shared")})
        else:
            await mounted(scope, receive, send)

    mounted = EventStream(jobs.watch("shared"))  # one instance, every request
    with (
        serve(app, wrap=False) as served,
        httpx.Client(base_url=served.url, timeout=BOUND) as client,
    ):
        assert client.post("/").status_code == 201
        gate.allow(2)
        assert ids(watch(client, "shared", count=2)) == [1, 2]
        late, early = Watcher(client, "shared", last="2"), Watcher(client, "shared", last="0")
        late.start()
        early.start()
        late.wait_for(0)
        early.wait_for(2)  # replayed while the job waits: both are connected
        gate.allow(2)
        late.join(BOUND)
        early.join(BOUND)
    assert ids(late.events) == [3, 4, 5]
    assert ids(early.events) == [1, 2, 3, 4, 5]
