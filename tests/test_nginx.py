"""Behind a real nginx: the location block docs/nginx.md recommends, and nginx's defaults.

Each test starts its own nginx (the Debian package; ``scripts/system-deps.sh`` installs it) in
the foreground on a unix socket of its own (no port to race for), in front of a real hypercorn
(on 127.0.0.1), with a configuration
written into ``tmp_path``. The recommended location block is read from docs/nginx.md itself, so
the documented configuration is the one under test.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import BOUND, serve
from httpx_sse import connect_sse

from asgi_sse import EventStream, Job, JobCancelled, Reporter, stream_progress

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_UPSTREAM = "proxy_pass http://127.0.0.1:8000;"
DOCUMENTED_TIMEOUT = re.compile(r"proxy_read_timeout\s+[^;]+;")
PREFIX = "/events/"  # the documented location's prefix; the test apps answer any path


def nginx_blocks(markdown: Path) -> list[str]:
    return re.findall(r"^```nginx\n(.*?)^```", markdown.read_text(encoding="utf-8"), re.M | re.S)


def documented_location(upstream: str, read_timeout: str | None = None) -> str:
    """docs/nginx.md's first nginx block, with only the upstream (and timeout) replaced."""
    block = nginx_blocks(ROOT / "docs" / "nginx.md")[0]
    assert block.count(DOCUMENTED_UPSTREAM) == 1, "docs/nginx.md's proxy_pass line changed"
    block = block.replace(DOCUMENTED_UPSTREAM, f"proxy_pass {upstream};")
    if read_timeout is not None:
        block, replaced = DOCUMENTED_TIMEOUT.subn(f"proxy_read_timeout {read_timeout};", block)
        assert replaced == 1, "docs/nginx.md's location has no proxy_read_timeout to shorten"
    assert block.lstrip().startswith(f"location {PREFIX} {{"), block
    return block


def default_location(upstream: str, *extra: str) -> str:
    """What someone writes who has not read the docs: proxy_pass and nothing else."""
    lines = "\n".join(f"    {line}" for line in (f"proxy_pass {upstream};", *extra))
    return f"location {PREFIX} {{\n{lines}\n}}\n"


def upstream_of(url: str) -> str:
    return url.rstrip("/")  # "http://127.0.0.1:PORT": no path, so nginx passes the path on


@dataclass
class Nginx:
    socket: Path  # where it listens
    error_log: Path
    url: str = f"http://nginx{PREFIX}stream"  # the documented prefix; the host is not looked up

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), timeout=BOUND)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.skip(
            "NGINX IS NOT INSTALLED: the tests behind a real nginx did not run."
            " Install it with `sudo scripts/system-deps.sh` (make test does so when run as root;"
            " .ci/run always does)."
        )
    return found


@contextmanager
def nginx(location: str, tmp_path: Path) -> Iterator[Nginx]:
    """Run nginx in the foreground with ``location`` in its only server, for one test."""
    binary = nginx_binary()
    listening = tmp_path / "nginx.sock"
    error_log = tmp_path / "error.log"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    indented = "\n".join(f"        {line}" for line in location.splitlines())
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp_path / "nginx.pid"};
error_log {error_log} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp_paths}
    server {{
        listen unix:{listening};
{indented}
    }}
}}
""",
        encoding="utf-8",
    )
    # -e: the log for start-up, before the configuration's own error_log is read.
    command = [binary, "-p", str(tmp_path), "-e", str(error_log), "-c", str(conf)]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, f"nginx rejected the configuration:\n{check.stderr}\n{conf}"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + BOUND
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(listening))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("nginx did not accept connections in time") from None
            try:  # the pause between attempts, which also notices nginx exiting
                process.wait(0.02)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"nginx exited at start-up: {error_log.read_text()}")
        yield Nginx(socket=listening, error_log=error_log)
    finally:
        process.terminate()
        try:
            process.wait(BOUND)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(BOUND)
            raise AssertionError("nginx did not stop on SIGTERM") from None


def test_the_readme_recommends_the_documented_location_block() -> None:
    assert nginx_blocks(ROOT / "README.md")[0] == nginx_blocks(ROOT / "docs" / "nginx.md")[0]


@pytest.mark.parametrize(
    "config",
    [
        "documented",
        "defaults",  # proxy_pass only: x-accel-buffering: no alone keeps events apart
    ],
)
def test_each_event_passes_nginx_before_the_job_makes_the_next(config: str, tmp_path: Path) -> None:
    gates = [threading.Event() for _ in range(5)]

    def job(on_progress: Reporter) -> dict[str, str]:
        for i, gate in enumerate(gates):
            on_progress("step", {"i": i})
            if not gate.wait(BOUND):  # the client sets it on receipt of event i
                raise TimeoutError(f"event {i} was held back in nginx")
        return {"status": "done"}

    with serve(stream_progress(job)) as server:
        upstream = upstream_of(server.url)
        location = (
            documented_location(upstream) if config == "documented" else default_location(upstream)
        )
        with (
            nginx(location, tmp_path) as proxy,
            proxy.client() as client,
            connect_sse(client, "GET", proxy.url) as source,
        ):
            events = []
            for sse in source.iter_sse():
                events.append(sse)
                if sse.event == "progress":
                    gates[sse.json()["details"]["i"]].set()
            headers = source.response.headers
    assert [(e.event, e.id) for e in events] == [
        *[("progress", str(i)) for i in range(1, 6)],
        ("completed", "6"),
    ]
    assert events[-1].json() == {"status": "done"}
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    # nginx acts on X-Accel-* headers and, by default, keeps them from the client.
    assert "x-accel-buffering" not in headers


SILENCE = 2.5  # seconds the job thinks without reporting: longer than proxy_read_timeout


@pytest.mark.parametrize("heartbeat", [0.25, None])
def test_heartbeats_keep_a_silent_stream_open_past_proxy_read_timeout(
    heartbeat: float | None, tmp_path: Path
) -> None:
    outcome: list[str] = []
    stopped = threading.Event()

    def job(on_progress: Reporter) -> str:
        try:
            # A silence of fixed length is the behaviour under test, not synchronisation.
            time.sleep(SILENCE)
            on_progress("thought", {"seconds": SILENCE})
            outcome.append("finished")
            return "done"
        except JobCancelled:
            outcome.append("cancelled")
            raise
        finally:
            stopped.set()

    with serve(EventStream(Job(job), heartbeat=heartbeat)) as server:
        location = documented_location(upstream_of(server.url), read_timeout="1s")
        with (
            nginx(location, tmp_path) as proxy,
            proxy.client() as client,
            client.stream("GET", proxy.url) as response,
        ):
            assert response.status_code == 200  # the headers pass nginx at once
            lines: list[str] = []
            cut: httpx.TransportError | None = None
            try:
                lines.extend(response.iter_lines())
            except httpx.RemoteProtocolError as exc:
                cut = exc
        assert stopped.wait(BOUND), "the job did not end"
        error_log = proxy.error_log.read_text()

    if heartbeat is not None:
        assert cut is None
        assert lines.count(": ping") >= 2  # at least one in each 1 s proxy_read_timeout window
        assert [line for line in lines if line.startswith("event:")] == [
            "event: progress",
            "event: completed",
        ]
        assert outcome == ["finished"]
        assert "upstream timed out" not in error_log
    else:
        # After 1 s of silence nginx gives up on the app: it ends the response to the
        # client mid-body (no last chunk), logs a timeout, and closes the upstream
        # connection, so the job's first report after its silence is cancelled.
        assert cut is not None, f"nginx delivered the whole stream: {lines}"
        assert lines == []
        assert "upstream timed out" in error_log
        assert outcome == ["cancelled"]


def test_without_x_accel_buffering_nginx_defaults_hold_events_back(tmp_path: Path) -> None:
    order: list[str] = []
    lock = threading.Lock()
    acked = threading.Event()

    def record(what: str) -> None:
        with lock:
            order.append(what)

    def job(on_progress: Reporter) -> str:
        on_progress("small", {})
        # Unbuffered, the client acks within milliseconds; held in nginx, never.
        record("client acked" if acked.wait(1.0) else "ack timed out")
        record("job done")
        return "done"

    with serve(stream_progress(job)) as server:
        # As if something between app and nginx stripped the header: nginx's defaults.
        location = default_location(
            upstream_of(server.url), "proxy_ignore_headers X-Accel-Buffering;"
        )
        with (
            nginx(location, tmp_path) as proxy,
            proxy.client() as client,
            connect_sse(client, "GET", proxy.url) as source,
        ):
            events = []
            for sse in source.iter_sse():
                if not events:
                    record("client saw event")
                    acked.set()
                events.append((sse.event, sse.data))
    assert order == ["ack timed out", "job done", "client saw event"]
    # Nothing is lost: nginx passes it all on once the response ends.
    assert events == [("progress", '{"step":"small","details":{}}'), ("completed", '"done"')]
