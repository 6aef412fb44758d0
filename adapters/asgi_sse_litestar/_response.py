"""A Litestar response that streams a source through asgi-sse's ``EventStream``.

Litestar builds the ASGI response late, in ``to_asgi_response``, after its
``after_request`` hooks have seen the response and with the layers' headers,
cookies, background tasks and ``type_encoders`` in hand. So the response only
holds the source and the stream options; the ``EventStream`` is made there, and
the ASGI response Litestar gets back hands the whole exchange (start, body,
disconnect, send timeouts) to it, then runs the background task.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

try:
    from litestar import Response
    from litestar.response.base import ASGIResponse
    from litestar.serialization import get_serializer
except ImportError:  # the message is the point
    raise ImportError(
        "asgi_sse_litestar needs Litestar: pip install 'asgi-sse[litestar]'"
    ) from None

from asgi_sse import Encoder, EventStream, Source, StreamOptions

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.datastructures import Cookie
    from litestar.enums import MediaType
    from litestar.types import (
        Receive,
        ResponseCookies,
        ResponseHeaders,
        Scope,
        Send,
        TypeEncodersMap,
    )
    from typing_extensions import Unpack

__all__ = ["EVENT_STREAM", "EventStreamResponse", "StreamOptions"]

#: The media type of a Server-Sent Events stream; give it to the route decorator
#: (``@get("/events", media_type=EVENT_STREAM)``) for OpenAPI to say so.
EVENT_STREAM = "text/event-stream"


class EventStreamResponse(Response[Source]):
    """Stream a :class:`asgi_sse.Job`'s progress, or an iterable's events, from a handler.

    A Litestar ``Response``, so ``headers``, ``cookies``, ``background`` and the
    ``after_request`` hooks work as they do for any other; ``stream_options`` are
    :class:`asgi_sse.EventStream`'s. The status is always 200: a stream's
    outcome is its last event, and asgi-sse's middleware may answer 503 itself.
    Without an explicit ``encoder``, values msgspec does not know go through
    the app's ``type_encoders`` and Litestar's defaults, as in its JSON responses.
    """

    __slots__ = ("stream_options",)

    def __init__(
        self,
        source: Source,
        *,
        headers: ResponseHeaders | None = None,
        cookies: ResponseCookies | None = None,
        background: BackgroundTask | BackgroundTasks | None = None,
        **stream_options: Unpack[StreamOptions],
    ) -> None:
        super().__init__(
            source,
            background=background,
            cookies=cookies,
            headers=headers,
            media_type=EVENT_STREAM,
        )
        self.stream_options = stream_options

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        # Layers' headers, cookies and type encoders merge as in Litestar's own
        # Response: the response's win. ``media_type`` and ``status_code`` are the
        # route's defaults for a body Litestar renders; a stream has its own. HEAD
        # handlers cannot return a body, so ``is_head_response`` never applies.
        options: StreamOptions = {**self.stream_options}
        if options.get("encoder") is None:
            merged = {**(type_encoders or {}), **self.response_type_encoders}
            options["encoder"] = Encoder(enc_hook=get_serializer(merged))
        return _ASGIEventStream(
            self.content,
            options,
            background=self.background or background,
            cookies=itertools.chain(self.cookies, cookies or ()),
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**(headers or {}), **self.headers},
        )


class _ASGIEventStream(ASGIResponse):
    """Litestar's low-level response, with the exchange left to ``EventStream``."""

    __slots__ = ("stream",)

    _should_set_content_length = False

    def __init__(
        self,
        source: Source,
        options: StreamOptions,
        *,
        background: BackgroundTask | BackgroundTasks | None,
        cookies: Iterable[Cookie],
        encoded_headers: Iterable[tuple[bytes, bytes]] | None,
        encoding: str,
        headers: dict[str, Any],
    ) -> None:
        super().__init__(
            background=background,
            cookies=cookies,
            encoded_headers=encoded_headers,
            encoding=encoding,
            headers=headers,
            media_type=EVENT_STREAM,
        )
        # Litestar's encoding of headers and cookies (one set-cookie each), as text.
        pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.encode_headers()]
        self.stream = EventStream(source, headers=pairs, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The same ASGI messages: Litestar types them as TypedDicts, asgi-sse as mappings.
        await self.stream(scope, receive, send)  # type: ignore[arg-type]
        await self.after_response()
