"""Resumable jobs: what the log in Redis costs over a plain stream and over memory.

    python benchmarks/resumable.py            # latency and throughput, 5 runs each
    python benchmarks/resumable.py --smoke    # tiny sizes, proves the harness (make test)

Three paths stream the same job (``apps.job``) to the same load client:

- ``baseline``: ``EventStream(Job(...))``, the plain stream (``apps:asgi_sse``);
- ``memory``: ``Jobs(MemoryBackend)``: the request starts the job and watches it;
- ``redis``: the same with ``Jobs(RedisBackend)`` on a redis-server this script
  starts on a free port (no persistence), flushed before every run;
- ``redis_floor``: the hand-written floor of a log in Redis (``floor_app``): the
  job's batches, one ``XADD`` each, relayed to the client by a blocking ``XREAD``.
  No ids kept, no leases, no trimming, no cancel: only the two round trips.

The app server is hypercorn (one worker, asyncio), fresh per run, pinned to
core 0; this client and redis-server share core 1, so Redis does not take CPU
from the server it serves. Retention is set far above any job's size: a watcher
that falls behind then still gets every event, and a loss is the path's, not the
retention's. Latency is receipt time minus the job's ``monotonic_ns`` stamp, as
in ``run.py``; loss is the client's check of the job's own counter (every event
exactly once, in order, then ``completed``).

This file is also the app (``hypercorn benchmarks/resumable:app``), so it imports
its siblings as top-level modules in both roles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from statistics import median
from typing import Any

import anyio
from apps import _HEADERS, Params, job, lifespan, relay
from client import load
from run import PINNED, ROOT, Scenario, _server, _stop, meta, one_run, serve, server_cpu

from asgi_sse import EventStream, Job
from asgi_sse.resumable import Jobs, Retention

# -- the app -----------------------------------------------------------------------------

# Far above the biggest job here (200,000 events of ~80 bytes): nothing is trimmed.
_RETENTION = Retention(max_events=10_000_000, max_bytes=1 << 31, max_age=300)


def _jobs() -> Jobs:
    url = os.environ.get("BENCH_REDIS_URL")
    if not url:
        return Jobs(retention=_RETENTION)
    from redis.asyncio import Redis  # noqa: PLC0415 (the server with Redis only)

    from asgi_sse.resumable.redis import RedisBackend  # noqa: PLC0415

    pool = int(os.environ.get("BENCH_REDIS_POOL", "0")) or None  # None: redis-py's default
    return Jobs(RedisBackend(Redis.from_url(url, max_connections=pool)), retention=_RETENTION)


_jobs_here: Jobs | None = None


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Start the job, then watch it in the same request: its events go through
    the backend's log before they reach the client."""
    global _jobs_here
    if scope["type"] == "lifespan":
        _jobs_here = _jobs()
        async with _jobs_here:
            await lifespan(receive, send)
        return
    assert _jobs_here is not None
    job_id = await _jobs_here.start(Job(job, Params.parse(scope["query_string"])))
    await EventStream(_jobs_here.watch(job_id))(scope, receive, send)


async def floor_app(scope: Any, receive: Any, send: Any) -> None:
    """``redis_floor``: the hand-written floor's batches (``apps.relay``), one
    ``XADD`` each; the response follows the stream with a blocking ``XREAD``."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    from redis.asyncio import Redis  # noqa: PLC0415

    client = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    key = f"floor:{id(scope)}"

    async def publish() -> None:
        async for batch in relay(Params.parse(scope["query_string"])):
            await client.xadd(key, {"d": b"".join(batch)})
        await client.xadd(key, {"end": 1})

    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    async with anyio.create_task_group() as tg:
        tg.start_soon(publish)
        after, ended = "0-0", False
        while not ended:
            reply = await client.xread({key: after}, block=1000)
            if not reply:
                continue
            entries = reply[0][1]
            after, ended = entries[-1][0], b"end" in entries[-1][1]
            body = b"".join(fields.get(b"d", b"") for _, fields in entries)
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await client.delete(key)
    await client.aclose()
    return None


# -- the harness -------------------------------------------------------------------------

PATHS = ("baseline", "memory", "redis", "redis_floor")
SCENARIOS = {
    "L": Scenario("L", "latency: 1 stream, 2000 events 1 ms apart", 1, 2000, 0.001, latency=True),
    "T1": Scenario("T1", "throughput: 1 stream x 200,000 events, no sleep", 1, 200_000),
    "T50": Scenario("T50", "throughput: 50 streams x 5,000 events, no sleep", 50, 5000),
}
SMOKE = {"L": {"n": 50}, "T1": {"n": 2000}, "T50": {"streams": 5, "n": 200}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A throwaway redis-server on this process's core: yields (url, pid)."""
    port = _free_port()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_ready(port, server)
        yield f"redis://127.0.0.1:{port}/0", server.pid
    finally:
        _stop(server)


def _wait_ready(port: int, server: subprocess.Popen[bytes], bound: float = 10.0) -> None:
    """Until redis answers PING (it cannot be handed a listening socket)."""
    from redis import Redis  # noqa: PLC0415
    from redis.exceptions import ConnectionError as NotYet  # noqa: PLC0415

    deadline = time.monotonic() + bound
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited with {server.returncode}")
        try:
            with Redis(port=port, socket_timeout=1) as client:
                client.ping()
                return
        except NotYet:
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer in {bound} s") from None
        time.sleep(0.02)  # a poll period: redis-server signals readiness no other way


def _serve(path: str, redis_url: str, pool: int) -> AbstractContextManager[tuple[int, int]]:
    if path == "baseline":
        return serve("hypercorn", "asgi_sse", 0)
    target = "benchmarks/resumable:" + ("floor_app" if path == "redis_floor" else "app")
    command = [sys.executable, "-m", "hypercorn", target]
    command += ["--workers", "1", "--backlog", "2048", "--log-level", "WARNING"]
    env = {"BENCH_REDIS_URL": redis_url, "BENCH_REDIS_POOL": str(pool)} if redis_url else {}
    return _server([*command, "--bind", "fd://{fd}"], env)


def measure(
    scenario: Scenario,
    path: str,
    redis: tuple[str, int] | None,
    *,
    pool: int,
    index: int,
    runs: int,
) -> dict[str, Any]:
    """One run on a fresh app server after a warm-up stream; Redis's own CPU is
    counted apart from the server's."""
    url, redis_pid = redis if redis else ("", 0)
    if redis:
        from redis import Redis  # noqa: PLC0415

        with Redis.from_url(url) as client:
            client.flushall()
    with _serve(path, url, pool) as (port, pid):
        (warm,) = asyncio.run(load(port, "/?n=200", streams=1, n=200, deadline=30))
        if not warm.completed:
            raise RuntimeError(f"{path} failed its warm-up stream: {warm.error or warm.status!r}")
        redis_before = server_cpu(redis_pid) if redis_pid else 0.0
        result = asyncio.run(one_run(scenario, port, pid))
        redis_cpu = server_cpu(redis_pid) - redis_before if redis_pid else 0.0
    result["redis_us_per_event"] = redis_cpu / max(result["events"], 1) * 1e6
    latency = result["latency_us"]
    print(
        f"{scenario.key:>4} {path:<8} run {index + 1}/{runs}:"
        f" {result['events']:>7}/{result['expected']} events, lost {result['lost']},"
        f" disorder {result['disorder']}, unfinished {result['unfinished']},"
        f" {result['rate']:,.0f} events/s, p50/p99 {latency['p50'] or 0:,.0f}/"
        f"{latency['p99'] or 0:,.0f} us",
        file=sys.stderr,
        flush=True,
    )
    return {"name": path, "scenario": scenario.key, "run": index} | result


def _median(runs: list[dict[str, Any]], get: Any) -> float | None:
    values = [v for v in (get(run) for run in runs) if v is not None]
    return median(values) if values else None


def table(document: dict[str, Any]) -> str:
    """Medians over the runs, per scenario and path."""
    lines = []
    for key, scenario in document["scenarios"].items():
        lines += [
            f"### {key}: {scenario['title']}",
            "",
            "| path | p50 us | p99 us | events/s | vs baseline | server us/event"
            " | redis us/event | lost | disorder | unfinished |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by_path = {
            path: [r for r in document["runs"] if r["scenario"] == key and r["name"] == path]
            for path in document["paths"]
        }
        base = _median(by_path.get("baseline", []), lambda r: r["rate"])
        for path, runs in by_path.items():
            if not runs:
                continue
            p50 = _median(runs, lambda r: r["latency_us"]["p50"])
            p99 = _median(runs, lambda r: r["latency_us"]["p99"])
            rate = _median(runs, lambda r: r["rate"]) or 0.0
            server = _median(runs, lambda r: r["server_us_per_event"]) or 0.0
            redis = _median(runs, lambda r: r["redis_us_per_event"]) or 0.0
            lines.append(
                f"| {path} | {'-' if p50 is None else f'{p50:,.0f}'}"
                f" | {'-' if p99 is None else f'{p99:,.0f}'} | {rate:,.0f}"
                f" | {rate / base if base else 0:.2f}x | {server:.1f} | {redis:.1f}"
                f" | {sum(r['lost'] for r in runs)} | {sum(r['disorder'] for r in runs)}"
                f" | {sum(r['unfinished'] for r in runs)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--paths", nargs="*", choices=PATHS, default=list(PATHS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--redis-pool",
        type=int,
        default=1000,
        help="the app's redis-py pool size (0: redis-py's default, 100 in redis-py 8, which"
        " 50 jobs outgrow: each holds a blocking XREAD and an append at once, plus lease keys)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/resumable.json")
    args = parser.parse_args()
    on_redis = {"redis", "redis_floor"} & set(args.paths)
    if on_redis and shutil.which("redis-server") is None:
        parser.error("the redis path needs redis-server on PATH")
    if PINNED:
        os.sched_setaffinity(0, {1})  # the app server gets core 0; redis-server inherits core 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    runs = 1 if args.smoke else args.runs
    scenarios: dict[str, Any] = {}
    results = []
    redis_cm = redis_server() if on_redis else nullcontext(None)
    with redis_cm as redis:
        for key in args.scenarios:
            scenario = SCENARIOS[key]
            if args.smoke:
                scenario = replace(scenario, **SMOKE[key])  # type: ignore[arg-type]
            scenarios[key] = asdict(scenario)
            for index in range(runs):  # rounds: drift over time spreads over every path
                for path in args.paths:
                    results.append(
                        measure(
                            scenario,
                            path,
                            redis if path in on_redis else None,
                            pool=args.redis_pool,
                            index=index,
                            runs=runs,
                        )
                    )
    command = " ".join(["python", "benchmarks/resumable.py", *sys.argv[1:]])
    document = {
        "meta": meta(sys.argv[1:], args.smoke, "hypercorn") | {"command": command},
        "paths": args.paths,
        "redis_pool": args.redis_pool,
        "scenarios": scenarios,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(table(document))
    print(f"command: {command}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
