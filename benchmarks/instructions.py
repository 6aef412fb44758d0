"""Instructions, not seconds: what observers (``asgi_sse.metrics``) add to a stream,
counted by callgrind, so that a bound of 5 % can be resolved on a noisy 2-core VM.

    python benchmarks/instructions.py            # observers off and on, 3 workloads
    python benchmarks/instructions.py --smoke    # tiny sizes (make test)

The app is the middleware as ``apps.asgi_sse_middleware`` and
``apps.asgi_sse_observed`` build it (40 threads, Prometheus and an OpenTelemetry
SDK tracer recording every span), called in process with a ``send`` that returns
at once. Three workloads, each the share of a socket scenario that asgi-sse runs:

- ``burst``: one stream of events as fast as the job makes them (as C1);
- ``paced``: one stream of events 1 ms apart, each its own send (as B's streams);
- ``streams``: one-event streams one after another (B's 200 set-ups and ends).

Each runs in a process of its own under ``valgrind --tool=callgrind``, with N
and 2N units; the difference over N is one unit's instructions, start-up
cancelled out. ``PYTHONHASHSEED`` is fixed, so a count repeats, but for ``burst``:
its batch sizes, so its sends, follow the thread's and the loop's timing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import anyio

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter

WORKLOADS = {"burst": 4000, "paced": 400, "streams": 100}  # N per workload
SMOKE = {"burst": 40, "paced": 4, "streams": 2}


def job(n: int, interval: float, on_progress: Reporter) -> int:
    for i in range(n):
        on_progress("step", {"i": i, "t": time.monotonic_ns()})
        if interval:
            time.sleep(interval)
    return n


def build(observed: bool) -> tuple[Any, Any]:
    """The app, and the registry its Prometheus observer counts in (None: unobserved)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        n, interval = scope["job"]
        await EventStream(Job(job, n, interval))(scope, receive, send)

    observers: list[Any] = []
    registry = None
    if observed:
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        from asgi_sse.metrics.otel import OpenTelemetryTracing  # noqa: PLC0415
        from asgi_sse.metrics.prometheus import PrometheusMetrics  # noqa: PLC0415

        registry = CollectorRegistry()
        observers = [
            PrometheusMetrics(registry=registry),
            OpenTelemetryTracing(tracer_provider=TracerProvider()),
        ]
    middleware = EventStreamMiddleware(
        app, threads=40, max_streams=40, queue=1000, observers=observers
    )
    return middleware, registry


async def child(workload: str, observed: bool, units: int) -> None:
    """Run ``units`` of ``workload`` through the app, in this process."""
    app, registry = build(observed)

    async def receive() -> Any:
        await anyio.sleep_forever()

    async def send(message: Any) -> None:
        pass

    def scope(n: int, interval: float) -> dict[str, Any]:
        return {"type": "http", "path": "/", "headers": [], "job": (n, interval)}

    await app(scope(1, 0.0), receive, send)  # warm: first-use costs are start-up
    if workload == "streams":
        for _ in range(units):
            await app(scope(1, 0.0), receive, send)
    else:
        await app(scope(units, 0.001 if workload == "paced" else 0.0), receive, send)
    if registry is not None:  # the observers saw every stream: what is counted is real
        seen = registry.get_sample_value("asgi_sse_streams_total", {"outcome": "completed"})
        expected = 1 + (units if workload == "streams" else 1)
        if seen != expected:
            raise RuntimeError(f"observers counted {seen} streams of {expected}")


def count(workload: str, observed: bool, units: int) -> int:
    """Instructions of a whole child process under callgrind."""
    command = [
        *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
        *(sys.executable, __file__, "--child", workload, str(int(observed)), str(units)),
    ]
    env = os.environ | {"PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "OBSERVED", "UNITS"))
    args = parser.parse_args()
    if args.child:
        workload, observed, units = args.child
        anyio.run(child, workload, observed == "1", int(units))
        return
    if shutil.which("valgrind") is None:
        parser.error("counting instructions needs valgrind (Debian's package valgrind)")
    sizes = SMOKE if args.smoke else WORKLOADS
    found: dict[str, tuple[float, float]] = {}
    print("| workload | unit | observers off | observers on | on / off |")
    print("|---|---|---:|---:|---:|")
    for workload, n in sizes.items():
        per_unit = {}
        for observed in (False, True):
            one, two = count(workload, observed, n), count(workload, observed, 2 * n)
            per_unit[observed] = (two - one) / n
        off, on = per_unit[False], per_unit[True]
        unit = "stream" if workload == "streams" else "event"
        print(f"| {workload} | {unit} | {off:,.0f} | {on:,.0f} | {on / off:.3f}x |")
        found[workload] = (off, on)
    # B's share: a stream's set-up and end, and its 100 events, each its own send.
    off, on = (found["streams"][i] + 100 * found["paced"][i] for i in (0, 1))
    row = f"| B: 100 paced events | stream | {off:,.0f} | {on:,.0f} | {on / off:.3f}x |"
    print(row)
    print(" ".join(["command: python benchmarks/instructions.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
