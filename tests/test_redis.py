"""Resumable jobs shared through a real Redis by several real server processes.

Every server is ``hypercorn examples.resumable:app`` in its own process, with
``ASGI_SSE_REDIS_URL`` pointing at a redis-server started for the test, so a
client that reconnects to another process (as behind a load balancer) resumes
where it left off; a worker process (``examples/resumable_worker.py``) may run
the job instead. The faults are real too: a TCP cut between browser and
servers, Redis stopped and started again mid-stream.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from chromium import WAIT_MS, launch, open_page
from conftest import BOUND, Endless, parse
from processes import stopped_at_exit
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis_server import RedisServer, redis_server
from tcp_proxy import TcpProxy

from asgi_sse import Job
from asgi_sse.resumable import JobLost, Jobs
from asgi_sse.resumable.redis import RedisBackend

__all__ = ["redis_server"]  # the fixture, used by name

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PREFIX = "asgi-sse:"  # RedisBackend's default key prefix, which the example keeps

Event = dict[str, str]


# -- the processes -------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    port: int
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _env(redis: RedisServer, settings: dict[str, Any]) -> dict[str, str]:
    return (
        dict(os.environ)
        | {"PYTHONPATH": str(ROOT), "ASGI_SSE_REDIS_URL": redis.url}
        | {key: str(value) for key, value in settings.items()}
    )


@contextmanager
def hypercorn(tmp: Path, name: str, redis: RedisServer, **settings: Any) -> Iterator[Process]:
    """``hypercorn examples.resumable:app`` in its own process, on a socket bound
    here so clients may connect at once (they wait in the backlog)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    stderr = tmp / f"{name}.stderr"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "hypercorn", "examples.resumable:app"),
                *("--workers", "1", "--bind", f"fd://{sock.fileno()}", "--graceful-timeout", "1"),
            ],
            cwd=ROOT,
            env=_env(redis, settings),
            pass_fds=[sock.fileno()],
            stderr=err,
            start_new_session=True,
        )
    port = int(sock.getsockname()[1])
    sock.close()
    with stopped_at_exit(process, stderr):
        yield Process(name, port, stderr)


def _start_worker(
    tmp: Path, redis: RedisServer, settings: dict[str, Any]
) -> subprocess.Popen[bytes]:
    """``python -m examples.resumable_worker`` in its own process group; its stdout
    and stderr go to ``worker.stdout`` and ``worker.stderr`` in ``tmp``."""
    with (tmp / "worker.stdout").open("w") as out, (tmp / "worker.stderr").open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "examples.resumable_worker"],
            cwd=ROOT,
            env=_env(redis, settings),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


@contextmanager
def worker(tmp: Path, redis: RedisServer, **settings: Any) -> Iterator[Path]:
    """The worker, stopped and checked at the end; yields the file its stdout goes to."""
    with stopped_at_exit(_start_worker(tmp, redis, settings), tmp / "worker.stderr"):
        yield tmp / "worker.stdout"


@contextmanager
def two_servers(
    tmp: Path, redis: RedisServer, **settings: Any
) -> Iterator[tuple[Process, Process]]:
    """Processes A and B, sharing one Redis and nothing else."""
    with ExitStack() as stack:
        a = stack.enter_context(hypercorn(tmp, "A", redis, **settings))
        b = stack.enter_context(hypercorn(tmp, "B", redis, **settings))
        yield a, b


# -- the client ----------------------------------------------------------------------------


def start_job(server: Process, **query: Any) -> str:
    response = httpx.post(f"{server.url}/jobs", params=query, timeout=BOUND)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def events_of(response: httpx.Response) -> Iterator[Event]:
    """Events as a browser dispatches them, as they arrive. Each is parsed on its
    own, so ``id`` is the event's own id ("" for one without: unavailable, gap)."""
    buffer = b""
    for chunk in response.iter_bytes():
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            yield from parse(block + b"\n\n")


@contextmanager
def watching(server: Process, job_id: str, last_id: int | str | None = None) -> Iterator[Any]:
    """An open stream of the job's events from ``server``; leaving closes it."""
    headers = {} if last_id is None else {"last-event-id": str(last_id)}
    with (
        httpx.Client(timeout=BOUND) as client,
        client.stream("GET", f"{server.url}/jobs/{job_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield events_of(response)


def read_until_end(events: Iterator[Event]) -> list[Event]:
    """Every event up to and including the terminal one."""
    seen = []
    for event in events:
        seen.append(event)
        if event["event"] in ("completed", "error"):
            return seen
    raise AssertionError(f"the stream ended before a terminal event: {seen}")


def ids(events: list[Event]) -> list[int]:
    return [int(e["id"]) for e in events if e["id"]]


def status_of(server: Process, job_id: str, last_id: str | None = None, **query: str) -> int:
    headers = {} if last_id is None else {"last-event-id": last_id}
    response = httpx.get(
        f"{server.url}/jobs/{job_id}/events", headers=headers, params=query, timeout=BOUND
    )
    return response.status_code


def wait_for_state(redis: RedisServer, job_id: str, state: str) -> None:
    """Wait, within a bound, until the job's record in Redis is in ``state``:
    woken by Redis itself (keyspace notifications) each time the record changes."""
    client = Redis.from_url(redis.url)
    key = f"{PREFIX}{{{job_id}}}:meta"
    client.config_set("notify-keyspace-events", "KA")
    changes = client.pubsub()
    changes.subscribe(f"__keyspace@0__:{key}")  # before the first look: no change is missed
    give_up = time.monotonic() + BOUND
    try:
        while (seen := client.hget(key, "state")) != state.encode():
            left = give_up - time.monotonic()
            assert left > 0, f"job {job_id} is {seen!r}, never {state}"
            changes.get_message(timeout=left)  # the next change (or the subscription's ack)
    finally:
        changes.close()
        client.close()


# -- 1, 2. another process resumes the stream ------------------------------------------------

STEPS = 20
INTERVAL = 0.02  # the job's own pace: simulated work
K = 5


def _resume_on_b(a: Process, b: Process, job_id: str) -> None:
    with watching(a, job_id) as events:
        first = [next(events) for _ in range(K)]
    assert [e["event"] for e in first] == ["progress"] * K
    assert ids(first) == list(range(1, K + 1))
    with watching(b, job_id, last_id=K) as events:
        rest = read_until_end(events)
        # Then the stream closes, once the job's end is recorded (not only its last event).
        assert next(events, None) is None
    assert ids(rest) == list(range(K + 1, STEPS + 2))  # each once, in order, then the end
    assert [e["event"] for e in rest] == ["progress"] * (STEPS - K) + ["completed"]
    assert [json.loads(e["data"])["details"]["i"] for e in rest[:-1]] == list(
        range(K + 1, STEPS + 1)
    )
    assert json.loads(rest[-1]["data"]) == {"steps": STEPS}
    # The client has the end: either process says there is nothing more.
    assert status_of(b, job_id, str(STEPS + 1)) == 204
    assert status_of(a, job_id, str(STEPS + 1)) == 204


def test_a_client_cut_off_from_one_process_resumes_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with two_servers(tmp_path, redis_server) as (a, b):
        job_id = start_job(a, steps=STEPS, interval=INTERVAL)
        _resume_on_b(a, b, job_id)


def test_a_job_run_by_a_worker_process_streams_from_any_web_process(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with two_servers(tmp_path, redis_server) as (a, b), worker(tmp_path, redis_server) as out:
        job_id = start_job(a, steps=STEPS, interval=INTERVAL, worker=1)
        _resume_on_b(a, b, job_id)
    assert f"worker: started {job_id}" in out.read_text()  # not run by A


def wait_for_blpops(redis: RedisServer, n: int) -> None:
    """Return once ``n`` BLPOPs reached Redis: each one is pushed to a MONITOR as it
    runs (no polling); BOUND seconds with no command at all fail the test."""
    client = Redis.from_url(redis.url, socket_timeout=BOUND)
    try:
        with client.monitor() as monitor:
            seen = 0
            while seen < n:
                seen += monitor.next_command()["command"].upper().startswith("BLPOP")
    finally:
        client.close()


def test_an_idle_worker_outlives_its_socket_timeout_and_still_takes_jobs(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Its BLPOP gives up within redis-py's socket timeout and asks again (a BLPOP
    that blocks for ever raises TimeoutError once the socket timeout passes)."""
    short = f"{redis_server.url}?socket_timeout=0.5"  # 5 s by default: the same, sooner
    with (
        hypercorn(tmp_path, "A", redis_server) as a,
        worker(tmp_path, redis_server, ASGI_SSE_REDIS_URL=short) as out,
    ):
        wait_for_blpops(redis_server, 6)  # idle for three socket timeouts, and asking still
        job_id = start_job(a, steps=3, interval=0, worker=1)
        with watching(a, job_id) as events:
            assert read_until_end(events)[-1]["event"] == "completed"
    assert f"worker: started {job_id}" in out.read_text()


# -- 3. Chromium reconnects by itself, through a load balancer --------------------------------

PAGE = """<!doctype html><title>resume</title><script>
window.got = [];
window.done = false;
const source = new EventSource("/jobs/%s/events");
for (const type of ["progress", "completed", "error", "gap", "unavailable"]) {
  source.addEventListener(type, (event) => {
    if (!(event instanceof MessageEvent)) return;  // a connection error, not an event
    window.got.push([event.type, event.lastEventId]);
    if (type === "completed" || type === "error") {
      source.close();
      window.done = true;
    }
  });
}
</script>"""


def test_chromium_reconnects_by_itself_to_another_process_and_misses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    steps = 100  # long enough to be still running when the fault comes
    with (
        two_servers(tmp_path, redis_server, ASGI_SSE_RETRY_MS=100) as (a, b),
        TcpProxy([a.port, b.port]) as proxy,
        launch() as browser,
        open_page(browser) as page,
    ):
        proxy.target = a.port
        job_id = start_job(a, steps=steps, interval=INTERVAL)
        page_url = f"{proxy.url}/resume.html"  # same origin as the stream, through the proxy
        page.route(
            page_url, lambda route: route.fulfill(content_type="text/html", body=PAGE % job_id)
        )
        page.goto(page_url)
        page.wait_for_function(f"window.got.length >= {K}", timeout=WAIT_MS)
        proxy.target = b.port
        assert proxy.cut() >= 1  # the browser's stream to A, both ends closed
        page.wait_for_function("window.done", timeout=WAIT_MS)
        got = page.evaluate("window.got")
        heads_to_b = proxy.heads_to(b.port)
    assert [event_id for _, event_id in got] == [str(i) for i in range(1, steps + 2)]
    assert [kind for kind, _ in got] == ["progress"] * steps + ["completed"]
    # B served the rest, to a request that said where the browser had got to.
    stream = f"get /jobs/{job_id}/events ".lower()
    heads = [raw.decode("latin-1").lower() for raw in heads_to_b]
    reconnects = [h for h in heads if h.startswith(stream)]  # not, say, a favicon
    assert reconnects, "the browser never reconnected to B through the proxy"
    resumed_from = int(reconnects[0].split("last-event-id:", 1)[1].split("\r\n", 1)[0])
    assert resumed_from >= K


# -- 4. Redis restarted mid-stream --------------------------------------------------------------


def test_a_stream_survives_a_redis_restart_and_the_job_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    steps = 100  # long enough to be still running when the fault comes
    with hypercorn(tmp_path, "A", redis_server) as a:
        job_id = start_job(a, steps=steps, interval=INTERVAL)
        seen: list[Event] = []
        with watching(a, job_id) as events:
            while len(seen) < K:
                seen.append(next(events))
            redis_server.stop()  # while the job reports: its publisher must hold on
            while seen[-1]["event"] != "unavailable":
                seen.append(next(events))
            redis_server.start()  # same port, and the AOF brings the log back
            seen += read_until_end(events)
    outage = [json.loads(e["data"]) for e in seen if e["event"] == "unavailable"]
    assert outage
    assert all(data == {"type": "BackendUnavailable"} for data in outage)
    assert ids(seen) == list(range(1, steps + 2))  # every event once, in order
    assert seen[-1]["event"] == "completed"
    assert json.loads(seen[-1]["data"]) == {"steps": steps}
    kinds = [e["event"] for e in seen]
    assert set(kinds) == {"progress", "unavailable", "completed"}


# -- 5. an abandoned job is cancelled, whichever process ran it ----------------------------------


def test_a_job_nobody_watches_is_cancelled_and_a_late_reconnect_hears_so(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    short = {"ASGI_SSE_GRACE": 0.3, "ASGI_SSE_LEASE": 0.3}
    with two_servers(tmp_path, redis_server, **short) as (a, b):
        job_id = start_job(a, steps=100_000, interval=INTERVAL)  # would run for ages
        with watching(a, job_id) as events:
            assert next(events)["id"] == "1"
        wait_for_state(redis_server, job_id, "ended")  # nobody came back within the grace
        with watching(b, job_id, last_id=1) as events:
            rest = read_until_end(events)
        end = rest[-1]
        assert (end["event"], json.loads(end["data"])) == ("error", {"type": "JobAbandoned"})
        assert ids(rest) == list(range(2, int(end["id"]) + 1))  # what it did before, then the end
        assert [e["event"] for e in rest[:-1]] == ["progress"] * (len(rest) - 1)
        assert status_of(b, job_id, end["id"]) == 204


# -- 6. history trimmed in Redis -------------------------------------------------------------------


def test_a_reconnect_after_trimmed_history_is_told_of_the_gap(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    keep = 5
    with two_servers(tmp_path, redis_server, ASGI_SSE_MAX_EVENTS=keep) as (a, b):
        job_id = start_job(a, steps=STEPS, interval=0)
        wait_for_state(redis_server, job_id, "ended")
        with watching(b, job_id, last_id=2) as events:
            rest = read_until_end(events)
    gap, kept = rest[0], rest[1:]
    first_kept = STEPS + 2 - keep  # the newest ``keep`` events, the terminal one included
    assert gap["event"] == "gap"
    assert gap["id"] == ""
    assert json.loads(gap["data"]) == {
        "type": "HistoryGone",
        "last_event_id": 2,
        "next_id": first_kept,
    }
    assert ids(kept) == list(range(first_kept, STEPS + 2))
    assert [e["event"] for e in kept] == ["progress"] * (keep - 1) + ["completed"]


# -- 7. hostile ids --------------------------------------------------------------------------------

HOSTILE = ["abc", "-1", "+1", "01", "1.0", "0x1", "1e3", "9" * 20, "1,2"]
# HTTP strips blanks around a header's value, and headers are Latin-1: these go in the query.
HOSTILE_QUERY = [*HOSTILE, " 1", "1 ", "\uff11", "1\n2"]


def test_hostile_event_ids_and_unknown_jobs_are_refused_by_any_process(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with two_servers(tmp_path, redis_server) as (a, b):
        job_id = start_job(a, steps=3, interval=0)
        wait_for_state(redis_server, job_id, "ended")
        for bad in HOSTILE:
            assert status_of(b, job_id, last_id=bad) == 400, bad
        for bad in HOSTILE_QUERY:
            assert status_of(b, job_id, last_event_id=bad) == 400, bad
        assert status_of(b, job_id, last_id="5") == 400  # past the end (4)
        assert status_of(b, job_id, last_id="1", last_event_id="2") == 400  # they disagree
        assert status_of(b, job_id, last_id="4") == 204  # the end, for contrast
        assert status_of(b, "no-such-job") == 404
        assert status_of(b, "no-such-job", last_id="1") == 404
        assert status_of(b, "bad%20id") == 404


# -- 8. a worker process killed mid-job ------------------------------------------------------------


@contextmanager
def killable_worker(
    tmp: Path, redis: RedisServer, **settings: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process the test may SIGKILL itself: its stderr is not checked, since
    a killed process says nothing, and a dead process group is no error at the end."""
    process = _start_worker(tmp, redis, settings)
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(BOUND)


def test_a_worker_killed_mid_job_ends_the_stream_with_job_lost_and_its_keys_expire(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    lease = {"ASGI_SSE_LEASE": 0.3}  # so the death is noticed in a fraction of a second
    with (
        hypercorn(tmp_path, "A", redis_server, **lease) as a,
        killable_worker(tmp_path, redis_server, **lease) as process,
    ):
        job_id = start_job(a, steps=100_000, interval=INTERVAL, worker=1)  # would run for ages
        with watching(a, job_id) as events:
            seen = [next(events) for _ in range(K)]
            os.killpg(process.pid, signal.SIGKILL)  # no finally, no farewell: a crash
            process.wait(BOUND)
            seen += read_until_end(events)
            assert next(events, None) is None  # the response ends right after
        end = seen[-1]
        assert (end["event"], json.loads(end["data"])) == ("error", {"type": "JobLost"})
        assert ids(seen) == list(range(1, int(end["id"]) + 1))  # last + 1, nothing missed
        assert [e["event"] for e in seen[:-1]] == ["progress"] * (len(seen) - 1)
        assert status_of(a, job_id, end["id"]) == 204  # a reconnect: nothing more to come
        client = Redis.from_url(redis_server.url)
        try:
            for part in ("meta", "log"):
                ttl = client.pttl(f"{PREFIX}{{{job_id}}}:{part}")
                assert ttl > 0, f"{part}: PTTL {ttl}, kept for ever after its publisher died"
        finally:
            client.close()
    # Leaving hypercorn() asserted that A printed no traceback.


# -- 9. a new watch while Redis is down ------------------------------------------------------------


def test_a_new_watch_while_redis_is_down_gets_503_then_the_events_once_it_is_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    steps = 3
    with hypercorn(tmp_path, "A", redis_server) as a:
        job_id = start_job(a, steps=steps, interval=0)
        wait_for_state(redis_server, job_id, "ended")
        redis_server.stop()
        # An answer, not a request hanging until the client gives up (BOUND).
        response = httpx.get(f"{a.url}/jobs/{job_id}/events", timeout=BOUND)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["type"] == "BackendUnavailable"
        assert int(response.headers["retry-after"]) >= 0
        redis_server.start()  # the same request, as the client retries it
        with watching(a, job_id) as events:
            seen = read_until_end(events)
    assert ids(seen) == list(range(1, steps + 2))
    assert [e["event"] for e in seen] == ["progress"] * steps + ["completed"]


# -- 10. Redis outages seen from inside one process (redis-py's asyncio client: asyncio only) -----


async def _read_some(backend: RedisBackend, job_id: str, after: int = 0) -> int:
    """Read the log until it has something after ``after``: the job is publishing."""
    while True:
        page = await backend.read(job_id, after)  # blocks up to ``block``: no busy loop
        if page.events:
            return page.events[-1][0]


async def _read_until_lost(backend: RedisBackend, job_id: str, after: int) -> int:
    """Follow the log, as a watcher does, until the job is declared lost; return the
    newest id read (everything the job published up to then)."""
    while True:
        try:
            page = await backend.read(job_id, after)
        except JobLost:
            return after
        assert page.end_id is None, "the job ended instead of being lost"
        if page.events:
            after = page.events[-1][0]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_leaving_jobs_during_a_redis_outage_is_bounded_and_stops_the_job(
    redis_server: RedisServer,
) -> None:
    client = AsyncRedis.from_url(redis_server.url)
    backend = RedisBackend(client, lease=0.3, block=0.1)
    jobs = Jobs(backend, shutdown_grace=0.5)
    job = Endless()
    try:
        with anyio.fail_after(BOUND):
            async with jobs:
                job_id = await jobs.start(Job(job), keep_running=True)
                await _read_some(backend, job_id)
                redis_server.stop()  # the job keeps reporting; nothing can be published
    finally:
        await client.aclose()
    assert job.stopped.is_set()  # its thread was stopped and waited for, not left behind
    assert job.outcome == ["cancelled"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_publisher_cut_off_for_longer_than_its_lease_is_declared_lost_and_stops(
    redis_server: RedisServer,
) -> None:
    """Only the publisher loses Redis (through a proxy that then refuses it), while a
    watcher still reaches it: the watcher declares the job lost, and the publisher,
    back again, must publish nothing more and stop its job."""
    with (
        socket.socket() as dead,  # bound, never listening: connections to it are refused
        TcpProxy([redis_server.port]) as proxy,
    ):
        dead.bind(("127.0.0.1", 0))
        publisher = AsyncRedis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        watcher_client = AsyncRedis.from_url(redis_server.url)
        watcher = RedisBackend(watcher_client, lease=0.3, block=0.1)
        jobs = Jobs(RedisBackend(publisher, lease=0.3, block=0.1))
        job = Endless()
        try:
            with anyio.fail_after(BOUND):
                async with jobs:
                    job_id = await jobs.start(Job(job), keep_running=True)
                    after = await _read_some(watcher, job_id)
                    proxy.target = dead.getsockname()[1]
                    proxy.cut()  # the publisher's renewals fail from here on
                    after = await _read_until_lost(watcher, job_id, after)
                    proxy.target = redis_server.port  # the publisher reaches Redis again
                    # Its job stops at its next report; a thread wait the bound can cut short.
                    stopped = job.stopped.wait
                    assert await anyio.to_thread.run_sync(stopped, BOUND, abandon_on_cancel=True)
        finally:
            await publisher.aclose()
            await watcher_client.aclose()
    assert job.outcome == ["cancelled"]
    client = Redis.from_url(redis_server.url)
    try:
        meta = client.hgetall(f"{PREFIX}{{{job_id}}}:meta")
        newest = client.xrevrange(f"{PREFIX}{{{job_id}}}:log", count=1)
    finally:
        client.close()
    assert meta[b"state"] == b"lost"
    assert int(meta[b"last"]) == after  # nothing published after it was declared lost
    assert newest
    assert newest[0][0] == f"{after}-0".encode()
