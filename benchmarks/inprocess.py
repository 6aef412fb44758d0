"""The bridge alone: events/s with no server and a ``send`` that returns at once.

    python benchmarks/inprocess.py              # asgi-sse, by buffer size
    python benchmarks/inprocess.py --round-trip # one from_thread.run_sync per event
    python benchmarks/inprocess.py --latency    # an idle stream's latency, vs the floor
    python benchmarks/inprocess.py --setup      # event-loop CPU to set up and end a stream
    python benchmarks/inprocess.py --anyio      # what anyio's primitives cost, each
    python benchmarks/inprocess.py --observed   # metrics and traces on and off, vs the floor

The second line is why the bridge batches and never waits for the loop: it is
the ceiling of a design that crosses into the loop once per event. The third
times the idle path (an event every 2 ms) without hypercorn's own share, which
over a socket is larger than the difference being measured. The last does the
same for observers (``asgi_sse.metrics``): on this 2-core VM, C1 and B over a
socket spread wider between rounds than the 5 % it must resolve.
"""

from __future__ import annotations

import argparse
import re
import time
from statistics import median
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from apps import Params, asgi_sse, asgi_sse_middleware, asgi_sse_observed, floor, job

from asgi_sse import EventStream, Job


async def stream(n: int, max_buffer_bytes: int) -> None:
    sends = 0

    async def receive() -> Any:
        await anyio.sleep_forever()

    async def send(message: Any) -> None:
        nonlocal sends
        sends += 1

    wall, cpu = time.perf_counter(), time.process_time()
    response = EventStream(Job(job, Params(n=n)), max_buffer_bytes=max_buffer_bytes)
    await response({"type": "http"}, receive, send)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"max_buffer_bytes {max_buffer_bytes:>9,}: {n / wall:>10,.0f} events/s,"
        f" {cpu / n * 1e6:.2f} us CPU/event, {sends:,} sends"
    )


async def round_trip(n: int) -> None:
    send, receive = anyio.create_memory_object_stream[int](n)

    def worker() -> float:
        start = time.perf_counter()
        for i in range(n):
            anyio.from_thread.run_sync(send.send_nowait, i)
        return time.perf_counter() - start

    seconds = await anyio.to_thread.run_sync(worker)
    send.close()
    receive.close()
    print(
        f"from_thread.run_sync per event: {seconds / n * 1e6:.1f} us, {n / seconds:,.0f} events/s"
    )


_STAMP = re.compile(rb'"t":(\d+)')


async def latency(rounds: int) -> None:
    """Alternate floor and asgi-sse, 500 events 2 ms apart each; p50 and p99 in us."""
    results: dict[str, list[str]] = {"floor": [], "asgi_sse": []}
    scope = {"type": "http", "query_string": b"n=500&interval=0.002", "headers": []}
    for _ in range(rounds):
        for name, app in (("floor", floor), ("asgi_sse", asgi_sse)):
            samples: list[int] = []

            async def receive() -> Any:
                await anyio.sleep_forever()

            async def send(message: Any, samples: list[int] = samples) -> None:
                now = time.monotonic_ns()
                samples += [now - int(t) for t in _STAMP.findall(message.get("body", b""))]

            await app(scope, receive, send)
            samples.sort()
            p50, p99 = samples[len(samples) // 2] / 1e3, samples[len(samples) * 99 // 100] / 1e3
            results[name].append(f"{p50:.0f}/{p99:.0f}")
    for name, figures in results.items():
        print(f"{name:>8} p50/p99 us per round: {'  '.join(figures)}")


async def observed(rounds: int, n: int) -> None:
    """Alternate the floor and the middleware with observers off and on: process
    CPU per event for ``n`` events as fast as they come (as C1), and p50 latency
    of 500 events 2 ms apart (as B); medians of ``rounds``, and their ratios."""
    apps = {"floor": floor, "middleware": asgi_sse_middleware, "observed": asgi_sse_observed}
    cpu: dict[str, list[float]] = {name: [] for name in apps}
    p50: dict[str, list[float]] = {name: [] for name in apps}

    async def receive() -> Any:
        await anyio.sleep_forever()

    for _ in range(rounds):
        for name, app in apps.items():
            stamps: list[int] = []

            async def send(message: Any, stamps: list[int] = stamps) -> None:
                now = time.monotonic_ns()
                stamps.extend(now - int(t) for t in _STAMP.findall(message.get("body", b"")))

            scope = {"type": "http", "query_string": b"n=%d" % n, "headers": []}
            start = time.process_time()
            await app(scope, receive, send)
            cpu[name].append((time.process_time() - start) / n * 1e6)
            stamps.clear()
            scope = {"type": "http", "query_string": b"n=500&interval=0.002", "headers": []}
            await app(scope, receive, send)
            p50[name].append(sorted(stamps)[len(stamps) // 2] / 1e3)
    for name in apps:
        c, p = median(cpu[name]), median(p50[name])
        print(
            f"{name:>10}: {c:.2f} us CPU/event ({c / median(cpu['floor']):.2f}x the floor),"
            f" p50 {p:.0f} us ({p / median(p50['floor']):.2f}x);"
            f" CPU rounds {' '.join(f'{x:.2f}' for x in cpu[name])}"
        )


async def setup(streams: int) -> None:
    """CPU per stream for ``streams`` concurrent one-event streams: what a burst of
    new connections costs the event loop beyond the server's own share."""
    scope = {"type": "http", "query_string": b"n=1", "headers": []}

    async def receive() -> Any:
        await anyio.sleep_forever()

    async def send(message: Any) -> None:
        pass

    apps = ("floor", floor), ("asgi_sse", asgi_sse), ("middleware", asgi_sse_middleware)
    for name, app in (*apps, ("observed", asgi_sse_observed)) * 2:
        cpu = time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(streams):
                tg.start_soon(app, scope, receive, send)
        print(f"{name:>10}: {(time.process_time() - cpu) / streams * 1e6:.0f} us CPU per stream")


async def primitives(n: int) -> None:
    """Wall time per use of the anyio primitives a stream is built of: what a
    stream's set-up cannot go below while it uses them."""

    async def noop() -> None:
        pass

    def timed(label: str, seconds: float, uses: int = n) -> None:
        print(f"{label:<34} {seconds / uses * 1e6:7.2f} us")

    start = time.perf_counter()
    for _ in range(n):
        async with anyio.create_task_group():
            pass
    timed("task group, entered and left", time.perf_counter() - start)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(noop)
    timed("start_soon, task run to its end", time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        with anyio.move_on_after(10):  # noqa: ASYNC100 (its cost is the point)
            pass
    timed("move_on_after, entered and left", time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        anyio.Event()
    timed("anyio.Event()", time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        anyio.current_time()
    timed("anyio.current_time()", time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        time.monotonic()
    timed("time.monotonic()", time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--round-trip", action="store_true")
    parser.add_argument("--latency", type=int, metavar="ROUNDS", nargs="?", const=6)
    parser.add_argument("--setup", type=int, metavar="STREAMS", nargs="?", const=200)
    parser.add_argument("--anyio", action="store_true")
    parser.add_argument("--observed", type=int, metavar="ROUNDS", nargs="?", const=7)
    args = parser.parse_args()
    if args.observed:
        anyio.run(observed, args.observed, min(args.events, 100_000))
        return
    if args.anyio:
        anyio.run(primitives, 5000)
        return
    if args.setup:
        anyio.run(setup, args.setup)
        return
    if args.latency:
        anyio.run(latency, args.latency)
        return
    if args.round_trip:
        anyio.run(round_trip, min(args.events, 20_000))
        return
    for size in (64 * 1024, 256 * 1024, 1024 * 1024):
        anyio.run(stream, args.events, size)


if __name__ == "__main__":
    main()
