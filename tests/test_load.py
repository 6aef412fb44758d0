"""Load and faults against a real hypercorn in its own process.

The server is ``hypercorn test_load:app`` (asyncio worker) on a socket this test
binds first, so the client (this process) and the server do not share a GIL, and
the server's own view (the middleware's counters, its limiter, its threads, its
tasks, its memory) comes from its ``/stats`` endpoint, read from inside it.

Sizes: ``make test`` runs each scenario small enough to stay quick yet still
prove its point; ``make soak`` (``ASGI_SSE_SOAK=1``) runs the ``soak``-marked
tests at full size: 1000 concurrent streams, a storm of 2000 clients in waves of
250, 1000 stalled half-sent requests.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from processes import every_token_back, stopped_at_exit

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter
from benchmarks.client import load

SOAK = os.environ.get("ASGI_SSE_SOAK", "") == "1"
BOUND = 10.0  # seconds: how long to wait for something that should happen at once (as conftest)
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# -- the server: imported by hypercorn in its own process ------------------------------

_barriers: dict[str, threading.Barrier] = {}
_barriers_lock = threading.Lock()


def _barrier(name: str, parties: int, timeout: float) -> threading.Barrier:
    with _barriers_lock:
        return _barriers.setdefault(name, threading.Barrier(parties, timeout=timeout))


def job(
    on_progress: Reporter, *, n: int, interval: float, together: str, parties: int, within: float
) -> dict[str, int]:
    """The benchmark client's job format: ``i`` counts from 0, ``t`` is a stamp.

    With ``together``, every job of that name reports its first event, then waits
    until ``parties`` of them are running at once before it goes on (a broken
    barrier raises: the stream ends with an error event, the test sees it).
    """
    pace = threading.Event()  # never set: ``interval`` is the job's own pace
    for i in range(n):
        on_progress("step", {"i": i, "t": time.monotonic_ns()})
        if i == 0 and together:
            _barrier(together, parties, within).wait()
        if interval:
            pace.wait(interval)
    return {"events": n, "done": time.monotonic_ns()}


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _stats() -> dict[str, Any]:
    gc.collect()
    return asdict(app.stats) | {
        "borrowed_tokens": app.limiter.borrowed_tokens,
        "threads": threading.active_count(),
        "tasks": len(asyncio.all_tasks()),
        "objects": len(gc.get_objects()),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": _rss(),
    }


async def _settled(tasks: int) -> None:
    """Return once no stream is open, every limiter token is back and (given
    ``tasks``) no more than that many tasks are left: each waited on as an
    event, inside the server, where they happen."""
    await app._hub.idle()
    await every_token_back(app.limiter)
    while tasks and len(asyncio.all_tasks()) > tasks:  # (the asyncio worker's tasks)
        ended = asyncio.Event()

        def one_ended(_: object, ended: asyncio.Event = ended) -> None:
            ended.set()

        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.add_done_callback(one_ended)
        try:
            await ended.wait()
        finally:
            for task in others:
                task.remove_done_callback(one_ended)


async def _routes(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] in ("/stats", "/settled"):
        if scope["path"] == "/settled":
            await _settled(int(parse_qs(scope["query_string"].decode()).get("tasks", ["0"])[0]))
        body = json.dumps(_stats()).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    work = Job(
        job,
        n=int(query.get("n", "10")),
        interval=float(query.get("interval", "0")),
        together=query.get("together", ""),
        parties=int(query.get("parties", "1")),
        within=float(query.get("within", str(BOUND))),
    )
    await EventStream(work, heartbeat=None)(scope, receive, send)


_max_streams = os.environ.get("LOAD_MAX_STREAMS")
app = EventStreamMiddleware(
    _routes,
    threads=int(os.environ.get("LOAD_THREADS", "40")),
    max_streams=int(_max_streams) if _max_streams else None,
    queue=int(os.environ.get("LOAD_QUEUE", "0")),
)

# -- the test side ----------------------------------------------------------------------


@dataclass
class Server:
    port: int
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/stats", headers={"connection": "close"}, timeout=BOUND)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def settled(self, tasks: int = 0, within: float = 3 * BOUND) -> dict[str, Any]:
        """The stats once no stream is open, queued or running, no limiter token
        is out and (given ``tasks``) no more than that many tasks are left: the
        server waits for each of those events itself, within ``within``."""
        response = httpx.get(
            self.url + "/settled",
            params={"tasks": tasks},
            headers={"connection": "close"},
            timeout=within,
        )
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


@contextmanager
def hypercorn(tmp_path: Path, *options: str, **env: int) -> Iterator[Server]:
    """``hypercorn test_load:app`` in its own process (group), on a socket bound here,
    so clients may connect at once; stopped with SIGTERM, killed if it hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    stderr = tmp_path / "hypercorn.stderr"
    with stderr.open("w") as err:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "hypercorn", "test_load:app", "--workers", "1"),
                *("--bind", f"fd://{sock.fileno()}", "--backlog", "4096"),
                *options,
            ],
            cwd=TESTS,
            env=os.environ
            | {"PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
            | {key: str(value) for key, value in env.items()},
            pass_fds=[sock.fileno()],
            stderr=err,
            start_new_session=True,
        )
    port = sock.getsockname()[1]
    sock.close()  # the server has its own copy; connections wait in the backlog meanwhile
    with stopped_at_exit(server, stderr):
        yield Server(port, stderr)


def report(name: str, **figures: Any) -> None:
    """Figures for the record: shown by ``pytest -s`` and in ``make soak``'s output."""
    line = ", ".join(f"{key}={value}" for key, value in figures.items())
    sys.stdout.write(f"\n[{name}{' soak' if SOAK else ''}] {line}\n")


# -- 1. many concurrent streams ------------------------------------------------------------

STREAMS = 1000 if SOAK else 200
EVENTS = 50


@pytest.mark.soak
@pytest.mark.timeout(300 if SOAK else 60)
def test_concurrent_streams_all_complete_with_every_event_in_order(tmp_path: Path) -> None:
    # A thread per stream, and every job waits for all the others after its first
    # event: so all STREAMS jobs are provably running at the same time.
    with hypercorn(tmp_path, LOAD_THREADS=STREAMS) as server:
        deadline = 120 if SOAK else 40
        path = f"/?n={EVENTS}&interval=0.005&together=all&parties={STREAMS}&within={deadline}"
        started = time.monotonic()
        streams = asyncio.run(load(server.port, path, streams=STREAMS, n=EVENTS, deadline=deadline))
        wall = time.monotonic() - started
        stats = server.settled()
    errors = sorted({s.error for s in streams if s.error})
    assert errors == []
    assert [s for s in streams if b" 200 " not in s.status] == []
    assert sum(not s.completed for s in streams) == 0
    assert sum(s.lost for s in streams) == 0
    assert sum(s.disorder for s in streams) == 0
    assert sum(s.received for s in streams) == STREAMS * EVENTS
    assert stats["events_sent"] == STREAMS * (EVENTS + 1)
    assert stats["disconnects"] == stats["send_timeouts"] == stats["refused"] == 0
    report(
        "concurrent",
        streams=STREAMS,
        events=STREAMS * EVENTS,
        wall_s=f"{wall:.1f}",
        server_threads=stats["threads"],
        server_rss_mib=f"{stats['rss'] / 2**20:.0f}",
    )


# -- 2. a disconnect storm -------------------------------------------------------------------

STORM = 2000 if SOAK else 300
WAVE = 250 if SOAK else 100
SLOTS = 32  # jobs at once (threads and max_streams): the rest of a wave waits in line
ENDLESS = "/?n=20000&interval=0.005"  # reports every 5 ms, for 100 s at most: ended by leaving
# Where a client leaves: just after sending its request, on the response head (while its
# job runs or waits in line), or on its job's first progress event (the job is running).
LEAVE_AT = ("sent", "head", "progress")


async def storm_client(port: int, leave_at: str, reset: bool) -> bool:
    """Connect, ask for an endless job and leave at ``leave_at``, with a FIN or, when
    ``reset``, an RST. True when the client saw its job run."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    saw_progress = False
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: storm\r\n\r\n" % ENDLESS.encode())
        await writer.drain()
        if leave_at != "sent":
            await reader.readuntil(b"\r\n\r\n")
        if leave_at == "progress":
            while b"event: progress" not in await reader.readuntil(b"\n\n"):
                pass  # ``queued`` events first, while it waits for a slot
            saw_progress = True
    finally:
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()
        await writer.wait_closed()
    return saw_progress


async def wave(port: int, size: int) -> int:
    """``size`` clients at once, leaving at every point in turn; how many saw their
    job run."""
    clients = [
        storm_client(port, LEAVE_AT[i % len(LEAVE_AT)], reset=bool(i // len(LEAVE_AT) % 2))
        for i in range(size)
    ]
    return sum(await asyncio.wait_for(asyncio.gather(*clients), 3 * BOUND))


async def all_running(port: int, count: int) -> None:
    """``count`` clients that each see their job run, then all leave together: the
    limiter's every token out at once, so the worker-thread pool is at its largest."""
    opened = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET %s HTTP/1.1\r\nHost: warm\r\n\r\n" % ENDLESS.encode())
            opened.append((reader, writer))
        for reader, _ in opened:
            await asyncio.wait_for(reader.readuntil(b"event: progress"), BOUND)
    finally:
        for _, writer in opened:
            writer.close()
        for _, writer in opened:
            await writer.wait_closed()


# Memory after the storm may exceed the baseline by this much. The baseline is taken
# after a warm-up (every slot busy at once, then two whole waves), so the worker-thread
# pool, the allocator's arenas and every cache are at their working size: measured here,
# RSS rises about 2 MiB over the first waves of 250 and is then flat (to 0.1 MiB) for
# 20 waves. What is left is allocator noise, freed blocks glibc and pymalloc keep for
# reuse. A leak of one page (4 KiB) per client grows 8 MiB over the 2000-client storm,
# over this tolerance; at the default size (300 clients) RSS only catches leaks of
# about 14 KiB a client and up, and the object count below catches the smaller ones.
RSS_TOLERANCE = 4 * 2**20
# Python objects (gc-tracked, counted after a collection) that may be left over: a
# leak of even one object per client of the storm would exceed it. Seen: up to 94 more
# after 300 clients (caches the first requests fill), so a quarter of the storm was too
# tight; half still catches one object per client.
OBJECTS_TOLERANCE = STORM // 2


@pytest.mark.soak
@pytest.mark.timeout(300 if SOAK else 60)
def test_a_disconnect_storm_leaves_nothing_behind(tmp_path: Path) -> None:
    limits = {"LOAD_THREADS": SLOTS, "LOAD_MAX_STREAMS": SLOTS, "LOAD_QUEUE": 10 * STORM}
    with hypercorn(tmp_path, **limits) as server:
        idle = server.settled()
        asyncio.run(all_running(server.port, SLOTS))
        for _ in range(2):
            asyncio.run(wave(server.port, WAVE))
        baseline = server.settled()

        peak_rss = baseline["rss"]
        ran = 0
        for _ in range(STORM // WAVE):
            ran += asyncio.run(wave(server.port, WAVE))
            peak_rss = max(peak_rss, server.stats()["rss"])
        # Connections close after their stream ends: wait (bounded) for every one of
        # them, so a task or socket left behind fails the test here.
        after = server.settled(tasks=baseline["tasks"])

        # The server still serves: a whole stream, every event in order.
        (stream,) = asyncio.run(load(server.port, "/?n=200", streams=1, n=200, deadline=BOUND))
        assert (stream.error, stream.completed, stream.lost, stream.disorder) == ("", True, 0, 0)
        final = server.settled()

    figures = {
        "clients": STORM,
        "waves": STORM // WAVE,
        "saw_job_run": ran,
        "disconnects": after["disconnects"] - baseline["disconnects"],
        "threads_idle_baseline_after": (idle["threads"], baseline["threads"], after["threads"]),
        "tasks_baseline_after": (baseline["tasks"], after["tasks"]),
        "objects_baseline_after": (baseline["objects"], after["objects"]),
        "fds_baseline_after": (baseline["fds"], after["fds"]),
        "rss_mib_baseline_peak_after": tuple(
            round(x / 2**20, 1) for x in (baseline["rss"], peak_rss, after["rss"])
        ),
    }
    report("storm", **figures)
    # Every client that saw its job run left mid-job, and was counted as leaving.
    per_wave = sum(LEAVE_AT[i % len(LEAVE_AT)] == "progress" for i in range(WAVE))
    assert ran == per_wave * (STORM // WAVE)
    assert ran <= after["disconnects"] - baseline["disconnects"] <= STORM
    assert after["refused"] == after["send_timeouts"] == 0
    # Nothing running, nothing borrowed: settled() waited for exactly that (or failed).
    assert final["borrowed_tokens"] == 0
    # No thread growth: the pool never outgrows its slots. (anyio retires threads idle
    # for 10 s, so the baseline itself may shrink on a slow machine: compare with the cap.)
    assert baseline["threads"] <= idle["threads"] + SLOTS
    assert after["threads"] <= idle["threads"] + SLOTS
    # No task, socket, object or memory left behind.
    assert after["tasks"] <= baseline["tasks"]
    assert after["fds"] <= baseline["fds"]
    assert after["objects"] - baseline["objects"] <= OBJECTS_TOLERANCE, figures
    assert after["rss"] - baseline["rss"] <= RSS_TOLERANCE, figures


# -- 3. slowloris ------------------------------------------------------------------------------

STALLERS = 1000 if SOAK else 200
HALF_SENT = (
    b"GET /?n=5 HT",  # half a request line
    b"GET /?n=5 HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaa",  # half a header
    b"GET /?n=5 HTTP/1.1\r\nHost: slow\r\n",  # every header but the blank line
)


@pytest.mark.soak
@pytest.mark.timeout(300 if SOAK else 60)
def test_stalled_half_sent_requests_do_not_stop_a_stream_being_served(tmp_path: Path) -> None:
    # hypercorn closes a connection that has not sent a whole request within its
    # keep-alive timeout (5 s by default); raised here so the stallers stay for the
    # whole test: the worst case, a server that never cuts them.
    with hypercorn(tmp_path, "--keep-alive", "600") as server:
        before = server.stats()
        stallers = []
        try:
            for i in range(STALLERS):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=BOUND)
                sock.sendall(HALF_SENT[i % len(HALF_SENT)])
                stallers.append(sock)
            streams = asyncio.run(load(server.port, "/?n=100", streams=5, n=100, deadline=BOUND))
            assert [(s.error, s.completed, s.lost, s.disorder) for s in streams] == [
                ("", True, 0, 0)
            ] * 5
            # The server held every staller meanwhile: it accepts in the order clients
            # connect, so having served the five it had accepted the stallers before.
            held = server.stats()["fds"] - before["fds"]
            assert held >= STALLERS
            # ...while every staller was still connected, still waiting for its request.
            for sock in stallers:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1, socket.MSG_PEEK)
            during = server.stats()
        finally:
            for sock in stallers:
                sock.close()
        after = server.settled()
    assert during["events_sent"] == 5 * 101
    assert after["refused"] == 0
    report("slowloris", stallers=STALLERS, held_fds=held, streams_served=5)
