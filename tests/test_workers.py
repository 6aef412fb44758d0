"""A server with two worker processes, sharing resumable jobs through a real Redis.

uvicorn and granian each run ``--workers 2``; every connection goes to whichever
worker the kernel hands it to, as behind any multi-process server. A client that
reconnects after every event (with ``Last-Event-ID``) must still get each event
once, in order, whichever worker answers, and both workers must have answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from processes import BOUND, launch
from redis_server import RedisServer, redis_server
from sse_spec import parse_stream

__all__ = ["redis_server"]  # the fixture, used by name

STEPS = 30
TRIES = 200  # connections to wait for the other worker: a miss this long is not luck


@pytest.fixture(params=["uvicorn", "granian"])
def server(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[str]:
    env = {"ASGI_SSE_REDIS_URL": redis_server.url, "ASGI_SSE_GRACE": "10"}
    with launch(request.param, "workers_app:app", "--workers", "2", env=env) as running:
        if request.param == "granian":
            running.wait_for_line("Started worker-2")
        yield running.url


def next_event(client: httpx.Client, job_id: str, last_id: int) -> tuple[dict[str, str], str]:
    """On a new connection, the first event after ``last_id``, and the worker that sent it."""
    headers = {"last-event-id": str(last_id), "connection": "close"}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        seen = b""
        for chunk in response.iter_bytes():
            seen += chunk
            events = parse_stream(seen)
            if events:
                return events[0], response.headers["x-worker-pid"]
    raise AssertionError(f"the stream ended with no event: {seen!r}")


def test_a_client_that_reconnects_to_either_worker_resumes_and_misses_nothing(
    server: str,
) -> None:
    with httpx.Client(base_url=server, timeout=BOUND) as client:
        started = client.post("/jobs", params={"steps": STEPS, "interval": 0.01})
        assert started.status_code == 201, started.text
        job_id, runner = started.json()["id"], started.headers["x-worker-pid"]
        events, workers = [], set()
        while not events or events[-1]["event"] != "completed":
            event, pid = next_event(client, job_id, len(events))
            events.append(event)
            workers.add(pid)
        for _ in range(TRIES):  # the finished job, replayed by the other worker too
            if len(workers | {runner}) == 2:
                break
            event, pid = next_event(client, job_id, STEPS)
            assert event == events[-1]
            workers.add(pid)
    assert [int(e["id"]) for e in events] == list(range(1, STEPS + 2))
    assert [json.loads(e["data"])["details"]["i"] for e in events[:-1]] == list(range(1, STEPS + 1))
    assert json.loads(events[-1]["data"]) == {"steps": STEPS}
    assert len(workers | {runner}) == 2, "one worker answered every connection"
