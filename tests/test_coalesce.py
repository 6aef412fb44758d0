"""Progress-aware coalescing (issue 16, item 1): a client that is behind gets the
latest value of every step, and never slows the job down; nothing but
superseded progress is dropped."""

from __future__ import annotations

import json
import socket
import threading
from urllib.parse import urlsplit

import pytest
from conftest import BOUND, serve
from sse_spec import parse_stream

from asgi_sse import EventStream, Job, Reporter
from asgi_sse._bridge import Channel
from asgi_sse._latest import Latest
from asgi_sse.resumable import Jobs

STEPS = ("load", "parse", "render")
REPORTS = 50_000
PAD = "x" * 200


def test_a_superseded_chunk_is_emptied_in_place_and_the_rest_keep_their_order() -> None:
    latest, batch = Latest(), []
    for chunk, key in [(b"a1", "a"), (b"b1", "b"), (b"q", None)]:
        if key is not None:
            latest.places[key] = len(batch)
        batch.append(chunk)
    assert latest.supersede(batch, "c") == 0  # nothing of it waits
    assert latest.supersede(batch, "a") == 2
    latest.places["a"] = len(batch)
    batch.append(b"a2")
    assert batch == [b"", b"b1", b"q", b"a2"]
    assert latest.sent(batch) == [b"b1", b"q", b"a2"]
    assert latest.places == {}


def test_a_long_stall_holds_one_place_per_key_not_one_per_event() -> None:
    latest, batch = Latest(), []
    for n in range(10_000):
        key = STEPS[n % 3]
        latest.supersede(batch, key)
        latest.places[key] = len(batch)
        batch.append(b"%d" % n)
    assert len(batch) < 3 + 2 * 65  # compacted as the holes outnumber the chunks
    assert [c for c in batch if c] == [b"9997", b"9998", b"9999"]
    assert {key: batch[place] for key, place in latest.places.items()} == {
        "load": b"9999",
        "parse": b"9997",
        "render": b"9998",
    }


@pytest.mark.anyio
async def test_a_full_coalescing_channel_takes_keyed_chunks_at_once_and_keeps_the_latest() -> None:
    channel = Channel(100, coalesce=True)

    def produce() -> None:
        for n in range(3000):
            channel.put(b"%s:%05d|" % (STEPS[n % 3].encode(), n), STEPS[n % 3])

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive()  # nobody received, yet the producer never waited
    batch = await channel.receive()
    assert sum(map(len, batch)) <= 100 + 3 * len(b"render:02999|")
    numbers = [int(chunk.split(b":")[1][:5]) for chunk in batch]
    assert numbers == sorted(numbers)  # in the order put
    assert numbers[-3:] == [2997, 2998, 2999]  # the latest of every step


def count_steps(finished: threading.Event, on_progress: Reporter) -> str:
    for n in range(REPORTS):
        on_progress(STEPS[n % 3], {"n": n, "pad": PAD})
    finished.set()
    return "done"


def stalled_client(url: str) -> socket.socket:
    """A client that sends its request and does not read: its buffers fill."""
    parts = urlsplit(url)
    client = socket.create_connection((parts.hostname, parts.port), timeout=BOUND)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")  # close-delimited: no chunking
    return client


def read_to_end(client: socket.socket) -> bytes:
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_stalled_client_does_not_slow_the_job_and_gets_every_steps_last_value(
    backend: str,
) -> None:
    finished = threading.Event()
    stream = EventStream(
        Job(count_steps, finished),
        coalesce=True,
        max_buffer_bytes=4096,
        heartbeat=None,
        send_timeout=None,
    )
    with serve(stream, backend=backend) as server, stalled_client(server.url) as client:
        # The job runs to its end while the client reads nothing at all: without
        # coalescing it would wait for room after the first few kilobytes.
        assert finished.wait(BOUND)
        events = parse_stream(read_to_end(client))
    *progress, last = events
    assert (last["event"], last["data"]) == ("completed", '"done"')
    assert {e["event"] for e in progress} == {"progress"}
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids))  # increasing, gaps where events were superseded
    assert ids[-1] == REPORTS + 1
    latest = {}
    for event in progress:
        data = json.loads(event["data"])
        latest[data["step"]] = data["details"]["n"]
    assert latest == {STEPS[n % 3]: n for n in range(REPORTS - 3, REPORTS)}
    assert len(progress) < REPORTS  # the stalled client was sent less than everything


def test_sources_that_report_no_steps_refuse_it() -> None:
    with pytest.raises(TypeError, match="does not use coalesce"):
        EventStream(iter(["a", "b"]), coalesce=True)
    with pytest.raises(TypeError, match="does not use coalesce"):
        EventStream(Jobs().watch("some-job"), coalesce=True)
