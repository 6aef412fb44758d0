"""A server told to stop, with streams open, under every server and the ways to stop it.

Each case starts a server by its own command line, opens three endless streams
(one connection each, closed when its stream ends, as a browser's would be) and
signals it: SIGTERM to the main process (what a supervisor or Kubernetes sends)
or SIGINT to the whole process group (Ctrl-C in a terminal). Every case must
exit within a bound, every stream must end with the events its job reported, in
order, then ``error {"type": "ServerShutdown"}``, every job must be cancelled,
and the server must log no error.

Two ways get there. *Native*: the server's own graceful timeout cancels the open
responses, which then say goodbye (hypercorn's trio worker, uvicorn with
``--timeout-graceful-shutdown``, where the stream absorbs uvicorn's native cancel
once its farewell is out, so that uvicorn logs no traceback).
*Opt-in*: ``shutdown_signals`` hears the signal first and ends the streams at
once; the only way for granian, for hypercorn over HTTP/2 and for hypercorn's
asyncio worker, and it works under every server, with two limits of theirs
written where they apply: hypercorn needs ``--workers 0``, and granian over
HTTP/2 may cut a farewell off.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import NamedTuple

import h2.exceptions
import httpx
import pytest
from processes import BOUND, launch
from sse_spec import parse_stream

STREAMS = 3
SHUTDOWN = {"type": "ServerShutdown"}
#: The server's own graceful timeout cancels the open responses.
NATIVE = {
    "hypercorn-trio": ["--graceful-timeout", "1"],
    "uvicorn": ["--timeout-graceful-shutdown", "1"],
    "uvicorn-h11": ["--timeout-graceful-shutdown", "1"],
}
#: ``shutdown_signals`` hears the signal: in the process that receives it, which
#: for hypercorn means ``--workers 0`` (its worker processes ignore SIGINT and
#: hear of SIGTERM from their supervisor through a multiprocessing event).
OPT_IN = {
    "hypercorn-asyncio": ["--workers", "0"],
    "hypercorn-trio": ["--workers", "0"],
    "uvicorn": [],
    "uvicorn-h11": [],
    "granian": [],
}
HTTP2 = ["hypercorn-asyncio", "hypercorn-trio", "granian"]


class Case(NamedTuple):
    server: str
    way: str
    http2: bool
    options: list[str]


HYPERCORN_ASYNCIO_ALONE = pytest.mark.xfail(
    strict=True,
    reason="hypercorn's asyncio worker on its own: on Python 3.11 it cancels its connection"
    " tasks at the graceful timeout and asyncio logs each one's CancelledError (hypercorn's"
    " tasks, not the app's: the streams did end with their farewell); on 3.12+ it never gets"
    " there (asyncio.Server.wait_closed() waits for every connection). Use shutdown_signals"
    " with --workers 0 (the opt-in cases).",
)
CASES = [
    *[pytest.param(Case(s, "native", False, NATIVE[s]), id=f"{s}-native") for s in NATIVE],
    pytest.param(
        Case("hypercorn-asyncio", "native", False, ["--graceful-timeout", "1"]),
        id="hypercorn-asyncio-native",
        marks=HYPERCORN_ASYNCIO_ALONE,
    ),
    *[pytest.param(Case(s, "opt-in", False, OPT_IN[s]), id=f"{s}-opt-in") for s in OPT_IN],
    *[pytest.param(Case(s, "opt-in", True, OPT_IN[s]), id=f"{s}-opt-in-h2") for s in HTTP2],
]
FAREWELL = {"event": "error", "data": '{"type":"ServerShutdown"}', "id": ""}
SIGNALS = [
    pytest.param((signal.SIGTERM, False), id="SIGTERM-to-main"),
    pytest.param((signal.SIGINT, True), id="SIGINT-to-group"),
]


def watch(url: str, http2: bool, path: str, reading: threading.Barrier, got: list[bytes]) -> None:
    """One client on a connection of its own, closed once its stream ends, as a
    browser's would be: a server may wait for idle connections to go."""
    with (
        httpx.Client(base_url=url, http1=not http2, http2=http2, timeout=BOUND) as client,
        client.stream("GET", path) as response,
    ):
        chunks = response.iter_raw()
        got.append(next(chunks))
        reading.wait(BOUND)
        try:
            got.extend(chunks)
        except h2.exceptions.ProtocolError as exc:
            # granian sends a PING after its GOAWAY, which the h2 library refuses
            # (python-hyper/h2#1199; RFC 9113 allows it): the bytes before it stand.
            if "RECV_PING in state ConnectionState.CLOSED" not in str(exc):
                raise


@pytest.mark.parametrize("stop", SIGNALS)
@pytest.mark.parametrize("case", CASES)
def test_stopping_with_streams_open_ends_each_with_its_reason_and_exits(
    case: Case, stop: tuple[int, bool], tmp_path: Path
) -> None:
    (server, way, http2, options), (signum, group) = case, stop
    # The server's own cancel may land in the middle of a send, and a stream cut
    # off there cannot tell what the server wrote, so it sends no farewell rather
    # than risk a gap or a duplicate (docs/servers.md, step 3; test_stalled covers
    # it). Natively the streams are quiet when it comes, so the farewell is
    # certain; the opt-in way ends them itself, ticking as they are.
    mode = "quiet" if way == "native" else "ticks"
    jobs = tmp_path / "jobs.log"
    env = {"ASGI_SSE_JOB_LOG": str(jobs), "ASGI_SSE_SIGNALS": "1" if way == "opt-in" else "0"}
    received: dict[str, list[bytes]] = {f"s{i}": [] for i in range(STREAMS)}
    reading = threading.Barrier(STREAMS + 1)
    with launch(server, "servers_app:app", *options, env=env) as running:
        threads = [
            threading.Thread(
                target=watch,
                args=(running.url, http2, f"/endless?key={key}&mode={mode}", reading, got),
            )
            for key, got in received.items()
        ]
        for thread in threads:
            thread.start()
        try:
            reading.wait(BOUND)  # every stream is open and flowing
            running.signal(signum, group=group)
            running.process.wait(BOUND)
        finally:
            for thread in threads:
                thread.join(BOUND)
        # uvicorn hands the signal on once it has shut down, and so does the
        # opt-in handler where the signal's default was to end the process.
        assert running.process.returncode in (0, -signum), running.log
    for key, chunks in received.items():
        events = parse_stream(b"".join(chunks))
        if (server, http2) == ("granian", True) and events[-1]["event"] == "progress":
            # granian over HTTP/2 closes its connections as it stops, without
            # waiting for the responses on them (over HTTP/1.1 it waits): the
            # farewell, sent as the signal arrives, races that and may be cut.
            events.append(FAREWELL)
        *reports, last = events
        assert {e["event"] for e in reports} == {"progress"}, key
        assert [int(e["id"]) for e in reports] == list(range(1, len(reports) + 1)), key
        assert (last["event"], json.loads(last["data"])) == ("error", SHUTDOWN), key
    assert sorted(jobs.read_text().splitlines()) == [f"{key} cancelled" for key in received]
