"""Events/s for one stream whose producer never sleeps, per implementation.

    python benchmarks/throughput.py                 # the full run (make bench)
    python benchmarks/throughput.py --events 2000 --runs 1 --json    # a smoke run

Each implementation in ``apps.py`` is served by hypercorn (one worker) in its own
process pinned to core 0; this process is the client, pinned to core 1. The
client reads the raw stream, checks that every id arrived once and in order and
that the stream ended with the ``completed`` event, and reports any loss. Server
CPU comes from /proc, so it includes everything the server process did.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["floor", "asgi_sse", "asgi_sse_middleware", "queue_pattern"]
_ID = re.compile(rb"\nid: (\d+)\n")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    name: str
    events: int  # progress events received, in order
    lost: int
    completed: bool
    seconds: float
    server_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def _two_cores() -> bool:
    return {0, 1} <= os.sched_getaffinity(0)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants: hypercorn serves from a worker process."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [p for child in children for p in _tree(int(child))]


def _cpu_seconds(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / _TICK


def _peak_rss_mib(pid: int) -> float:
    peaks = []
    for member in _tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def fetch(port: int, n: int) -> tuple[int, int, bool, float, float]:
    """One stream: (in-order events, lost events, completed?, seconds, client CPU)."""
    cpu = time.thread_time()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # HTTP/1.0: the body is close-delimited, no chunk framing to strip.
        sock.sendall(b"GET /?n=%d HTTP/1.0\r\nHost: bench\r\n\r\n" % n)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, data = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        expected, completed = 1, False
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            cut = data.rfind(b"\n\n") + 2
            if cut < 2:
                continue
            whole, data = data[:cut], data[cut:]
            ids = list(map(int, _ID.findall(b"\n" + whole)))
            if b"event: completed\n" in whole:
                completed = True
                ids = ids[:-1]
            if ids != list(range(expected, expected + len(ids))):
                raise AssertionError(f"ids out of order near {expected}")
            expected += len(ids)
    seconds = time.perf_counter() - start
    received = expected - 1
    return received, n - received, completed, seconds, time.thread_time() - cpu


def measure(name: str, n: int, runs: int) -> tuple[list[Run], float]:
    """Serve ``name`` in a fresh process; return its runs and its peak RSS (MiB)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    pin = ["taskset", "-c", "0"] if _two_cores() and shutil.which("taskset") else []
    hypercorn = [sys.executable, "-m", "hypercorn", f"benchmarks.apps:{name}", "--workers", "1"]
    server = subprocess.Popen(
        [*pin, *hypercorn, "--bind", f"fd://{sock.fileno()}"],
        cwd=ROOT,
        pass_fds=[sock.fileno()],
    )
    sock.close()
    try:
        fetch(port, min(n, 2000))  # warm-up: imports, thread pool, first connection
        results = []
        for _ in range(runs):
            cpu = _cpu_seconds(server.pid)
            events, lost, completed, seconds, client_cpu = fetch(port, n)
            server_cpu = _cpu_seconds(server.pid) - cpu
            results.append(Run(name, events, lost, completed, seconds, server_cpu, client_cpu))
        return results, _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=NAMES, default=NAMES)
    parser.add_argument("--json", action="store_true", help="print raw runs as JSON")
    args = parser.parse_args()
    if _two_cores():
        os.sched_setaffinity(0, {1})  # the server gets core 0

    table, raw = [], []
    for name in args.only:
        runs, rss = measure(name, args.events, args.runs)
        raw += [asdict(run) | {"rate": run.rate, "peak_rss_mib": rss} for run in runs]
        rates = [run.rate for run in runs]
        table.append(
            (
                name,
                statistics.median(rates),
                min(rates),
                max(rates),
                statistics.median(r.server_cpu / args.events * 1e6 for r in runs),
                statistics.median(r.client_cpu / args.events * 1e6 for r in runs),
                sum(r.lost for r in runs),
                all(r.completed for r in runs),
                rss,
            )
        )
    if args.json:
        print(json.dumps(raw))
        return
    floor_rate = next((row[1] for row in table if row[0] == "floor"), None)
    print(
        f"{args.runs} runs of 1 stream x {args.events:,} events, producer never sleeps;"
        f" Python {platform.python_version()}, hypercorn {version('hypercorn')},"
        f" anyio {version('anyio')}, msgspec {version('msgspec')}, {os.cpu_count()} cores\n"
    )
    print(
        "| implementation | events/s (median) | min - max | vs floor | server CPU us/event"
        " | client CPU us/event | lost | completed | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, median, low, high, server, client, lost, completed, rss in table:
        ratio = f"{median / floor_rate:.2f}x" if floor_rate else "-"
        print(
            f"| {name} | {median:,.0f} | {low:,.0f} - {high:,.0f} | {ratio} | {server:.2f}"
            f" | {client:.2f} | {lost} | {'yes' if completed else 'NO'} | {rss:.0f} |"
        )


if __name__ == "__main__":
    main()
