"""`make demo-distributed`: the distributed example on this machine, in one command.

Starts a redis-server (unless given one), one Celery worker and hypercorn with two
worker processes serving ``examples.distributed:app``, then waits for Ctrl-C and
stops them all. Their logs go to files in a temporary directory, named at start.

    python scripts/distributed_demo.py [--port 8000] [--redis-url redis://...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BOUND = 30.0  # seconds for a process to be ready, or to stop


def started(
    name: str, argv: list[str], logs: Path, ready: str, **popen: object
) -> subprocess.Popen[bytes]:
    """Start ``argv``, copy its output to ``logs/name.log``, and return once a line of
    it contains ``ready`` (or fail, if it exits first or takes longer than BOUND)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)  # type: ignore[call-overload]
    seen = threading.Event()

    def copy() -> None:
        assert process.stdout is not None
        with (logs / f"{name}.log").open("wb") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if ready.encode() in line:
                    seen.set()
        seen.set()

    threading.Thread(target=copy, daemon=True).start()
    if not seen.wait(BOUND) or process.poll() is not None:
        process.kill()
        raise SystemExit(f"{name} did not start: see {logs / f'{name}.log'}")
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--redis-url", help="an existing Redis (default: start one)")
    options = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="asgi-sse-demo-"))
    children: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        url = options.redis_url
        if url is None:
            redis = shutil.which("redis-server") or "/usr/bin/redis-server"
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                redis_port = probe.getsockname()[1]
            argv = [
                redis,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(logs),
            ]
            children.append(started("redis", argv, logs, "Ready to accept connections"))
            url = f"redis://127.0.0.1:{redis_port}/0"
        env = os.environ | {"REDIS_URL": url, "PYTHONPATH": str(ROOT)}
        celery = [
            str(BIN / "celery"),
            "-A",
            "examples.celery_app",
            "worker",
            "-c",
            "2",
            "-l",
            "info",
        ]
        children.append(started("celery", celery, logs, " ready.", env=env, cwd=ROOT))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", options.port))
        sock.listen(128)
        port = sock.getsockname()[1]
        web = [str(BIN / "hypercorn"), "examples.distributed:app", "--workers", "2"]
        web += ["--bind", f"fd://{sock.fileno()}"]
        children.append(
            started(
                "hypercorn", web, logs, "Running on", env=env, cwd=ROOT, pass_fds=[sock.fileno()]
            )
        )
        sock.close()
        print(f"Logs in {logs}. Stop with Ctrl-C.", flush=True)
        print(f"Serving on http://127.0.0.1:{port}", flush=True)
        while not stop.wait(1.0) and all(child.poll() is None for child in children):
            pass
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + BOUND
        for child in reversed(children):
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
