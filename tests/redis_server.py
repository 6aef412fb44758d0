"""A real ``redis-server`` for the tests, which can be stopped and started again.

It keeps an append-only file synced on every write and no snapshots, so a
restart (same port, same directory) comes back with every write it answered:
the tests can cut Redis off mid-job without also losing the job's data.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BOUND = 10.0  # seconds: how long to wait for something that should happen at once (as conftest)
SKIP = "redis-server missing: run scripts/system-deps.sh (installs it as root)"


def find_redis_server() -> str | None:
    """Debian installs it in /usr/bin; some images keep daemons in /usr/sbin."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in (Path("/usr/sbin/redis-server"), Path("/usr/local/sbin/redis-server")):
        if candidate.exists():
            return str(candidate)
    return None


def _free_port() -> int:
    # redis-server binds the port itself, so there is a small window in which
    # another process could take it; redis then fails to start, loudly.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1, in ``directory``."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = _free_port()
        self.log = directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start it (again, on the same port and directory), and wait until it answers."""
        assert not self.running, "redis-server is already running"
        args = [
            self.executable,
            *("--bind", "127.0.0.1", "--port", str(self.port)),
            *("--dir", str(self.directory), "--logfile", str(self.log)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--protected-mode", "no", "--daemonize", "no"),
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        give_up = time.monotonic() + BOUND
        poll = threading.Event()  # never set: the pause between PINGs
        while not _ping(self.port):
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"redis-server exited at start: {err}{log}")
            if time.monotonic() > give_up:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {BOUND}s")
            poll.wait(0.02)

    def stop(self) -> None:
        """Stop it as an operator would (SIGTERM), and wait until it has exited."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(BOUND)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def start_redis(directory: Path) -> RedisServer:
    """A running redis-server in ``directory``, or a skip saying how to install one."""
    executable = find_redis_server()
    if executable is None:
        pytest.skip(SKIP)
    server = RedisServer(executable, directory)
    server.start()
    return server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, terminated after it."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = start_redis(directory)
    try:
        yield server
    finally:
        server.stop()
