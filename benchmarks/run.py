"""The benchmark suite: scenarios A to E for every implementation, raw results as JSON.

    python benchmarks/run.py                  # everything, 3 runs each (make bench)
    python benchmarks/run.py --smoke          # tiny sizes, proves the harness (make test)
    python benchmarks/run.py --scenarios A C1 --only floor asgi_sse --runs 5

Each implementation is served by hypercorn (one worker, asyncio; or by uvicorn
or granian: ``--server``, and benchmarks/servers.py) in a fresh process per
scenario, pinned to core 0; this process is the client, on core 1. Server CPU
and memory come from /proc, so they cover the whole server process. Every run
is bounded by its scenario's deadline; what has not finished by then is cut and
counted as unfinished. ``report.py`` turns the JSON into tables and charts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from client import Stream, load

ROOT = Path(__file__).resolve().parent.parent
MODULES = {
    "floor": "apps",
    "asgi_sse": "apps",
    "asgi_sse_middleware": "apps",
    "asgi_sse_observed": "apps",
    "asgi_sse_litestar": "apps",
    "asgi_sse_quart": "apps",
    "queue_pattern": "alternatives",
    "sse_starlette": "alternatives",
    "litestar_sse": "alternatives",
    "quart_generator": "alternatives",
}
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    streams: int
    n: int
    interval: float = 0.0  # seconds between events
    hold: float = 0.0  # seconds the job blocks after its events
    hb: float = 0.0  # heartbeat seconds (0: each tool's default)
    threads: int = 0  # worker threads for every tool (0: each tool's default)
    latency: bool = False
    pace: float = 0.0  # the client reads at most this many bytes/s (0: at once)
    rcvbuf: int = 0
    deadline: float = 120.0
    only: tuple[str, ...] = ()  # implementations for this scenario (default: all but extras)
    route: str = ""  # the path after "/", for an app that serves several ways at once

    @property
    def query(self) -> str:
        parts = {"n": self.n, "interval": self.interval, "hold": self.hold, "hb": self.hb}
        return f"/{self.route}?" + "&".join(
            f"{key}={value:g}" for key, value in parts.items() if value
        )


#: Not in every scenario: the middleware's cost, and the cost of observing it (metrics).
EXTRAS = ("asgi_sse_middleware", "asgi_sse_observed")
_ALL = tuple(name for name in MODULES if name not in EXTRAS)
SCENARIOS = {
    "A": Scenario("A", "latency: 1 stream, 2000 events 2 ms apart", 1, 2000, 0.002, latency=True),
    "B": Scenario(
        "B",
        "latency under load: 200 streams x 100 events 20 ms apart",
        200,
        100,
        0.02,
        latency=True,
        only=(*_ALL, *EXTRAS),
    ),
    "B200": Scenario(
        "B200",
        "latency at equal load: B with 200 threads for every tool, so every job runs at once",
        200,
        100,
        0.02,
        threads=200,
        latency=True,
        only=(*_ALL, *EXTRAS),
    ),
    "C1": Scenario(
        "C1", "throughput: 1 stream x 100,000 events, no sleep", 1, 100_000, only=(*_ALL, *EXTRAS)
    ),
    "C50": Scenario(
        "C50",
        "throughput: 50 streams x 5,000 events, no sleep",
        50,
        5000,
        only=(*_ALL, *EXTRAS),
    ),
    "D": Scenario(
        "D",
        "scale: 1000 idle streams, heartbeat 1 s, job blocks 10 s",
        1000,
        1,
        hold=10,
        hb=1,
        threads=1000,
        deadline=60,
    ),
    "E": Scenario(
        "E",
        "slow reader: 1 stream x 200,000 events (15 MB) read at 2 MB/s",
        1,
        200_000,
        pace=2_000_000,
        rcvbuf=16384,
        deadline=60,
    ),
}
SMOKE = {
    "A": {"n": 50},
    "B": {"streams": 10, "n": 5},
    "B200": {"streams": 10, "n": 5, "threads": 10},
    "C1": {"n": 2000},
    "C50": {"streams": 5, "n": 200},
    "D": {"streams": 20, "hold": 1.2, "hb": 0.3, "threads": 20},
    "E": {"n": 3000, "pace": 200_000},
}


# -- the server process ----------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [p for child in children for p in _tree(int(child))]


def server_cpu(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / _TICK


def server_rss(pid: int) -> int:
    return sum(int(Path(f"/proc/{p}/statm").read_text().split()[1]) for p in _tree(pid)) * _PAGE


# Decided before this process moves itself to core 1.
PINNED = {0, 1} <= os.sched_getaffinity(0) and shutil.which("taskset") is not None


@contextmanager
def _server(
    command: list[str], env: dict[str, str] | None = None, ready: str | None = None
) -> Iterator[tuple[int, int]]:
    """``command`` (with ``{fd}`` for a socket bound here, or ``{port}`` for a free
    port it binds itself) pinned to core 0, in its own process group: yields (port,
    pid). On a socket bound here clients may connect at once; a server that binds
    its own is waited for until its log has the line ``ready``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    if ready is not None:
        sock.close()  # the server binds the port itself
    pin = ["taskset", "-c", "0"] if PINNED else []
    server = subprocess.Popen(
        [*pin, *(part.format(fd=sock.fileno(), port=port) for part in command)],
        cwd=ROOT,
        pass_fds=[] if ready is not None else [sock.fileno()],
        env=None if env is None else os.environ | env,
        stdout=None if ready is None else subprocess.PIPE,
        stderr=None if ready is None else subprocess.STDOUT,
        start_new_session=True,  # stopped with its worker
    )
    sock.close()
    try:
        if ready is not None:
            _wait_for_line(server, ready)
            _wait_for_port(port, server)
        yield port, server.pid
    finally:
        _stop(server)


def _wait_for_port(port: int, server: subprocess.Popen[bytes], within: float = 30.0) -> None:
    """Return once ``port`` accepts a connection: a server's "ready" line may come
    before its worker listens (granian's, seen in a smoke run refused)."""
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server never listened on port {port}") from None
            time.sleep(0.01)  # the pace of a bounded look at a condition


def _wait_for_line(server: subprocess.Popen[bytes], ready: str) -> None:
    """Read the server's log until ``ready``; then keep draining it, so it never blocks."""
    assert server.stdout is not None
    for line in iter(server.stdout.readline, b""):
        if ready.encode() in line:
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return
    raise RuntimeError(f"the server exited before it printed {ready!r}")


#: How each server's command line serves ``{app}``: the options users run it with
#: in production (one worker, no access log), and the backlog for 1000 streams;
#: then the log line a server that binds its own port prints once it listens.
SERVERS: dict[str, tuple[list[str], str | None]] = {
    "hypercorn": (
        ["-m", "hypercorn", "{app}", "--workers", "1", "--backlog", "2048", "--log-level",
         "WARNING", "--bind", "fd://{fd}"],
        None,
    ),
    "uvicorn": (
        ["-m", "uvicorn", "{app}", "--fd", "{fd}", "--backlog", "2048", "--log-level", "warning",
         "--no-access-log"],
        None,
    ),
    "granian": (
        ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
         "--backlog", "2048", "{app}"],
        "Started worker-1",
    ),
}  # fmt: skip


def serve(server: str, name: str, threads: int) -> AbstractContextManager[tuple[int, int]]:
    """``server`` (one worker) serving ``name``: yields (port, pid)."""
    command, ready = SERVERS[server]
    app = f"benchmarks.{MODULES[name]}:{name}"
    command = [sys.executable, *(part.replace("{app}", app) for part in command)]
    return _server(command, {"BENCH_THREADS": str(threads)}, ready)


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop a server and its worker, killing them if they do not stop (a run must
    end by itself)."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    with suppress(ProcessLookupError):  # a worker that outlived it (granian's) must not
        os.killpg(server.pid, signal.SIGKILL)  # linger on a port the next run may be given


# -- one run ----------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(scenario: Scenario, streams: list[Stream]) -> dict[str, Any]:
    """One run's figures: counts, then distributions in us or ms."""
    latencies = [x / 1e3 for s in streams for x in s.latencies]
    ttfb = [(s.first_byte - s.started) / 1e6 for s in streams if s.first_byte]
    ttfe = [(s.first_event - s.started) / 1e6 for s in streams if s.first_event]
    ttff = [(s.first_frame - s.started) / 1e6 for s in streams if s.first_frame]
    jitter = [
        abs((later - earlier) / 1e6 - scenario.hb * 1e3)
        for s in streams
        for earlier, later in zip(s.heartbeats, s.heartbeats[1:], strict=False)
    ]
    lead = [(s.ended - s.done) / 1e9 for s in streams if s.done]
    held = [(s.done - s.started) / (s.ended - s.started) for s in streams if s.done]
    return {
        "expected": scenario.streams * scenario.n,
        "events": sum(s.received for s in streams),
        "lost": sum(s.lost for s in streams),
        "disorder": sum(s.disorder for s in streams),
        "unfinished": sum(not s.completed for s in streams),
        "abandoned": sum(s.abandoned for s in streams),
        "not_200": sum(s.status.split(b" ")[1:2] != [b"200"] for s in streams),  # 1.0 or 1.1
        "errors": sorted({s.error for s in streams if s.error})[:3],
        "bytes": sum(s.bytes for s in streams),
        "wall_s": (max(s.ended for s in streams) - min(s.started for s in streams)) / 1e9,
        "latency_us": {q: _pct(latencies, v) for q, v in _QUANTILES.items()},
        "ttfb_ms": {q: _pct(ttfb, v) for q, v in _QUANTILES.items()},
        "ttfe_ms": {q: _pct(ttfe, v) for q, v in _QUANTILES.items()},
        "ttff_ms": {q: _pct(ttff, v) for q, v in _QUANTILES.items()},
        "heartbeats": sum(len(s.heartbeats) for s in streams),
        "jitter_ms": {q: _pct(jitter, v) for q, v in _QUANTILES.items()},
        "job_lead_s": _pct(lead, 0.5),  # how long before the client's end the job had finished
        "job_done_at": _pct(held, 0.5),  # ... as a share of the stream's time (1.0: held back)
    }


_QUANTILES = {"p50": 0.5, "p99": 0.99, "max": 1.0}


async def one_run(scenario: Scenario, port: int, pid: int) -> dict[str, Any]:
    rss_before, cpu_before = server_rss(pid), server_cpu(pid)
    client_before = time.process_time()
    peak = rss_before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, server_rss(pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    try:
        streams = await load(
            port,
            scenario.query,
            streams=scenario.streams,
            n=scenario.n,
            deadline=scenario.deadline,
            latency=scenario.latency,
            pace=scenario.pace,
            rcvbuf=scenario.rcvbuf,
        )
    finally:
        sampler.cancel()
    peak = max(peak, server_rss(pid))
    summary = summarise(scenario, streams)
    events = max(summary["events"], 1)
    return summary | {
        "rate": summary["events"] / summary["wall_s"],
        "server_cpu_s": server_cpu(pid) - cpu_before,
        "server_us_per_event": (server_cpu(pid) - cpu_before) / events * 1e6,
        "client_cpu_share": (time.process_time() - client_before) / summary["wall_s"],
        "client_us_per_event": (time.process_time() - client_before) / events * 1e6,
        "rss_before_mib": rss_before / 2**20,
        "rss_peak_mib": peak / 2**20,
        "rss_per_stream_kib": (peak - rss_before) / scenario.streams / 1024,
    }


def measure(scenario: Scenario, name: str, index: int, runs: int, server: str) -> dict[str, Any]:
    """One run on a fresh server (so no run inherits another's memory), after a
    warm-up stream."""
    with serve(server, name, scenario.threads) as (port, pid):
        (warm,) = asyncio.run(load(port, "/?n=200", streams=1, n=200, deadline=30))
        if not warm.completed:
            raise RuntimeError(f"{name} failed its warm-up stream: {warm.error or warm.status!r}")
        result = asyncio.run(one_run(scenario, port, pid))
    print(
        f"{scenario.key:>4} {name:<20} run {index + 1}/{runs}:"
        f" {result['events']:>7}/{result['expected']} events, lost {result['lost']},"
        f" unfinished {result['unfinished']}, {result['rate']:,.0f} events/s,"
        f" p50 {result['latency_us']['p50'] or 0:,.0f} us",
        file=sys.stderr,
        flush=True,
    )
    return {"name": name, "scenario": scenario.key, "run": index} | result


async def _timed(load: Awaitable[list[Stream]]) -> tuple[list[Stream], float]:
    """The streams and this process's CPU seconds for them, loop set-up left out."""
    cpu = time.process_time()
    streams = await load
    return streams, time.process_time() - cpu


def calibrate(events: int, streams: int) -> dict[str, Any]:
    """The client against a server that costs nothing: the client's own ceiling."""
    path = f"/?n={events}"
    with _server([sys.executable, "benchmarks/client.py", "--firehose", "{fd}"]) as (port, _):
        asyncio.run(load(port, path, streams=streams, n=events, deadline=60))  # builds the body
        found, cpu = asyncio.run(_timed(load(port, path, streams=streams, n=events, deadline=60)))
    received = sum(s.received for s in found)
    wall = (max(s.ended for s in found) - min(s.started for s in found)) / 1e9
    return {
        "streams": streams,
        "events": received,
        "lost": streams * events - received,
        "rate": received / wall,
        "client_cpu_share": cpu / wall,
        "client_us_per_event": cpu / received * 1e6,
    }


def meta(argv: list[str], smoke: bool, server: str) -> dict[str, Any]:
    packages = ["hypercorn", "uvicorn", "granian", "anyio", "msgspec", "starlette", "fastapi"]
    packages += ["sse-starlette", "litestar", "quart", "asgi-sse"]
    return {
        "server": server,
        "command": " ".join(["python", "benchmarks/run.py", *argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": smoke,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PHYS_PAGES') * _PAGE / 2**30:.0f} GiB, {platform.platform()}",
        "pinned": PINNED,
        "versions": {package: version(package) for package in packages},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--only", nargs="*", choices=list(MODULES), default=list(MODULES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--server", choices=list(SERVERS), default="hypercorn")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/results.json")
    args = parser.parse_args()
    if PINNED:
        os.sched_setaffinity(0, {1})  # the server gets core 0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1000 streams, both ends

    runs = 1 if args.smoke else args.runs
    calibration = [calibrate(2000 if args.smoke else 100_000, 1)]
    calibration.append(calibrate(200 if args.smoke else 5000, 5 if args.smoke else 50))
    results, scenarios = [], {}
    for key in args.scenarios:
        scenario = SCENARIOS[key]
        if args.smoke:
            scenario = replace(scenario, **SMOKE[key])  # type: ignore[arg-type]
        scenarios[key] = asdict(scenario)
        names = [name for name in args.only if name in (scenario.only or _ALL)]
        for index in range(runs):  # rounds, so drift over time spreads over every implementation
            results += [measure(scenario, name, index, runs, args.server) for name in names]
    document = {
        "meta": meta(sys.argv[1:], args.smoke, args.server),
        "scenarios": scenarios,
        "calibration": calibration,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
