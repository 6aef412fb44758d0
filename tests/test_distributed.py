"""The distributed example as its users run it: a real redis-server, a real Celery
worker (prefork), two hypercorn processes behind a TCP forwarder standing in for
a load balancer, and headless Chromium's own EventSource on the example's page.

Mid-job, the web process serving the browser is killed, and then the Celery
worker process running the job: the browser reconnects by itself to the other
web process, the job is delivered again, and the page still gets every event
once, in order, to the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import chromium
import httpx
import pytest
from processes import BOUND, ROOT, Running, launch, worker
from redis_server import RedisServer, start_redis
from sse_spec import parse_stream
from tcp_proxy import TcpProxy

APP = "examples.distributed:app"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server: RedisServer = start_redis(tmp_path)
    try:
        yield server.url
    finally:
        server.stop()


def celery_worker(redis_url: str) -> AbstractContextManager[Running]:
    return worker(
        "celery",
        *("celery", "-A", "examples.celery_app", "worker", "--pool", "prefork", "-c", "2"),
        *("-l", "info", "--without-mingle", "--without-gossip", "--without-heartbeat"),
        env={"REDIS_URL": redis_url, "PAGE_SECONDS": "0.2"},
    )


def test_the_page_resumes_across_a_web_process_and_a_worker_process_killed(
    redis_url: str,
) -> None:
    env = {"REDIS_URL": redis_url}
    with (
        celery_worker(redis_url) as celery,
        launch("hypercorn-asyncio", APP, env=env, clean_log=False) as web_a,
        launch("hypercorn-asyncio", APP, env=env) as web_b,
        TcpProxy([web_a.port, web_b.port]) as proxy,
        chromium.launch() as browser,
        chromium.open_page(browser) as page,
    ):
        celery.wait_for_line(" ready.")
        proxy.target = web_a.port  # the page, the job and its stream: all on A at first
        page.goto(proxy.url + "/")
        page.click("#start")
        page.wait_for_function("() => window.seen.length >= 2", timeout=chromium.WAIT_MS)
        # A dies (SIGKILL: no goodbye); the browser reconnects to B, with Last-Event-ID.
        proxy.target = web_b.port
        os.killpg(web_a.process.pid, signal.SIGKILL)
        page.wait_for_selector("text=reconnecting", timeout=chromium.WAIT_MS)
        seen_before = len(page.evaluate("window.seen"))
        page.wait_for_function(
            f"() => window.seen.length > {seen_before}", timeout=chromium.WAIT_MS
        )
        assert any(b"GET /jobs/" in head for head in proxy.heads_to(web_b.port))
        # Then the worker process running the job dies; Celery delivers the task again.
        pid = page.evaluate(
            "document.getElementById('status').textContent.match(/process (\\d+)/)[1]"
        )
        os.kill(int(pid), signal.SIGKILL)
        page.wait_for_selector("text=Done: 10 pages.", timeout=chromium.WAIT_MS * 3)
        seen = page.evaluate("window.seen")
    ids = [int(event_id) for event_id, _ in seen]
    assert ids == list(range(ids[0], ids[0] + len(ids))), seen  # once each, in order
    events = [event for _, event in seen]
    assert events.count("retrying") == 1
    assert events[-1] == "completed"
    pages = [e for e in events if e == "progress"]
    assert len(pages) >= 10  # every page of the attempt that finished, and those before


def test_make_demo_distributed_serves_a_job_end_to_end(redis_url: str, tmp_path: Path) -> None:
    """The launcher `make demo-distributed` runs (given a redis-server here)."""
    demo = subprocess.Popen(
        [sys.executable, "scripts/distributed_demo.py", "--port", "0", "--redis-url", redis_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=os.environ | {"PAGE_SECONDS": "0.01"},
    )
    try:
        assert demo.stdout is not None
        url = next(line.split()[-1] for line in demo.stdout if line.startswith("Serving on"))
        with httpx.Client(base_url=url, timeout=BOUND) as client:
            started = client.post("/jobs", params={"pages": 3})
            assert started.status_code == 201, started.text
            with client.stream("GET", started.json()["events"]) as response:
                events = parse_stream(response.read())
        assert events[-1]["event"] == "completed"
        assert [e["event"] for e in events if e["event"] != "queued"] == ["progress"] * 3 + [
            "completed"
        ]
        demo.send_signal(signal.SIGINT)  # Ctrl-C: everything it started stops
        assert demo.wait(BOUND) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        assert demo.stdout is not None
        demo.stdout.close()
