"""Coalescing: what one stalled client costs its job and the server, with and without it.

    python benchmarks/coalesce.py            # 3 runs of each case
    python benchmarks/coalesce.py --smoke    # small sizes, proves the harness (make test)

Each case is a fresh hypercorn (one worker, asyncio, pinned to core 0) serving
``EventStream(Job(report), coalesce=...)``, a job reporting ``--events`` events
over three steps as fast as it can, to two clients at once, each with its own
job: a fast one (``client.py``'s) reads to the end; a stalled one reads nothing
until its job has ended, then everything.

Without coalescing, backpressure holds the stalled client's job once the buffer
and the socket are full, until the send timeout counts the client as gone and
stops the job: its time is the send timeout, by construction, and it does not
complete. That bound is the point of the comparison: with coalescing the job
runs at its own speed, and ``--send-timeout`` (30 s by default in asgi-sse, 2 s
here) sets how large the ratio is. The job stamps its own start and end;
``/ended`` answers once it has ended, which is what releases the stalled client.
Memory is the server's peak RSS (VmHWM of its processes, so no sampler misses a
peak); the kernel's socket buffers, which hold megabytes here, are not in it.

This file is also the app (``hypercorn benchmarks/coalesce:app``), so it imports
its siblings as top-level modules in both roles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import parse_qs

from apps import lifespan
from client import Stream, load
from run import PINNED, ROOT, _server, _tree, meta, server_rss

from asgi_sse import EventStream, Job, Reporter
from asgi_sse._run import DEFAULT_BUFFER_BYTES

STEPS = ("load", "parse", "render")

# -- the app -----------------------------------------------------------------------------


def step_of(i: int, n: int) -> str:
    return STEPS[i * len(STEPS) // n]


@dataclass
class Record:
    """A job's own account of itself: a stopped job sends no completed event."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    ended: int = 0
    outcome: str = ""


_records: dict[str, Record] = {}


def report(n: int, record: Record, loop: asyncio.AbstractEventLoop, on_progress: Reporter) -> Any:
    record.started = time.monotonic_ns()
    try:
        for i in range(n):
            on_progress(step_of(i, n), {"i": i, "t": time.monotonic_ns()})
        record.outcome = "completed"
    except BaseException as exc:  # JobCancelled: the stream gave up on its client
        record.outcome = type(exc).__name__
        raise
    finally:
        record.ended = time.monotonic_ns()
        loop.call_soon_threadsafe(record.done.set)
    return {"events": n, "done": record.ended}


async def app(scope: Any, receive: Any, send: Any) -> None:
    """``/?tag=T&n=N&...`` streams a job; ``/ended?tag=T`` answers once T's job has ended."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    query = {key: value[0] for key, value in parse_qs(scope["query_string"].decode()).items()}
    record = _records.setdefault(query["tag"], Record())
    if scope["path"] == "/ended":
        await record.done.wait()
        job_s = (record.ended - record.started) / 1e9
        body = json.dumps({"outcome": record.outcome, "job_s": job_s}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    stream = EventStream(
        Job(report, int(query["n"]), record, asyncio.get_running_loop()),
        coalesce=query["coalesce"] == "1",
        max_buffer_bytes=int(query["buffer"]),
        send_timeout=float(query["timeout"]),
    )
    await stream(scope, receive, send)


# -- the harness -------------------------------------------------------------------------


@contextmanager
def quiet_server() -> Iterator[tuple[int, int]]:
    """``_server`` with the child's stdout and stderr on /dev/null: a child that
    holds our pipe (a test's capture) keeps its reader waiting for an end."""
    command = [sys.executable, "-m", "hypercorn", "benchmarks/coalesce:app", "--workers", "1"]
    command += ["--log-level", "WARNING", "--bind", "fd://{fd}"]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with ExitStack() as stack, open(os.devnull, "wb") as devnull:
        try:
            for fd in (1, 2):
                os.dup2(devnull.fileno(), fd)
            served = stack.enter_context(_server(command))
        finally:
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
        yield served


def stalled_client(port: int, path: str) -> socket.socket:
    """A 4 KiB window, set before connecting so the handshake offers no more: the
    server's buffers fill at once and its send blocks."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET %s HTTP/1.0\r\nHost: bench\r\n\r\n" % path.encode())
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Once released: a wide window, so what was held back comes quickly."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    received = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    return received.partition(b"\r\n\r\n")[2]


def check_stalled(body: bytes, n: int) -> dict[str, Any]:
    """What the stalled client got; a block cut by a closed connection is left out."""
    blocks = [block.decode().split("\n") for block in body.split(b"\n\n")[:-1]]
    events = [dict(line.partition(": ")[::2] for line in block) for block in blocks]
    events = [fields for fields in events if "event" in fields]  # not heartbeats
    progress = [json.loads(e["data"]) for e in events if e["event"] == "progress"]
    latest = {data["step"]: data["details"]["i"] for data in progress}  # the last of each
    ids = [int(event["id"]) for event in events]
    return {
        "events": len(progress),
        "completed": bool(events) and events[-1]["event"] == "completed",
        "every_steps_last_value": latest == {step_of(i, n): i for i in range(n)},
        "ids_increase": ids == sorted(set(ids)),
    }


async def ended(port: int, tag: str, bound: float) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ended?tag=%s HTTP/1.0\r\nHost: bench\r\n\r\n" % tag.encode())
    response = await asyncio.wait_for(reader.read(), bound)
    writer.close()
    return json.loads(response.partition(b"\r\n\r\n")[2])


def peak_rss(pid: int) -> int:
    """VmHWM over the server's processes: the kernel's own peak, in bytes."""
    status = [Path(f"/proc/{member}/status").read_text() for member in _tree(pid)]
    return sum(int(text.split("VmHWM:")[1].split()[0]) * 1024 for text in status)  # kB


def fast_result(stream: Stream, job: dict[str, Any]) -> dict[str, Any]:
    every = stream.lost == stream.disorder == 0 and stream.completed
    return {
        "events": stream.received,
        "every_event": every,
        "in_order": stream.disorder == 0 and stream.completed,
        "last_report": stream.next_i == stream.n,
        "error": stream.error,
    } | job


async def case(coalesce: bool, args: argparse.Namespace, port: int, pid: int) -> Any:
    def query(n: int, tag: str) -> str:
        sizes = f"n={n}&buffer={args.buffer}&timeout={args.send_timeout:g}"
        return f"/?{sizes}&coalesce={int(coalesce)}&tag={tag}"

    bound, n = args.send_timeout + 60, args.events
    (warm,) = await load(port, query(200, "warm"), streams=1, n=200, deadline=30)
    if not warm.completed:
        raise RuntimeError(f"the warm-up stream failed: {warm.error or warm.status!r}")
    rss_before = server_rss(pid)
    started = time.monotonic()
    with stalled_client(port, query(n, "stalled")) as stalled:
        (fast,) = await load(port, query(n, "fast"), streams=1, n=n, deadline=bound)
        jobs = {tag: await ended(port, tag, bound) for tag in ("fast", "stalled")}
        body = read_to_end(stalled)
    return {
        "coalesce": coalesce,
        "fast": fast_result(fast, jobs["fast"]),
        "stalled": check_stalled(body, n) | jobs["stalled"],
        "rss_before_mib": rss_before / 2**20,
        "rss_peak_mib": peak_rss(pid) / 2**20,
        "wall_s": time.monotonic() - started,
    }


def measure(coalesce: bool, index: int, args: argparse.Namespace) -> dict[str, Any]:
    """One case on a fresh server: its peak is this case's alone."""
    with quiet_server() as (port, pid):
        result = {"run": index} | asyncio.run(case(coalesce, args, port, pid))
    result["as_expected"] = as_expected(result)
    stalled, fast = result["stalled"], result["fast"]
    line = f"coalesce={coalesce!s:<5} run {index + 1}/{args.runs}: stalled job"
    line += f" {stalled['job_s']:.2f} s ({stalled['outcome']}), fast job {fast['job_s']:.2f} s,"
    line += f" peak RSS {result['rss_peak_mib']:.1f} MiB, as expected: {result['as_expected']}"
    print(line, file=sys.stderr, flush=True)
    return result


def as_expected(result: dict[str, Any]) -> bool:
    """With coalescing the stalled client gets its job's end and every step's last
    value; without, its job is stopped at the send timeout. The fast client gets
    every event without; with, only while it keeps up (a job reporting as fast as
    it can outruns it once its core is shared), so it must get the end, in order."""
    fast, stalled = result["fast"], result["stalled"]
    if result["coalesce"]:
        got = stalled["completed"] and stalled["every_steps_last_value"]
        ends = fast["in_order"] and fast["last_report"]
        return ends and got and stalled["ids_increase"] and stalled["outcome"] == "completed"
    stopped = stalled["outcome"] == "JobCancelled" and not stalled["completed"]
    return fast["every_event"] and stopped


FIGURES = {
    "stalled client's job, s": lambda r: r["stalled"]["job_s"],
    "fast client's job, s": lambda r: r["fast"]["job_s"],
    "server peak RSS, MiB": lambda r: r["rss_peak_mib"],
    "server RSS growth, MiB": lambda r: r["rss_peak_mib"] - r["rss_before_mib"],
    "stalled client's events": lambda r: r["stalled"]["events"],
    "fast client's events": lambda r: r["fast"]["events"],
}


def table(runs: list[dict[str, Any]]) -> str:
    """Medians; the ratio is the median of each round's with / without."""
    pairs = list(zip(runs[::2], runs[1::2], strict=True))  # (without, with) per round
    lines = ["| figure | without coalescing | with coalescing | with / without |"]
    lines.append("|---|---:|---:|---:|")
    for figure, get in FIGURES.items():
        off, on = median(get(a) for a, _ in pairs), median(get(b) for _, b in pairs)
        ratio = median(get(b) / get(a) if get(a) else 0.0 for a, b in pairs)
        spec = ",.0f" if off >= 1000 else ",.2f"  # counts whole, seconds and MiB to 0.01
        lines.append(f"| {figure} | {off:{spec}} | {on:{spec}} | {ratio:.2f}x |")
    ends = [", ".join(sorted({b[i]["stalled"]["outcome"] for b in pairs})) for i in (0, 1)]
    lines.append(f"| stalled client's job ended | {ends[0]} | {ends[1]} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--buffer", type=int, default=DEFAULT_BUFFER_BYTES)
    parser.add_argument("--send-timeout", type=float, default=2.0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/coalesce.json")
    args = parser.parse_args()
    if args.smoke:  # 9 MB: still more than the buffer and the kernel's socket buffers hold
        args.runs, args.events, args.send_timeout = 1, 100_000, 1.0
    if PINNED:
        os.sched_setaffinity(0, {1})  # the server gets core 0
    # Rounds, so drift over time spreads over both cases.
    runs = [measure(c, index, args) for index in range(args.runs) for c in (False, True)]
    command = " ".join(["python", "benchmarks/coalesce.py", *sys.argv[1:]])
    document = {"meta": meta(sys.argv[1:], args.smoke, "hypercorn") | {"command": command}}
    document |= {key: vars(args)[key] for key in ("events", "buffer", "send_timeout")}
    document["runs"] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(table(runs))
    print(f"command: {command}")
    print(f"wrote {args.out}", file=sys.stderr)
    if not all(run["as_expected"] for run in runs):
        sys.exit("a case did not behave as expected: see its checks in the JSON")


if __name__ == "__main__":
    main()
