"""Idle streams at scale: many open streams whose sources have nothing to say.

    python benchmarks/idle.py                      # 10,000 streams, heartbeat 1 s
    python benchmarks/idle.py --streams 2000 --rounds 3

Each implementation is served by hypercorn (one worker, asyncio, pinned to
core 0) as ``benchmarks.idle:NAME``; this process holds every stream open on
one loop and counts heartbeats. The source is an async one that waits forever,
so no thread is involved: what is measured is the stream itself. Reported:
server RSS per open stream (over the same server with none open), and server
CPU per heartbeat round, in all and per stream. The floor is hand-written for
this one case: a start, then a ping each time ``asyncio.wait_for`` times out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asgi_sse import EventStream  # noqa: E402

_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _heartbeat(scope: Any) -> float:
    return float(parse_qs(scope["query_string"].decode()).get("hb", ["1"])[0])


async def _lifespan(receive: Any, send: Any) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def _silent() -> Any:
    """A source with nothing to say, ever (a watcher of a job that is not reporting)."""
    await asyncio.Event().wait()
    yield  # pragma: no cover


async def asgi_sse(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await EventStream(_silent(), heartbeat=_heartbeat(scope))(scope, receive, send)
    return None


async def floor(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    heartbeat, never = _heartbeat(scope), asyncio.Event()
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    while True:
        try:
            await asyncio.wait_for(never.wait(), heartbeat)
        except asyncio.TimeoutError:
            await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})


# -- the client side ----------------------------------------------------------------------


class _Counter(asyncio.Protocol):
    def __init__(self, pings: list[int], index: int) -> None:
        self.pings, self.index = pings, index

    def data_received(self, data: bytes) -> None:
        self.pings[self.index] += data.count(b": ping\n\n")


async def _until(condition: Any, deadline: float) -> None:
    """Each stream's pings are counted as they come; check once per heartbeat."""
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the streams did not get their heartbeats in time")
        await asyncio.sleep(0.1)  # a benchmark's pace, not a test's synchronisation


async def measure(name: str, streams: int, heartbeat: float, rounds: int) -> dict[str, Any]:
    from run import _server, server_cpu, server_rss  # noqa: PLC0415

    command = [sys.executable, "-m", "hypercorn", f"benchmarks.idle:{name}", "--workers", "1"]
    command += ["--backlog", "2048", "--log-level", "WARNING", "--bind", "fd://{fd}"]
    command += ["--keep-alive", "600"]
    loop = asyncio.get_running_loop()
    with _server(command) as (port, pid):
        request = f"GET /?hb={heartbeat:g} HTTP/1.0\r\nHost: x\r\n\r\n".encode()
        # The server is up once it answers one stream; that one stays open as the baseline.
        pings = [0] * (streams + 1)
        deadline = time.monotonic() + 60
        while True:
            try:
                first, _ = await loop.create_connection(
                    lambda: _Counter(pings, streams), "127.0.0.1", port
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        first.write(request)
        await _until(lambda: pings[streams] > 0, time.monotonic() + 30)
        rss_before = server_rss(pid)
        gate = asyncio.Semaphore(256)  # no more connections in flight than the backlog holds

        async def connect(i: int) -> asyncio.BaseTransport:
            async with gate:
                transport, _ = await loop.create_connection(
                    lambda: _Counter(pings, i), "127.0.0.1", port
                )
                transport.write(request)
                return transport

        opened = time.monotonic()
        transports = await asyncio.gather(*(connect(i) for i in range(streams)))
        await _until(lambda: min(pings) > 0, time.monotonic() + 120)
        setup_s = time.monotonic() - opened
        rss_after = server_rss(pid)
        start_pings, cpu, wall = sum(pings), server_cpu(pid), time.monotonic()
        target = [p + rounds for p in pings]
        await _until(
            lambda: all(p >= t for p, t in zip(pings, target, strict=True)), time.monotonic() + 120
        )
        cpu, wall = server_cpu(pid) - cpu, time.monotonic() - wall
        rounds_seen = (sum(pings) - start_pings) / (streams + 1)
        for transport in (first, *transports):
            transport.close()
    per_round = cpu / rounds_seen
    return {
        "name": name,
        "streams": streams,
        "heartbeat_s": heartbeat,
        "rounds": round(rounds_seen, 2),
        "setup_s": round(setup_s, 2),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_per_stream_kib": round((rss_after - rss_before) / streams / 1024, 1),
        "cpu_per_round_ms": round(per_round * 1e3, 1),
        "cpu_per_stream_per_round_us": round(per_round / (streams + 1) * 1e6, 1),
        "server_cpu_share": round(cpu / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=["floor", "asgi_sse"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    results = []
    for name in args.only:
        result = asyncio.run(measure(name, args.streams, args.heartbeat, args.rounds))
        print(json.dumps(result))
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
