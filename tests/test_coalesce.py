"""Progress-aware coalescing (issue 16, item 1): a client that is behind gets the
latest value of every step, and never slows the job down; nothing but
superseded progress is dropped."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from conftest import BOUND, serve
from sse_spec import parse_stream

from asgi_sse import EventStream, EventStreamMiddleware, Job, Reporter, progress_app
from asgi_sse._bridge import Channel
from asgi_sse._latest import Latest, progress_step
from asgi_sse._run import default_encoder
from asgi_sse.resumable import Jobs, Retention
from asgi_sse.testing import connect

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


def stalled_client(url: str, path: str = "/") -> socket.socket:
    """A client that sends its request and does not read: its buffers fill (a
    small receive window, set before connecting, as the kernel sizes it then)."""
    parts = urlsplit(url)
    client = socket.socket()
    client.settimeout(BOUND)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((parts.hostname, parts.port))
    request = f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n"  # close-delimited: no chunking
    client.sendall(request.encode())
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


def test_a_slow_reader_in_line_gets_its_place_then_each_steps_latest_and_the_end() -> None:
    """Under the middleware, a client that waits for a slot and then reads slowly (a
    few KiB at a time): the non-progress events (its place in line, the end) all
    arrive, and each progress event it gets is the job's own report for that id."""
    gate, finished = threading.Event(), threading.Event()

    def holds_the_slot(on_progress: Reporter) -> None:
        on_progress("holding", {})
        if not gate.wait(BOUND):
            raise TimeoutError("the test never opened the gate")

    async def routes(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/hold":
            await EventStream(Job(holds_the_slot), heartbeat=None)(scope, receive, send)
        else:
            options = {"max_buffer_bytes": 4096, "heartbeat": None, "send_timeout": None}
            job = Job(count_steps, finished)
            await EventStream(job, coalesce=True, **options)(scope, receive, send)

    app = EventStreamMiddleware(routes, max_streams=1, queue=1)
    with (
        serve(app) as server,
        httpx.Client(base_url=server.url, timeout=BOUND) as http,
        http.stream("GET", "/hold") as holder,
    ):
        next(holder.iter_raw())  # it holds the one slot
        with stalled_client(server.url, "/count") as client:
            received = b""
            while b"event: queued" not in received:  # its place in line, before its job runs
                received += client.recv(4096)
            gate.set()
            while chunk := client.recv(4096):  # a small window, a little at a time
                received += chunk
    events = parse_stream(received.split(b"\r\n\r\n", 1)[1])
    assert finished.is_set()
    assert (events[0]["event"], events[0]["data"]) == ("queued", '{"position":1}')
    *progress, end = events[1:]
    assert (end["event"], end["data"]) == ("completed", '"done"')
    assert {e["event"] for e in progress} == {"progress"}
    for event in progress:  # each is the job's own report for its id
        data = json.loads(event["data"])
        assert (data["step"], data["details"]["n"]) == (
            STEPS[(int(event["id"]) - 1) % 3],
            int(event["id"]) - 1,
        )
    latest = {json.loads(e["data"])["step"]: int(e["id"]) - 1 for e in progress}
    assert latest == {STEPS[n % 3]: n for n in range(REPORTS - 3, REPORTS)}


def test_an_iterable_which_reports_no_steps_refuses_it() -> None:
    with pytest.raises(TypeError, match="does not use coalesce"):
        EventStream(iter(["a", "b"]), coalesce=True)


def test_progress_app_coalesces_its_jobs() -> None:
    app = progress_app(count_steps_of, coalesce=True, heartbeat=None)
    with connect(app, "/?n=5") as response:
        events = response.until("completed")
    assert [e.event for e in events] == ["progress"] * 5 + ["completed"]


def count_steps_of(n: int, on_progress: Reporter) -> int:
    for i in range(n):
        on_progress(STEPS[i % 3], {"n": i})
    return n


# -- a resumable job's watchers: the log keeps every event ------------------------------------


def test_progress_step_reads_the_key_back_from_an_encoded_event() -> None:
    encoder = default_encoder
    assert progress_step(encoder.message("progress", 7, {"step": "load", "details": {}})) == "load"
    assert progress_step(encoder.message("completed", 8, {"step": "load"})) is None
    assert progress_step(encoder.message("progress", 9, {"step": 3, "details": {}})) is None
    assert progress_step(b"event: progress\ndata: not json\n\n") is None


@pytest.mark.anyio
async def test_a_coalescing_page_holds_one_chunk_per_step_and_waits_only_for_the_rest() -> None:
    channel = Channel(100, coalesce=True)
    page = [b"%s:%05d|" % (STEPS[n % 3].encode(), n) for n in range(3000)]
    with anyio.fail_after(BOUND):  # all keyed: in at once, though nobody receives
        await channel.aput_many(page, [STEPS[n % 3] for n in range(3000)])
    batch = await channel.receive()
    assert sum(map(len, batch)) <= 100 + 3 * len(page[-1])
    assert batch[-3:] == page[-3:]
    await channel.aput_many(page[:20], [STEPS[n % 3] for n in range(20)])  # fills it
    with anyio.move_on_after(0.1) as waited:  # a chunk that must arrive waits for room
        await channel.aput_many([b"gap|", page[20]], [None, STEPS[20 % 3]])
    assert waited.cancelled_caught


@pytest.mark.anyio
async def test_a_page_with_a_key_missing_is_refused_before_any_of_it_goes_in() -> None:
    channel = Channel(100, coalesce=True)
    with pytest.raises(ValueError, match="1 keys for 2 chunks"):
        await channel.aput_many([b"a", b"b"], ["load"])
    channel.close()
    with pytest.raises(anyio.EndOfStream):  # nothing half-put: the channel ends empty
        await channel.receive()


async def watch_app(scope: Any, receive: Any, send: Any) -> None:
    """GET /create makes job "j", GET /start starts it (``count_steps``), GET
    /watch?coalesce=1 streams it."""
    jobs: Jobs = watch_app.jobs  # type: ignore[attr-defined]
    if scope["type"] == "lifespan":
        await receive()
        async with jobs:
            await send({"type": "lifespan.startup.complete"})
            await receive()
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["path"] in ("/create", "/start"):
        if scope["path"] == "/create":
            await jobs.create("j")
        else:
            await jobs.start(Job(count_steps, watch_app.finished), id="j")  # type: ignore[attr-defined]
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        coalesce = scope["query_string"] == b"coalesce=1"
        options = {"max_buffer_bytes": 4096, "heartbeat": None, "send_timeout": None}
        await EventStream(jobs.watch("j"), coalesce=coalesce, **options)(scope, receive, send)


def test_a_stalled_watcher_of_a_resumable_job_is_sent_each_steps_latest_and_resumes_after_it() -> (
    None
):
    everything = Retention(max_events=REPORTS + 1, max_bytes=1 << 30)
    watch_app.jobs, watch_app.finished = Jobs(retention=everything), threading.Event()  # type: ignore[attr-defined]
    with serve(watch_app, wrap=False) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/create").status_code == 201  # watchable before it starts
        with (
            stalled_client(server.url, "/watch?coalesce=1") as coalescing,
            stalled_client(server.url, "/watch") as every,
        ):
            assert http.get("/start").status_code == 201
            assert watch_app.finished.wait(BOUND)  # type: ignore[attr-defined]
            sent, all_sent = parse_stream(read_to_end(coalescing)), read_to_end(every)
        # Its Last-Event-ID means "up to here": a reconnect with it has nothing more.
        last = sent[-1]["id"]
        assert http.get("/watch", headers={"last-event-id": last}).status_code == 204
    # The log kept every event: the other watcher, who coalesces nothing, got them all.
    assert [int(e["id"]) for e in parse_stream(all_sent)] == list(range(1, REPORTS + 2))
    *progress, end = sent
    assert (end["event"], end["data"], end["id"]) == ("completed", '"done"', str(REPORTS + 1))
    ids = [int(e["id"]) for e in sent]
    assert ids == sorted(set(ids))  # increasing, gaps where events were superseded
    assert len(progress) < REPORTS
    for event in progress:  # each is the job's own report for its id
        data = json.loads(event["data"])
        assert data["details"]["n"] == int(event["id"]) - 1
        assert data["step"] == STEPS[data["details"]["n"] % 3]
    latest = {json.loads(e["data"])["step"]: int(e["id"]) - 1 for e in progress}
    assert latest == {STEPS[n % 3]: n for n in range(REPORTS - 3, REPORTS)}
