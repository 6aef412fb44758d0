"""The apps of the parity test: one job, every way of serving it, and the bytes it
must give. A module of its own, so a server process can import it too (servers_app).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from fastapi import FastAPI
from litestar import Litestar, get
from quart import Quart
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

import asgi_sse_litestar
import asgi_sse_quart
import asgi_sse_starlette
from asgi_sse import EventStream, Job, Reporter, progress_app

ASGIApp = Callable[[Any, Any, Any], Any]

TITLE = "Café 日本"


def survey(title: str, fail: bool = False, *, on_progress: Reporter) -> dict[str, Any]:
    """A job whose events exercise the encoder: text, nesting, msgspec's own
    types (datetime, Decimal, UUID: strings) and one nobody knows (``str()``)."""
    on_progress("start", {"title": title})
    on_progress(
        "measure",
        {
            "at": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
            "price": Decimal("12.50"),
            "id": UUID("12345678-1234-5678-1234-567812345678"),
            "share": Fraction(1, 3),
        },
    )
    on_progress(
        "nested",
        {
            "cities": [
                {"name": "Zürich", "tags": ["é", "日本"], "pop": 421_878},
                {"name": "Tōkyō", "tags": [], "pop": None},
            ],
            "ratio": 0.25,
            "ok": True,
            "empty": {},
        },
    )
    if fail:
        raise ValueError("the message stays on the server")
    return {"title": title, "steps": 3, "résumé": ["fini", "終わり"]}


# The golden streams. Non-ASCII is raw UTF-8 on the wire: é is \xc3\xa9,
# 日本 is \xe6\x97\xa5\xe6\x9c\xac.
PROGRESS = (
    b"event: progress\n"
    b"id: 1\n"
    b'data: {"step":"start","details":{"title":"Caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac"}}\n'
    b"\n"
    b"event: progress\n"
    b"id: 2\n"
    b'data: {"step":"measure","details":{"at":"2024-05-06T07:08:09.123456Z",'
    b'"price":"12.50","id":"12345678-1234-5678-1234-567812345678","share":"1/3"}}\n'
    b"\n"
    b"event: progress\n"
    b"id: 3\n"
    b'data: {"step":"nested","details":{"cities":[{"name":"Z\xc3\xbcrich",'
    b'"tags":["\xc3\xa9","\xe6\x97\xa5\xe6\x9c\xac"],"pop":421878},'
    b'{"name":"T\xc5\x8dky\xc5\x8d","tags":[],"pop":null}],"ratio":0.25,"ok":true,"empty":{}}}\n'
    b"\n"
)
COMPLETED = PROGRESS + (
    b"event: completed\n"
    b"id: 4\n"
    b'data: {"title":"Caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac","steps":3,'
    b'"r\xc3\xa9sum\xc3\xa9":["fini","\xe7\xb5\x82\xe3\x82\x8f\xe3\x82\x8a"]}\n'
    b"\n"
)
# The type only: never the message, which may hold a secret.
ERROR = PROGRESS + b'event: error\nid: 4\ndata: {"type":"ValueError"}\n\n'
GOLDEN = {"completed": COMPLETED, "error": ERROR}


@dataclass(frozen=True)
class Setup:
    """An app to serve and the path that runs the job on it."""

    app: ASGIApp
    path: str = ""
    wrap: bool = False  # True: a bare response, which needs conftest to answer lifespan


def raw_asgi(fail: bool) -> Setup:
    return Setup(EventStream(Job(survey, TITLE, fail=fail), heartbeat=None), wrap=True)


def whole_app(fail: bool) -> Setup:
    query = urlencode({"title": TITLE, "fail": str(fail).lower()})
    return Setup(progress_app(survey, heartbeat=None), path=f"?{query}")


def starlette_bare(fail: bool) -> Setup:
    async def endpoint(request: Request) -> EventStream:
        return EventStream(Job(survey, TITLE, fail=fail), heartbeat=None)

    return Setup(Starlette(routes=[Route("/", endpoint)]))


def starlette_adapter(fail: bool) -> Setup:
    async def endpoint(request: Request) -> asgi_sse_starlette.EventStreamResponse:
        return asgi_sse_starlette.EventStreamResponse(Job(survey, TITLE, fail=fail), heartbeat=None)

    return Setup(Starlette(routes=[Route("/", endpoint)]))


def fastapi_adapter(fail: bool) -> Setup:
    app = FastAPI()

    @app.get("/", response_class=asgi_sse_starlette.EventStreamResponse)
    async def endpoint() -> asgi_sse_starlette.EventStreamResponse:
        return asgi_sse_starlette.EventStreamResponse(Job(survey, TITLE, fail=fail), heartbeat=None)

    return Setup(app)


def litestar_adapter(fail: bool) -> Setup:
    @get("/")
    async def endpoint() -> asgi_sse_litestar.EventStreamResponse:
        return asgi_sse_litestar.EventStreamResponse(Job(survey, TITLE, fail=fail), heartbeat=None)

    return Setup(Litestar([endpoint]))


def quart_adapter(fail: bool) -> Setup:
    app = Quart(__name__)

    @app.get("/")
    async def endpoint() -> asgi_sse_quart.EventStreamResponse:
        return asgi_sse_quart.EventStreamResponse(Job(survey, TITLE, fail=fail), heartbeat=None)

    return Setup(app)


WAYS: dict[str, Callable[[bool], Setup]] = {
    "raw ASGI": raw_asgi,
    "progress_app": whole_app,
    "Starlette, EventStream as is": starlette_bare,
    "Starlette adapter": starlette_adapter,
    "FastAPI adapter": fastapi_adapter,
    "Litestar adapter": litestar_adapter,
    "Quart adapter": quart_adapter,
}
