"""The load client: many event streams on one asyncio loop, every event checked.

Each stream is a raw HTTP/1.0 request (a close-delimited body, no chunk framing
to undo) read by an ``asyncio.Protocol``. Per stream it records when the first
byte and the first event arrived, checks that the job's own counter ``i`` runs
0, 1, 2... with no gap (so an implementation that drops events cannot hide it by
numbering what it sends), that the stream ends with ``completed``, and, when
asked, each event's latency: receipt time minus the ``time.monotonic_ns()`` stamp
taken in the server's worker thread (CLOCK_MONOTONIC is system-wide on Linux).

``python benchmarks/client.py --firehose`` serves pre-encoded events as fast as
a socket takes them: the calibration run measures this client's own ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import threading
import time
from dataclasses import dataclass, field

_PAIR = re.compile(rb'"i":(\d+),"t":(\d+)')
_DONE = re.compile(rb'"done":(\d+)')
_COMMENT = re.compile(rb"^:(?! abandoned)", re.MULTILINE)
_ABANDONED = re.compile(rb"^: abandoned (\d+)", re.MULTILINE)


@dataclass
class Stream:
    """What one connection saw. Times are ``time.monotonic_ns()``."""

    n: int
    started: int = 0
    status: bytes = b""
    first_byte: int = 0
    first_event: int = 0
    first_frame: int = 0  # the first whole SSE block of any kind (a heartbeat, ``queued``)
    ended: int = 0
    received: int = 0  # progress events in order (gaps allowed: they count as lost)
    next_i: int = 0  # the job's counter expected next
    disorder: int = 0  # progress events that came after a later one, or twice
    completed: bool = False
    done: int = 0  # the job's own stamp when it returned
    abandoned: int = 0  # events a bridge says it left behind (queue_pattern's diagnostic)
    bytes: int = 0
    latencies: list[int] = field(default_factory=list)
    heartbeats: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def lost(self) -> int:
        return self.n - self.received


class _Reader(asyncio.Protocol):
    def __init__(self, stream: Stream, latency: bool, pace: float, done: asyncio.Future[None]):
        self.stream = stream
        self.latency = latency
        self.pace = pace  # bytes/s to read at, 0: as fast as possible
        self.done = done
        self.head = True
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        stream = self.stream
        stream.bytes += len(data)
        if not stream.first_byte:
            stream.first_byte = now
        if self.pace and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(len(data) / self.pace, self._resume)
        buffer = self.buffer + data
        if b"\r" in buffer:  # CRLF separators (some tools' default): normalise to LF
            buffer = buffer.replace(b"\r\n", b"\n")
        if self.head:
            if b"\n\n" not in buffer:
                self.buffer = buffer
                return
            head, buffer = buffer.split(b"\n\n", 1)
            stream.status = head.split(b"\n", 1)[0]
            self.head = False
        cut = buffer.rfind(b"\n\n") + 2
        if cut < 2:
            self.buffer = buffer
            return
        self.buffer = buffer[cut:]
        self._events(buffer[:cut], now)

    def _events(self, whole: bytes, now: int) -> None:
        stream = self.stream
        if not stream.first_frame:
            stream.first_frame = now
        pairs = _PAIR.findall(whole)
        if pairs and stream.completed:  # nothing may follow the terminal event
            stream.disorder += len(pairs)
        elif pairs:
            if not stream.first_event:
                stream.first_event = now
            self._count([int(i) for i, _ in pairs])
            if self.latency:
                stream.latencies += [now - int(t) for _, t in pairs]
        if whole.startswith(b":") or b"\n:" in whole:
            stream.heartbeats += [now] * len(_COMMENT.findall(whole))
            abandoned = _ABANDONED.search(whole)
            if abandoned:
                stream.abandoned = int(abandoned[1])
        if b"event: completed" in whole:
            stream.disorder += stream.completed + whole.count(b"event: completed") - 1
            stream.completed = True
            done = _DONE.search(whole)
            stream.done = int(done[1]) if done else 0

    def _count(self, counters: list[int]) -> None:
        """The job's counters in arrival order: a gap skips ahead (what it skips is
        lost), a step back is disorder."""
        stream = self.stream
        first = stream.next_i
        if counters == list(range(first, first + len(counters))):
            stream.received += len(counters)
            stream.next_i += len(counters)
            return
        for i in counters:
            if i >= stream.next_i:
                stream.received += 1
                stream.next_i = i + 1
            else:
                stream.disorder += 1

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.ended = time.monotonic_ns()
        if exc is not None:
            self.stream.error = repr(exc)
        if not self.done.done():
            self.done.set_result(None)


async def open_stream(
    port: int, path: str, n: int, *, latency: bool = False, pace: float = 0, rcvbuf: int = 0
) -> tuple[Stream, asyncio.Future[None], asyncio.Transport]:
    """Connect and send the request; the future resolves when the server closes."""
    loop = asyncio.get_running_loop()
    stream = Stream(n, started=time.monotonic_ns())
    done: asyncio.Future[None] = loop.create_future()
    sock = socket.socket()
    sock.setblocking(False)
    if rcvbuf:  # a slow reader's small window, set before connecting so it sticks
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    transport, _ = await loop.create_connection(
        lambda: _Reader(stream, latency, pace, done), sock=sock
    )
    transport.write(b"GET %s HTTP/1.0\r\nHost: bench\r\n\r\n" % path.encode())
    return stream, done, transport


async def load(
    port: int,
    path: str,
    *,
    streams: int,
    n: int,
    deadline: float,
    latency: bool = False,
    pace: float = 0,
    rcvbuf: int = 0,
) -> list[Stream]:
    """Open ``streams`` streams at once and read them all to the end, or until
    ``deadline`` seconds, when the rest are cut and show as unfinished."""
    opened = await asyncio.wait_for(
        asyncio.gather(
            *(
                open_stream(port, path, n, latency=latency, pace=pace, rcvbuf=rcvbuf)
                for _ in range(streams)
            )
        ),
        deadline,
    )
    futures = [future for _, future, _ in opened]
    _, pending = await asyncio.wait(futures, timeout=deadline)
    for stream, future, transport in opened:
        if future in pending:
            stream.error = stream.error or f"cut at the {deadline:.0f} s deadline"
            transport.abort()
    if pending:
        await asyncio.wait(pending, timeout=5)
    return [stream for stream, _, _ in opened]


# -- calibration: a server that costs nothing ---------------------------------------


def firehose_body(n: int) -> bytes:
    """``n`` progress events and a completed one, as the implementations send them."""
    stamp = time.monotonic_ns()
    events = [
        b'event: progress\nid: %d\ndata: {"step":"step","details":{"i":%d,"t":%d}}\n\n'
        % (i + 1, i, stamp)
        for i in range(n)
    ]
    events.append(
        b'event: completed\nid: %d\ndata: {"events":%d,"done":%d}\n\n' % (n + 1, n, stamp)
    )
    return b"".join(events)


def serve_firehose(sock: socket.socket) -> None:
    """Answer each request with ``n`` pre-encoded events, a thread per connection."""
    bodies: dict[int, bytes] = {}
    lock = threading.Lock()

    def answer(conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            n = int(re.search(rb"n=(\d+)", request)[1])  # type: ignore[index]
            with lock:
                body = bodies.get(n) or bodies.setdefault(n, firehose_body(n))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + body)

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description="the calibration server")
    parser.add_argument("--firehose", type=int, metavar="FD", required=True)
    args = parser.parse_args()
    serve_firehose(socket.socket(fileno=args.firehose))


if __name__ == "__main__":
    main()
