"""A tiny TCP forwarder standing in for a load balancer in front of several servers.

Each new connection goes to the next backend in turn (or to ``target`` when it is
set); ``cut()`` closes every open connection, both sides, as a network blip or a
balancer restart would. Plain sockets and threads: what the servers and the
browser see is real TCP.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from dataclasses import dataclass, field

BOUND = 10.0  # seconds (as conftest)


@dataclass
class Connection:
    """One client connection and its leg to a backend."""

    client: socket.socket
    upstream: socket.socket
    backend: int  # the port it went to
    head: bytearray = field(default_factory=bytearray)  # the first bytes the client sent

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with suppress(OSError):  # already closed by the other side
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


HEAD_LIMIT = 8192  # bytes of each request kept, enough for its head


class TcpProxy:
    """Listen on 127.0.0.1 (a free port) and forward to ``backends`` (ports)."""

    def __init__(self, backends: list[int]) -> None:
        if not backends:
            raise ValueError("a proxy needs at least one backend")
        self.backends = list(backends)
        self.target: int | None = None  # when set, new connections go there only
        self.connections: list[Connection] = []  # every one, open or closed, in order
        self._open: set[int] = set()  # indexes into connections
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def heads_to(self, backend: int) -> list[bytes]:
        """The start of every request sent to ``backend``, in order."""
        with self._lock:
            return [bytes(c.head) for c in self.connections if c.backend == backend]

    def _choose(self) -> int:
        if self.target is not None:
            return self.target
        port = self.backends[self._next % len(self.backends)]
        self._next += 1
        return port

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                port = self._choose()
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
                upstream.settimeout(None)
            except OSError:
                client.close()  # as a balancer with a dead backend: the client retries
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                conn = Connection(client, upstream, port)
                index = len(self.connections)
                self.connections.append(conn)
                self._open.add(index)
            for source, sink, record in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(index, source, sink, record), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, index: int, source: socket.socket, sink: socket.socket, record: bool) -> None:
        conn = self.connections[index]
        try:
            while data := source.recv(65536):
                if record and len(conn.head) < HEAD_LIMIT:
                    with self._lock:
                        conn.head += data[: HEAD_LIMIT - len(conn.head)]
                sink.sendall(data)
        except OSError:
            pass  # cut, or the other side went away
        # Either side leaving ends the whole connection, as a balancer does.
        self._drop(index)

    def _drop(self, index: int) -> None:
        with self._lock:
            if index not in self._open:
                return
            self._open.discard(index)
            conn = self.connections[index]
        conn.close()

    def cut(self) -> int:
        """Close every open connection, both sides; how many there were."""
        with self._lock:
            indexes = list(self._open)
        for index in indexes:
            self._drop(index)
        return len(indexes)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self.cut()
        self._accepter.join(BOUND)
        for thread in self._threads:
            thread.join(BOUND)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
