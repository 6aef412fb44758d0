"""The same behaviour under every server users run, each started by its own CLI.

hypercorn (asyncio and trio workers), uvicorn (httptools, and ``--http h11``) and
granian serve ``servers_app:app`` in a process of their own on 127.0.0.1; httpx,
httpx-sse and raw sockets are the clients. One server process per server serves
the whole module; each test uses keys of its own, and ends by asking the server
(``/settled``) whether every stream is closed and every thread token back.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from parity_apps import GOLDEN, WAYS
from processes import HTTP2, SERVERS, Running, launch

from benchmarks.client import load

BOUND = 10.0


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[Running]:
    with launch(request.param, "servers_app:app") as running:
        yield running


def settled(server: Running) -> dict[str, Any]:
    """The server's view once no stream is open and every job's thread has given
    its limiter token back (it waits for both itself, and fails if they do not)."""
    response = httpx.get(f"{server.url}/settled", timeout=2 * BOUND)
    response.raise_for_status()
    view: dict[str, Any] = response.json()
    assert view["open_streams"] == 0
    return view


def test_each_event_arrives_before_the_job_makes_the_next(server: Running) -> None:
    with (
        httpx.Client(base_url=server.url, timeout=BOUND) as client,
        connect_sse(client, "GET", "/steps?key=steps&n=4") as source,
    ):
        events = []
        for sse in source.iter_sse():
            events.append(sse)
            if sse.event == "progress":  # the job waits for this before its next report
                client.get("/release", params={"key": f"steps/{sse.json()['details']['i']}"})
    assert [(e.event, e.id) for e in events] == [
        *[("progress", str(i)) for i in range(1, 5)],
        ("completed", "5"),
    ]
    assert events[0].json() == {"step": "step", "details": {"i": 0, "text": "café 日本"}}
    assert events[-1].json() == "done"
    settled(server)


def test_a_job_that_raises_ends_with_one_error_event(server: Running) -> None:
    with httpx.Client(base_url=server.url, timeout=BOUND) as client:
        response = client.get("/fail")
    assert response.content == (
        b'event: progress\nid: 1\ndata: {"step":"step","details":{"i":0}}\n\n'
        b'event: error\nid: 2\ndata: {"type":"ValueError"}\n\n'
    )
    settled(server)


@pytest.mark.parametrize(("mode", "outcome"), [("ticks", "cancelled"), ("silent", "noticed")])
def test_a_client_that_leaves_stops_its_job_and_frees_its_thread(
    server: Running, mode: str, outcome: str
) -> None:
    """While the job reports (its next report raises), and while the stream is
    silent (the job polls ``on_progress.cancelled``): the server must tell."""
    key = f"leave-{mode}"
    with (
        httpx.Client(base_url=server.url, timeout=BOUND) as client,
        connect_sse(client, "GET", f"/endless?key={key}&mode={mode}") as source,
    ):
        assert next(source.iter_sse()).json() == {"step": "started", "details": {}}
    view = settled(server)
    assert view["outcomes"][key] == outcome


def test_heartbeats_keep_a_silent_stream_talking(server: Running) -> None:
    with (
        httpx.Client(base_url=server.url, timeout=BOUND) as client,
        client.stream("GET", "/heartbeat?key=heartbeat") as response,
    ):
        lines = response.iter_lines()
        assert [next(lines), next(lines), next(lines), next(lines)] == [": ping", "", ": ping", ""]
        client.get("/release", params={"key": "heartbeat"})
        rest = list(lines)
    assert rest[-3:] == ["id: 1", 'data: "done"', ""]
    settled(server)


def test_a_client_that_stops_reading_is_timed_out_and_its_job_cancelled(server: Running) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=BOUND) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /endless?key=stalled&mode=bulk HTTP/1.1\r\nHost: t\r\n\r\n")
        assert stalled.recv(16).startswith(b"HTTP/1.1 200")
        view = settled(server)  # the stream is given up while the socket is still open
    assert view["outcomes"]["stalled"] == "cancelled"
    assert view["send_timeouts"] >= 1


@pytest.mark.timeout(90)
def test_two_hundred_concurrent_streams_lose_nothing(server: Running) -> None:
    streams = asyncio.run(load(server.port, "/count?n=50", streams=200, n=50, deadline=60))
    assert sorted({s.error for s in streams if s.error}) == []
    assert [s.status for s in streams if b" 200 " not in s.status] == []
    assert (sum(s.received for s in streams), sum(s.disorder for s in streams)) == (200 * 50, 0)
    assert all(s.completed for s in streams)
    settled(server)


def test_http2_streams_events_where_the_server_speaks_it(
    server: Running, request: pytest.FixtureRequest
) -> None:
    if server.name not in HTTP2:
        request.applymarker(pytest.mark.xfail(strict=True, reason="uvicorn speaks HTTP/1.1 only"))
    with (
        httpx.Client(base_url=server.url, http1=False, http2=True, timeout=BOUND) as client,
        client.stream("GET", "/count?n=3") as response,
    ):
        assert response.http_version == "HTTP/2"
        assert "connection" not in response.headers
        body = response.read()
    data = [json.loads(line[6:]) for line in body.splitlines() if line.startswith(b"data:")]
    assert [d["details"]["i"] for d in data[:-1]] == [0, 1, 2]
    assert body.endswith(b"event: completed\nid: 4\ndata: 3\n\n")
    settled(server)


@pytest.mark.parametrize("ending", ["completed", "error"])
def test_every_adapter_sends_the_same_bytes(server: Running, ending: str) -> None:
    ways = {n: (number, way) for number, (n, way) in enumerate(WAYS.items())}
    if server.name == "hypercorn-trio":
        del ways["Quart adapter"]  # Quart runs on asyncio only
    with httpx.Client(base_url=server.url, timeout=BOUND) as client:
        bodies = {
            name: client.get(f"/parity/{number}/{ending}{way(ending == 'error').path}").content
            for name, (number, way) in ways.items()
        }
    assert {name: body for name, body in bodies.items() if body != GOLDEN[ending]} == {}
