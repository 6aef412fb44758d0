"""One job, every way of serving it, the same bytes on the wire.

Each app runs under a real hypercorn on 127.0.0.1 and httpx reads the raw body.
The bodies must equal each other (no framework adds, drops or re-encodes a byte)
and a golden value written out in ``parity_apps``, so that any change to the wire format
fails here, loudly, and on purpose.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import BOUND, serve
from parity_apps import GOLDEN, WAYS, Setup

# asgi-sse's own headers; the frameworks and the server may add others (date, server).
STREAM_HEADERS = ("content-type", "cache-control", "x-accel-buffering")


def fetch(setup: Setup) -> tuple[int, tuple[str | None, ...], bytes]:
    with (
        serve(setup.app, wrap=setup.wrap) as server,
        httpx.Client(timeout=BOUND) as client,
        client.stream("GET", server.url + setup.path) as response,
    ):
        body = response.read()
    return response.status_code, tuple(map(response.headers.get, STREAM_HEADERS)), body


@pytest.mark.parametrize("ending", ["completed", "error"])
def test_every_way_of_serving_a_job_sends_the_same_bytes(ending: str) -> None:
    responses = {name: fetch(way(ending == "error")) for name, way in WAYS.items()}

    # First with each other, so a framework that differs is named...
    reference = responses["raw ASGI"]
    differing = {name: r for name, r in responses.items() if r != reference}
    assert not differing, f"differ from raw ASGI ({reference}): {differing}"
    # ...then with the golden stream, so a change to the wire format is seen.
    status, headers, body = reference
    assert status == 200
    assert headers == ("text/event-stream; charset=utf-8", "no-cache", "no")
    assert body == GOLDEN[ending]
