"""The app every server's command line serves in test_servers and test_shutdown.

The test cannot look into the server process, so the app answers for itself:
``/release`` lets a gated job go on, ``/settled`` waits inside the server until no
stream is open and every thread token is back, then tells how each job ended.
Jobs that are cancelled also say so in the file named by ``ASGI_SSE_JOB_LOG``
(read after the process has gone). ``ASGI_SSE_SIGNALS=1`` opts in to
``shutdown_signals``; ``/parity/<way>/<ending>`` serves the parity test's apps.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from parity_apps import WAYS
from processes import every_token_back

from asgi_sse import EventStream, EventStreamMiddleware, Job, JobCancelled, Reporter

BOUND = 10.0  # as conftest's
LOG = Path(os.environ.get("ASGI_SSE_JOB_LOG", os.devnull))
PAD = "x" * 16_384

_lock = threading.Lock()
_gates: defaultdict[str, threading.Event] = defaultdict(threading.Event)
_outcomes: dict[str, str] = {}


def gate(key: str) -> threading.Event:
    with _lock:
        return _gates[key]


def ended(key: str, outcome: str) -> None:
    with _lock:
        _outcomes[key] = outcome
        if outcome == "cancelled":
            with LOG.open("a") as log:
                log.write(f"{key} cancelled\n")


def steps(key: str, n: int, on_progress: Reporter) -> str:
    """Reports step ``i``, then waits until the client has it (``/release``)."""
    for i in range(n):
        on_progress("step", {"i": i, "text": "café 日本"})
        if not gate(f"{key}/{i}").wait(BOUND):
            raise TimeoutError(f"event {i} did not reach the client on its own")
    return "done"


def fails(on_progress: Reporter) -> None:
    on_progress("step", {"i": 0})
    raise ValueError("the message stays on the server")


def endless(key: str, mode: str, on_progress: Reporter) -> None:
    """Reports every 5 ms (``ticks``), 16 KiB each (``bulk``), or once and then
    only polls ``on_progress.cancelled`` (``silent``; ``quiet`` reports once
    more then, which raises), until stopped or released."""
    pace, release = threading.Event(), gate(key)
    try:
        on_progress("started", {})
        tick = 0
        while not release.is_set():
            tick += 1
            if mode in ("silent", "quiet"):
                if on_progress.cancelled:
                    if mode == "quiet":
                        on_progress("after the end", {})  # raises JobCancelled
                    ended(key, "noticed")
                    return
                pace.wait(0.005)
            elif mode == "bulk":
                on_progress("bulk", {"i": tick, "pad": PAD})
            else:
                on_progress("tick", {"n": tick})
                pace.wait(0.005)
        ended(key, "released")
    except JobCancelled:
        ended(key, "cancelled")
        raise


def count(n: int, on_progress: Reporter) -> int:
    """In the load client's format (benchmarks/client.py): ``i`` counts, ``t`` stamps."""
    for i in range(n):
        on_progress("step", {"i": i, "t": time.monotonic_ns()})
    return n


def stream(path: str, query: dict[str, str]) -> EventStream:
    key = query.get("key", "")
    if path == "/steps":
        return EventStream(Job(steps, key, int(query["n"])), heartbeat=None)
    if path == "/fail":
        return EventStream(Job(fails), heartbeat=None)
    if path == "/endless":
        mode = query.get("mode", "ticks")
        return EventStream(Job(endless, key, mode), heartbeat=None, send_timeout=0.5)
    if path == "/heartbeat":
        silent = Job(lambda on_progress: gate(key).wait(BOUND) and "done")
        return EventStream(silent, heartbeat=0.05)
    return EventStream(Job(count, int(query.get("n", "10"))), heartbeat=None)


async def answer(send: Any, value: object) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(value).encode()})


async def routes(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/release":
        gate(query["key"]).set()
        await answer(send, "released")
    elif path == "/settled":
        with anyio.fail_after(BOUND):  # else a 500: not settled
            await app._hub.idle()  # (the tests' view inside: no public API for it)
            await every_token_back(app.limiter)
        with _lock:
            outcomes = dict(_outcomes)
        stats = app.stats
        await answer(
            send,
            {
                "outcomes": outcomes,
                "open_streams": stats.open_streams,
                "disconnects": stats.disconnects,
                "send_timeouts": stats.send_timeouts,
            },
        )
    elif path.startswith("/parity/"):
        _, _, way, ending = path.split("/")
        setup = PARITY[way, ending]
        await setup.app({**scope, "path": "/", "raw_path": b"/"}, receive, send)
    else:
        await stream(path, query)(scope, receive, send)


PARITY = {
    (str(number), ending): way(ending == "error")
    for number, way in enumerate(WAYS.values())
    for ending in ("completed", "error")
}
SIGNALS = (signal.SIGTERM, signal.SIGINT) if os.environ.get("ASGI_SSE_SIGNALS") == "1" else ()
app = EventStreamMiddleware(routes, threads=250, shutdown_grace=2.0, shutdown_signals=SIGNALS)
