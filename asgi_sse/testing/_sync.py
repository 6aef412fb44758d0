"""The same client for sync tests: the app runs on an event loop in a thread."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial

from anyio import from_thread

from .._http import ASGIApp
from ._client import TestStream, aconnect
from ._messages import EventStreamClosed, ServerSentMessage

__all__ = ["SyncTestStream", "connect"]


class SyncTestStream:
    """:class:`TestStream` for sync tests: the same methods, without ``await``."""

    __test__ = False

    def __init__(self, stream: TestStream, portal: from_thread.BlockingPortal) -> None:
        self._stream, self._portal = stream, portal
        self.status, self.headers = stream.status, stream.headers

    @property
    def last_event_id(self) -> str | None:
        return self._stream.last_event_id

    def read(self) -> bytes:
        return self._portal.call(self._stream.read)

    def next(self) -> ServerSentMessage:
        return self._portal.call(self._stream.next)

    def events(self, n: int) -> list[ServerSentMessage]:
        return self._portal.call(self._stream.events, n)

    def until(self, name: str, *names: str) -> list[ServerSentMessage]:
        return self._portal.call(partial(self._stream.until, name, *names))

    def __iter__(self) -> Iterator[ServerSentMessage]:
        while True:
            try:
                yield self.next()
            except EventStreamClosed:
                return


@contextmanager
def connect(
    app: ASGIApp,
    url: str = "/",
    *,
    backend: str = "asyncio",
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 10.0,
) -> Iterator[SyncTestStream]:
    """:func:`aconnect` for sync tests: the app runs on ``backend`` in a thread."""
    with from_thread.start_blocking_portal(backend) as portal:
        opened = aconnect(app, url, method=method, headers=headers, body=body, timeout=timeout)
        with portal.wrap_async_context_manager(opened) as stream:
            yield SyncTestStream(stream, portal)
