"""A Starlette ``Response`` that is an asgi-sse event stream.

Starlette serves any ASGI callable a handler returns, but FastAPI passes on only
``Response`` instances and tries to serialise anything else as JSON. This
subclass is a real ``Response`` (headers, ``set_cookie``, ``background``,
``response_class=`` for OpenAPI) whose sending is an ``EventStream``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

try:
    from starlette.background import BackgroundTask
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send
except ImportError:  # the message is the point
    raise ImportError(
        "asgi_sse_starlette needs Starlette: pip install 'asgi-sse[starlette]' (or [fastapi])"
    ) from None

from asgi_sse import EventStream, Source, StreamOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python 3.11+

__all__ = ["EventStreamResponse", "StreamOptions"]


class EventStreamResponse(Response):
    """Stream ``source`` (a ``Job``, or a sync or async iterable of events) as SSE.

    Return it from a Starlette or FastAPI handler; with FastAPI, also pass
    ``response_class=EventStreamResponse`` so the OpenAPI schema says
    ``text/event-stream``. Headers given here or set later (``response.headers``,
    ``response.set_cookie``) reach the client; ``content-type`` is always
    asgi-sse's, since the stream's framing and encoding are. ``background`` runs
    once the stream has ended, by its last event or by the client leaving.

    The status is always 200, since an error that happens once the stream has
    started can only be an ``error`` event. ``status_code`` is there for FastAPI
    alone: its OpenAPI generation reads the default from this signature and fails
    for the whole app without one (fastapi/fastapi#5651).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        source: Source,
        /,
        *,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
        status_code: Literal[200] = 200,
        **stream_options: Unpack[StreamOptions],
    ) -> None:
        if status_code != 200:
            raise ValueError(f"an event stream's status is 200, not {status_code!r}")
        self.source = source
        self.stream_options = stream_options
        self.status_code = 200
        self.background = background
        self.init_headers(headers)
        # Check the source, the options and the headers so far now, so that a
        # mistake fails in the handler rather than once the response is sent.
        self._event_stream()

    def _event_stream(self) -> EventStream:
        """Build the stream with the headers as they are now.

        Called again when sending, since headers and cookies may be added to a
        response after it is built.
        """
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in self.raw_headers
            if name != b"content-type"
        ]
        return EventStream(self.source, headers=headers, **self.stream_options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._event_stream()(scope, receive, send)
        if self.background is not None:
            await self.background()
