"""Servers the tests run in processes of their own, each by its own command line.

Standard library only: ``test_load`` and ``servers_app`` are also the modules their
server processes import, so this must not pull the test harness in with them.

hypercorn and uvicorn take a socket this process has bound already (clients may
connect at once: the kernel queues them, so nothing waits for the server to be
up). granian binds its own port, so :func:`launch` waits for its worker's
"Started" line, read from its log as it is written.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOUND = 10.0  # seconds, as conftest's: how long a healthy process takes to stop
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BIN = Path(sys.executable).parent

#: The servers users run, as their command lines run them: ``{app}`` is the import
#: path, ``{fd}`` a bound socket's descriptor, ``{port}`` a free port.
SERVERS: dict[str, list[str]] = {
    "hypercorn-asyncio": ["hypercorn", "{app}", "--worker-class", "asyncio", "--bind", "fd://{fd}"],
    "hypercorn-trio": ["hypercorn", "{app}", "--worker-class", "trio", "--bind", "fd://{fd}"],
    "uvicorn": ["uvicorn", "{app}", "--fd", "{fd}", "--no-access-log"],
    "uvicorn-h11": ["uvicorn", "{app}", "--fd", "{fd}", "--no-access-log", "--http", "h11"],
    "granian": [
        *("granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}", "{app}")
    ],
}
#: The ones that speak HTTP/2 without TLS (prior knowledge): uvicorn does not.
HTTP2 = ("hypercorn-asyncio", "hypercorn-trio", "granian")
#: What a server, or asyncio, prints of an error the client never saw (asgi-sse's own
#: log of a failed job is not one: it is meant for the operator).
ERRORS = (
    "Error in ASGI Framework",  # hypercorn
    "Exception in ASGI application",  # uvicorn
    "Application callable raised",  # granian
    "Task exception was never retrieved",
    "Exception in callback",
)


@dataclass
class Running:
    """A server process: its port, and its log as it is written."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for_line(self, text: str, within: float = BOUND) -> None:
        """Return once the log has a line with ``text``; fail if it ends first."""
        with self.changed:
            found = self.changed.wait_for(
                lambda: any(text in line for line in self.lines) or self.lines[-1:] == [""],
                within,
            )
            if not found or self.lines[-1:] == [""]:
                raise AssertionError(f"{self.name} never printed {text!r}:\n{self.log}")

    def signal(self, signum: int, *, group: bool = False) -> None:
        """As a supervisor would (the main process), or a terminal (the whole group)."""
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self.changed:
                self.lines.append(raw.decode(errors="replace"))
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # the end of the log
            self.changed.notify_all()


async def every_token_back(limiter: Any) -> None:
    """Inside a server's app: return once every one of ``limiter``'s tokens is back
    (holding them all at once means each job's thread gave its own back)."""
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    for borrower in borrowers:
        await limiter.acquire_on_behalf_of(borrower)
    for borrower in borrowers:
        limiter.release_on_behalf_of(borrower)


@contextmanager
def launch(
    server: str,
    app: str,
    *options: str,
    env: dict[str, str] | None = None,
    clean_log: bool = True,
) -> Iterator[Running]:
    """Run ``app`` under ``server`` (a key of :data:`SERVERS`) in a process group of
    its own; SIGTERM it at the end, kill it if it hangs, and (``clean_log``) fail on
    any error it logged."""
    with ExitStack() as stack:
        with closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(4096)
            port = sock.getsockname()[1]
            if server == "granian":
                sock.close()  # granian binds the port itself
            command, *args = (
                part.format(app=app, fd=sock.fileno(), port=port) for part in SERVERS[server]
            )
            fds = [] if server == "granian" else [sock.fileno()]
            argv = [str(BIN / command), *args, *options]
            running = stack.enter_context(_supervised(server, argv, env, fds, port))
        if server == "granian":
            running.wait_for_line("Started worker-")
        yield running
    if clean_log:
        assert not any(error in running.log for error in ERRORS), running.log


@contextmanager
def worker(
    name: str, *argv: str, env: dict[str, str] | None = None, last_step: str | None = None
) -> Iterator[Running]:
    """A process that serves no port (a job engine's worker, ``argv[0]`` in the
    venv), run and stopped as :func:`launch` runs a server. ``last_step``: the log
    line of its last step before it exits, in which a known upstream race can hang
    it; hung there, it is killed rather than failed (its work was done)."""
    command = [str(BIN / argv[0]), *argv[1:]]
    with _supervised(name, command, env, [], 0, last_step=last_step) as running:
        yield running


@contextmanager
def _supervised(
    name: str,
    argv: list[str],
    env: dict[str, str] | None,
    fds: list[int],
    port: int,
    *,
    last_step: str | None = None,
) -> Iterator[Running]:
    process = subprocess.Popen(
        argv,
        cwd=TESTS,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])} | (env or {}),
        pass_fds=fds,
        stdout=subprocess.PIPE,  # granian logs there, the others to stderr: one log
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    running = Running(name, process, port)
    reader = threading.Thread(target=running._read, name=f"{name}-log", daemon=True)
    reader.start()
    try:
        last = None if last_step is None else lambda: last_step in running.log
        with stopped_at_exit(process, in_last_step=last):
            yield running
    finally:
        reader.join(BOUND)
        assert process.stdout is not None
        process.stdout.close()


@contextmanager
def stopped_at_exit(
    process: subprocess.Popen[bytes],
    stderr: Path | None = None,
    *,
    in_last_step: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """SIGTERM a server's process group at the end, kill it if it hangs (failing,
    unless ``in_last_step`` says it hangs where it is known to), and (given the file
    its ``stderr`` went to) fail on any traceback it printed."""
    try:
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(BOUND)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if in_last_step is None or not in_last_step():
                raise
        finally:
            with suppress(ProcessLookupError):  # any of its workers that outlived it
                os.killpg(process.pid, signal.SIGKILL)
    if stderr is not None:
        log = stderr.read_text()
        assert "Traceback" not in log, log
