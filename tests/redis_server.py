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


class RedisServer:
    """One redis-server process on 127.0.0.1, in ``directory``."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = _free_port()
        self.log = directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._tee = threading.Thread()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """The same server, over its Unix socket."""
        return f"unix://{self.directory / 'redis.sock'}?db=0"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start it (again, on the same port and directory), and wait until it
        says it is ready: its log, on a pipe, is the event waited on."""
        assert not self.running, "redis-server is already running"
        args = [
            self.executable,
            *("--bind", "127.0.0.1", "--port", str(self.port)),
            *("--unixsocket", str(self.directory / "redis.sock"), "--unixsocketperm", "700"),
            *("--dir", str(self.directory), "--logfile", ""),  # the log on stdout
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--protected-mode", "no", "--daemonize", "no"),
        ]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._process = process
        ready = threading.Event()
        self._tee = threading.Thread(target=self._copy_log, args=(process, ready), daemon=True)
        self._tee.start()
        if not ready.wait(BOUND) or process.poll() is not None:
            self.stop()
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"redis-server was not ready within {BOUND}s: {log}")

    def _copy_log(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        """Copy the log to ``self.log`` until redis exits (a pipe nobody drains
        would stop it), telling ``ready`` when it accepts connections or exits."""
        assert process.stdout is not None
        with process.stdout, self.log.open("ab") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if b"Ready to accept connections" in line:
                    ready.set()
        ready.set()  # it exited: start() sees that at once, not after BOUND

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
        self._tee.join(BOUND)


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
