"""A Quart response whose body is an asgi-sse event stream.

Quart sends a response itself: it enters the body with ``async with`` and
iterates it, in the task it cancels when the client disconnects, so the body is
the body of the request's exchange (:meth:`~asgi_sse.EventStream.exchange`),
and leaving it stops the job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, MutableMapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

try:
    from quart import Response, request
    from quart.wrappers.response import ResponseBody
except ImportError:  # the message is the point
    raise ImportError("asgi_sse_quart needs Quart: pip install 'asgi-sse[quart]'") from None

from asgi_sse import EventStream, Headers, Refusal, Source, StreamOptions
from asgi_sse.resumable import Watch

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python 3.11+

__all__ = ["EventStreamResponse"]


class Exchange(Protocol):
    """What this adapter uses of :meth:`EventStream.exchange`'s answer."""

    async def open(self) -> Refusal | None: ...

    def body(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class _EventStreamBody(ResponseBody):
    """Quart's streaming body protocol over the exchange's body context."""

    def __init__(self, exchange: Exchange, *, opened: bool) -> None:
        self._exchange = exchange
        self._opened = opened
        self._body: AbstractAsyncContextManager[AsyncIterator[bytes]] = exchange.body()

    async def __aenter__(self) -> AsyncIterator[bytes]:
        if not self._opened and await self._exchange.open() is not None:
            raise RuntimeError(
                "this source decides its own status: return await EventStreamResponse.resume(...)"
            )
        return await self._body.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._body.__aexit__(exc_type, exc_value, tb)


class EventStreamResponse(Response):
    """Stream a source's events from a Quart handler, as :class:`~asgi_sse.EventStream` would.

    Build it in the handler: it takes the request's scope then, so an app-wide
    asgi-sse middleware can refuse the stream with a 503 (this response then
    carries that refusal instead). ``headers`` replace asgi-sse's own of the
    same name; the other options are :class:`~asgi_sse.EventStream`'s. Cookies,
    headers and ``after_request`` functions work as on any Quart response.
    """

    def __init__(
        self,
        source: Source,
        /,
        *,
        headers: Headers | None = None,
        **stream_options: Unpack[StreamOptions],
    ) -> None:
        if isinstance(source, Watch):
            raise TypeError(
                "a resumable job's status (200, 204, 400 or 404) is decided before the"
                " response: return await EventStreamResponse.resume(watch) instead"
            )
        self._start(EventStream(source, headers=headers, **stream_options))

    @classmethod
    async def resume(
        cls,
        watch: Watch,
        /,
        *,
        headers: Headers | None = None,
        **stream_options: Unpack[StreamOptions],
    ) -> Response:
        """Follow a resumable job (:meth:`asgi_sse.resumable.Jobs.watch`) from the request's
        ``Last-Event-ID``: the stream, or the 204/400/404 to send instead.

        Async, unlike the constructor, because Quart sends the status before
        the body, and the status depends on the job's log."""
        stream = EventStream(watch, headers=headers, **stream_options)
        response = cls.__new__(cls)
        exchange = stream.exchange(_scope())
        answer = exchange if isinstance(exchange, Refusal) else await exchange.open()
        if answer is not None:
            response._refuse(answer)
        else:
            response._start(stream, exchange, opened=True)
        return response

    def _start(
        self,
        stream: EventStream,
        exchange: Exchange | Refusal | None = None,
        *,
        opened: bool = False,
    ) -> None:
        """Admitted by the app's middleware here, once: the cap holds however
        many handlers run before their bodies start."""
        if exchange is None:
            exchange = stream.exchange(_scope())
        if isinstance(exchange, Refusal):
            self._refuse(exchange)
            return
        super().__init__(_EventStreamBody(exchange, opened=opened), status=200)
        self._replace_headers((n.decode("latin-1"), v.decode("latin-1")) for n, v in stream.headers)
        # Quart cuts every response at RESPONSE_TIMEOUT; a stream ends with its job.
        self.timeout = None

    def _refuse(self, refusal: Refusal) -> None:
        super().__init__(status=refusal.status)
        self._replace_headers(refusal.headers)
        self.set_data(refusal.body)

    def _replace_headers(self, pairs: Iterable[tuple[str, str]]) -> None:
        """asgi-sse's headers, in place of Quart's default content-type."""
        self.headers.clear()
        self.headers.extend(pairs)


def _scope() -> MutableMapping[str, Any]:
    # Quart types its scope as hypercorn's TypedDicts; asgi-sse takes any ASGI scope.
    return cast("MutableMapping[str, Any]", request.scope)
