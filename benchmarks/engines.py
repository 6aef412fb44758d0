"""A job on a Celery worker, streamed to the browser: asgi-sse against the polling
pattern users write today, and against the job in the web process.

    python benchmarks/engines.py            # latency and throughput, 3 runs each
    python benchmarks/engines.py --smoke    # tiny sizes, proves the harness (make test)

The same blocking job (``apps.job``) runs three ways, to the same load client:

- ``stream``: in the web process, ``EventStream(Job(...))``: the floor, no engine;
- ``celery``: on a Celery worker (prefork, one process), ``CeleryJobs.enqueue`` and
  ``watch``: each report is pushed to the job's log in Redis, and the web process
  blocks on the log;
- ``polling``: the pattern celery-progress and most tutorials use: the task calls
  ``update_state`` on every report, and the web process asks ``AsyncResult`` for
  the state every 500 ms, sending an event when it has changed. What happened
  between two polls is gone: the client counts it lost.

One redis-server (no persistence) is broker, result backend and log. The web app
is hypercorn (one worker, asyncio) pinned to core 0; the Celery worker, the
redis-server and this client share core 1. Latency is receipt time minus the job's
``monotonic_ns`` stamp (one clock for every process of the machine).

This file is also the Celery app (``celery -A engines:celery worker``) and the web app
(``hypercorn benchmarks/engines:app``), so it imports its siblings as top-level modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from statistics import median
from typing import Any

import anyio
from apps import _HEADERS, Params, job, lifespan
from celery import Celery
from client import load
from resumable import redis_server
from run import PINNED, ROOT, Scenario, _server, meta, one_run

from asgi_sse import EventStream, Job, Reporter
from asgi_sse.resumable import Retention
from asgi_sse.resumable.celery import CeleryJobs, progress_task

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
celery = Celery("bench", broker=URL, backend=URL)
celery.conf.worker_prefetch_multiplier = 1
# Far above the biggest job here: a watcher that falls behind still gets every event, so a
# loss is the path's, not the retention's (by default a log keeps its newest 1000 events).
RETENTION = Retention(max_events=10_000_000, max_bytes=1 << 31, max_age=300)
POLL = 0.5  # seconds: celery-progress's default polling interval


@progress_task(celery)
def pushed(n: int, interval: float, on_progress: Reporter) -> dict[str, int]:
    return job(Params(n=n, interval=interval), on_progress)


@celery.task(bind=True)
def polled(self: Any, n: int, interval: float) -> dict[str, int]:
    def on_progress(step: str, details: dict[str, Any]) -> None:
        self.update_state(state="PROGRESS", meta={"step": step, "details": details})

    return job(Params(n=n, interval=interval), on_progress)


# -- the web app -------------------------------------------------------------------------

_jobs: CeleryJobs | None = None


async def app(scope: Any, receive: Any, send: Any) -> None:
    global _jobs
    if scope["type"] == "lifespan":
        _jobs = CeleryJobs(celery, retention=RETENTION)
        return await lifespan(receive, send)
    params = Params.parse(scope["query_string"])
    if scope["path"] == "/polling":
        return await _poll(params, send)
    if scope["path"] == "/stream":
        source: Any = Job(job, params)
    else:
        assert _jobs is not None
        source = _jobs.watch(await _jobs.enqueue(pushed, params.n, params.interval))
    await EventStream(source)(scope, receive, send)
    return None


async def _poll(params: Params, send: Any) -> None:
    """What a polling view does (celery-progress's, as an event stream): ask for the
    task's state every POLL seconds, send it when it has changed, then the result."""
    outcome = await anyio.to_thread.run_sync(lambda: polled.delay(params.n, params.interval))
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    last = None
    while True:
        await anyio.sleep(POLL)  # the pattern measured: a poll period
        state, info = await anyio.to_thread.run_sync(lambda: (outcome.state, outcome.info))
        if state == "PROGRESS" and info != last:
            last = info
            frame = (
                b"event: progress\ndata: %s\n\n" % json.dumps(info, separators=(",", ":")).encode()
            )
        elif state == "SUCCESS":
            frame = (
                b"event: completed\ndata: %s\n\n" % json.dumps(info, separators=(",", ":")).encode()
            )
        else:
            continue
        await send({"type": "http.response.body", "body": frame, "more_body": state != "SUCCESS"})
        if state == "SUCCESS":
            return


# -- the harness -------------------------------------------------------------------------

PATHS = ("stream", "celery", "polling")
SCENARIOS = {
    "L": Scenario("L", "latency: 1 stream, 400 events 5 ms apart", 1, 400, 0.005, latency=True),
    "T1": Scenario("T1", "throughput: 1 stream x 20,000 events, no sleep", 1, 20_000),
}
SMOKE = {"L": {"n": 20}, "T1": {"n": 200}}


def measure(scenario: Scenario, path: str, url: str, index: int, runs: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "hypercorn", "engines:app", "--workers", "1"]
    command += ["--log-level", "WARNING", "--bind", "fd://{fd}"]
    env = {"BENCH_REDIS_URL": url, "PYTHONPATH": f"{ROOT / 'benchmarks'}:{ROOT}"}
    with _server(command, env) as (port, pid):
        (warm,) = asyncio.run(load(port, f"/{path}?n=5", streams=1, n=5, deadline=30))
        if not warm.completed:
            raise RuntimeError(f"{path} failed its warm-up stream: {warm.error or warm.status!r}")
        result = asyncio.run(one_run(replace(scenario, route=path), port, pid))
    latency = result["latency_us"]
    print(
        f"{scenario.key:>3} {path:<8} run {index + 1}/{runs}: {result['events']:>6}/"
        f"{result['expected']} events, lost {result['lost']}, disorder {result['disorder']},"
        f" {result['rate']:,.0f} events/s, p50/p99 {latency['p50'] or 0:,.0f}/"
        f"{latency['p99'] or 0:,.0f} us",
        file=sys.stderr,
        flush=True,
    )
    return {"name": path, "scenario": scenario.key, "run": index} | result


def _lag(runs: list[dict[str, Any]]) -> str:
    """How long after the job returned the client had its end: what polling adds."""
    leads = [r["job_lead_s"] for r in runs if r["job_lead_s"] is not None]
    return f"{median(leads) * 1e3:,.1f}" if leads else "-"


def table(document: dict[str, Any]) -> str:
    lines = []
    for key, scenario in document["scenarios"].items():
        lines += [f"### {key}: {scenario['title']}", ""]
        lines += [
            "| path | p50 us | p99 us | events/s | vs stream | received | lost | end lag ms |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
        runs = [r for r in document["runs"] if r["scenario"] == key]
        base = median(r["rate"] for r in runs if r["name"] == "stream")
        for path in document["paths"]:
            mine = [r for r in runs if r["name"] == path]
            p50 = [r["latency_us"]["p50"] for r in mine if r["latency_us"]["p50"] is not None]
            p99 = [r["latency_us"]["p99"] for r in mine if r["latency_us"]["p99"] is not None]
            rate = median(r["rate"] for r in mine)
            lines.append(
                f"| {path} | {f'{median(p50):,.0f}' if p50 else '-'}"
                f" | {f'{median(p99):,.0f}' if p99 else '-'} | {rate:,.0f} | {rate / base:.2f}x"
                f" | {median(r['events'] for r in mine):,.0f} / {mine[0]['expected']:,}"
                f" | {sum(r['lost'] for r in mine):,} | {_lag(mine)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/engines.json")
    args = parser.parse_args()
    if PINNED:
        os.sched_setaffinity(0, {1})  # the web app gets core 0; Redis and Celery inherit core 1
    runs, results, scenarios = 1 if args.smoke else args.runs, [], {}
    with redis_server() as (url, _):
        env = os.environ | {"BENCH_REDIS_URL": url, "PYTHONPATH": f"{ROOT / 'benchmarks'}:{ROOT}"}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "engines:celery",
                "worker",
                "-c",
                "1",
                "-l",
                "warning",
            ],
            env=env,
            cwd=ROOT / "benchmarks",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            for key in args.scenarios:
                scenario = SCENARIOS[key]
                if args.smoke:
                    scenario = replace(scenario, **SMOKE[key])  # type: ignore[arg-type]
                scenarios[key] = asdict(scenario)
                for index in range(runs):
                    for path in PATHS:
                        results.append(measure(scenario, path, url, index, runs))
        finally:
            worker.terminate()
            worker.wait(30)
    command = " ".join(["python", "benchmarks/engines.py", *sys.argv[1:]])
    document = {
        "meta": meta(sys.argv[1:], args.smoke, "hypercorn") | {"command": command},
        "paths": list(PATHS),
        "poll_s": POLL,
        "scenarios": scenarios,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(table(document))
    print(f"command: {command}")


if __name__ == "__main__":
    main()
