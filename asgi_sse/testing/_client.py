"""The in-process client: one call of an ASGI app, its body as message blocks."""

from __future__ import annotations

import codecs
import math
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from anyio import (
    EndOfStream,
    Event,
    create_memory_object_stream,
    create_task_group,
    fail_after,
    move_on_after,
)
from anyio.abc import ObjectReceiveStream
from anyio.lowlevel import checkpoint

from .._http import ASGIApp, Message
from ._messages import EventStreamClosed, ServerSentMessage, StreamTimeout, parse_block

__all__ = ["TestStream", "aconnect"]


class TestStream:
    """The response: its status and headers at once, its messages as they come."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        chunks: ObjectReceiveStream[bytes],
        timeout: float,
    ) -> None:
        self.status = status
        self.headers = dict(headers)
        self.timeout = timeout
        self.last_event_id: str | None = None  # for a resume with Last-Event-ID
        self._chunks = chunks
        self._raw = b""  # what came and is not parsed yet
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._last: ServerSentMessage | None = None

    async def read(self) -> bytes:
        """The rest of the body as the app sent it, for a response that ends (an
        error answer, say)."""
        with self._bounded("end of the body"):
            async for chunk in self._chunks:
                self._raw += chunk
        rest, self._raw, self._text = self._raw, b"", ""
        return rest

    async def next(self) -> ServerSentMessage:
        """The next message block, within the bound."""
        with self._bounded("message"):
            return await self._next()

    async def events(self, n: int) -> list[ServerSentMessage]:
        """The next ``n`` dispatched events, heartbeats skipped, within the bound
        for each (so heartbeats alone cannot keep it waiting)."""
        found: list[ServerSentMessage] = []
        while len(found) < n:
            with self._bounded("event"):
                while (message := await self._next()).event is None:
                    pass
            found.append(message)
        return found

    async def until(self, name: str, *names: str) -> list[ServerSentMessage]:
        """Dispatched events up to and including the first named one (say
        ``until("completed", "error")``)."""
        found: list[ServerSentMessage] = []
        while not found or found[-1].event not in (name, *names):
            found.extend(await self.events(1))
        return found

    def __aiter__(self) -> AsyncIterator[ServerSentMessage]:
        return self._each()

    async def _each(self) -> AsyncIterator[ServerSentMessage]:
        while True:
            try:
                yield await self.next()
            except EventStreamClosed:
                return

    async def _next(self) -> ServerSentMessage:
        # Decoded as a whole (a character may straddle two chunks), with line
        # ends made LF on the whole text: a CR at a chunk's end may be half a CRLF.
        while (cut := self._text.find("\n\n")) < 0:
            try:
                chunk = await self._chunks.receive()
            except EndOfStream:
                raise EventStreamClosed(
                    f"the stream ended; the last message was {self._last!r}"
                ) from None
            self._raw += chunk
            text = self._text + self._decoder.decode(chunk)
            held = "\r" if text.endswith("\r") else ""
            self._text = text.removesuffix(held).replace("\r\n", "\n").replace("\r", "\n")
            self._text += held
        block, self._text = self._text[:cut], self._text[cut + 2 :]
        self._raw = self._text.encode()  # what read() still owes
        if self._last is None:
            block = block.removeprefix("\ufeff")  # a BOM may open the stream
        self._last = parse_block(block)
        if self._last.id is not None:
            self.last_event_id = self._last.id
        return self._last

    def _bounded(self, what: str) -> AbstractContextManager[None]:
        return _explained(
            self.timeout, lambda: f"no {what} within {self.timeout}s; last: {self._last!r}"
        )


@contextmanager
def _explained(timeout: float, why: Callable[[], str]) -> Iterator[None]:
    try:
        with fail_after(timeout):
            yield
    except TimeoutError:
        raise StreamTimeout(why()) from None


def request_scope(method: str, url: str, headers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    parts = urlsplit(url)
    raw_path = parts.path or "/"
    path = unquote(raw_path)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in [("host", "test"), *headers]],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "state": {},
    }


class _Left(OSError):
    """What a send raises once the test has left, as ASGI 2.4 servers raise theirs."""


def _because_it_left(exc: BaseException) -> bool:
    """Did the app fail only because the test left? It may pass the send's error
    on as it is, wrapped (``raise ... from``), or in an exception group. That is
    the app's answer to a departed client (what a server logs), not the test's
    failure: an endless stream may be mid-send when the test stops reading."""
    group = getattr(exc, "exceptions", None)  # an exception group's (3.10: the backport's)
    if isinstance(group, tuple):
        return all(_because_it_left(inner) for inner in group)
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, _Left):
        cause = cause.__cause__
    return cause is not None


class _Call:
    """One call of the app: the client's side of ``receive`` and ``send``."""

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body
        self.left, self.started, self.done = Event(), Event(), Event()
        self.start: Message = {}
        self.failed: list[Exception] = []
        self.sender, self.chunks = create_memory_object_stream[bytes](math.inf)

    async def __call__(self, app: ASGIApp, scope: Message) -> None:
        try:
            with self.sender:
                await app(scope, self.receive, self.send)
        except Exception as exc:  # raised to the test as it is, once the client has left
            if not _because_it_left(exc):
                self.failed.append(exc)
        finally:
            self.started.set()  # an app that returned without a response: the test hears of it
            self.done.set()

    async def receive(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            self.started.set()
        elif message["type"] == "http.response.body":
            body = message.get("body")
            if body:
                await checkpoint()  # a send is a turn for the test, as a server's is
            if self.left.is_set():  # (looked at after it: no turn between this and the put)
                raise _Left("the test client has disconnected")
            if body:
                self.sender.send_nowait(body)  # unbounded: never waits
            if not message.get("more_body", False):
                self.sender.close()


@asynccontextmanager
async def aconnect(
    app: ASGIApp,
    url: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 10.0,  # noqa: ASYNC109 (a bound on each wait, not a deadline for the call)
) -> AsyncIterator[TestStream]:
    """Call ``app`` with one request; yield its response once the status is sent.

    On leaving, the client disconnects and the app has ``timeout`` seconds to
    return (else it is cancelled, and the test fails); an exception the app or
    the test raised is raised here as it is, never in an exception group.
    """
    what = f"{method} {url}"
    call = _Call(body)
    failure: Exception | None = None  # raised after the task group, which would wrap it
    async with create_task_group() as tg:
        tg.start_soon(call, app, request_scope(method, url, headers))
        try:
            with call.chunks:
                with _explained(timeout, lambda: f"{what}: no response within {timeout}s"):
                    await call.started.wait()
                if call.start:
                    names = {k.decode().lower(): v.decode() for k, v in call.start["headers"]}
                    yield TestStream(call.start["status"], names, call.chunks, timeout)
        except Exception as exc:  # the test's own failure, or a bound: raised as it is
            failure = exc
        finally:
            call.left.set()
            with move_on_after(timeout) as waited:
                await call.done.wait()
            if waited.cancelled_caught:
                tg.cancel_scope.cancel()
                gone = f"{what}: the app did not return within {timeout}s of the client leaving"
                failure = failure or StreamTimeout(gone)
    if failure is not None:
        raise failure
    if call.failed:
        raise call.failed[0]
    if not call.start:
        raise EventStreamClosed(f"{what}: the app returned without a response")
