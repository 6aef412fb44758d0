"""ASGI details shared by the stream, the middleware and the app: the types, the
headers an event stream sends (and the extra ones it accepts), plain responses
sent instead of a stream, and a plain answer to the lifespan protocol."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Union

import msgspec

from ._hub import Hub

__all__ = [
    "ASGIApp",
    "Headers",
    "Message",
    "Receive",
    "Refusal",
    "Scope",
    "Send",
    "answer_lifespan",
    "check_headers",
    "error_response",
    "refusal",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: frameworks type their scopes in their own ways (Quart, TypedDicts).
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

# No ``connection`` header: it is illegal on HTTP/2 and the server's business.
_HEADERS = {
    b"content-type": b"text/event-stream; charset=utf-8",
    b"cache-control": b"no-cache",
    b"x-accel-buffering": b"no",  # nginx: pass each event on, do not buffer
}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field names
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in field values: CTLs but HTAB
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "content-length"}
)

Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]


def check_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Validate extra headers; they replace asgi-sse's own of the same name.

    Pairs may repeat a name (``set-cookie``); a mapping cannot.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    extra: list[tuple[bytes, bytes]] = []
    for name, value in pairs:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if name.lower() in _HOP_BY_HOP:
            raise ValueError(f"header {name!r} is hop-by-hop; the server sets it, if anyone")
        if _FORBIDDEN.search(value):
            raise ValueError(
                f"header {name!r} contains a control character (RFC 9110 allows only"
                f" tab among them): {value!r}"
            )
        extra.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    replaced = {name for name, _ in extra}
    return [(n, v) for n, v in _HEADERS.items() if n not in replaced] + extra


@dataclass(frozen=True)
class Refusal:
    """A plain response sent instead of a stream (full, shutting down, a bad request)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            await send({"type": "http.response.body", "body": self.body})
        except OSError:  # ASGI: a server may raise it for a client gone; nobody to answer
            return

    async def as_event(self) -> AsyncIterator[bytes]:
        """The refusal as a body's one ``error`` event, once a 200 has gone out."""
        yield b"event: error\ndata: %b\n\n" % self.body


def error_response(
    status: int, kind: str, headers: Iterable[tuple[str, str]] = (), **fields: Any
) -> Refusal:
    """A plain JSON answer in asgi-sse's one error shape: ``{"type": kind, ...fields}``,
    ``kind`` a name a client can match on (as an ``error`` event's data is)."""
    body = msgspec.json.encode({"type": kind, **fields})
    pairs = [("content-type", "application/json"), ("cache-control", "no-store"), *headers]
    return Refusal(status, pairs, body)


def refusal(hub: Hub) -> Refusal:
    # A browser's EventSource treats any status but 200 as final: it will not
    # reconnect by itself, so the page decides when to try again.
    kind = "ServerShutdown" if hub.closing else "ServerBusy"
    retry = hub.retry_after
    return error_response(503, kind, [("retry-after", str(retry))], retry_after=retry)


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Complete every lifespan step, for an app with nothing to start or stop
    (whatever ``receive`` does on the way is the caller's)."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return
