"""progress_app: a request's arguments checked before any stream starts.

In process first, on asyncio and trio, with a driver that sends a method, a
query string, headers and a body; then over a real socket, served alone and
mounted under Starlette and Litestar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import pytest
from conftest import BOUND, ASGIApp, Call, Message, parse, serve
from litestar import Litestar, asgi
from starlette.applications import Starlette
from starlette.routing import Mount

from asgi_sse import Reporter, progress_app

pytestmark = pytest.mark.anyio

JSON = ("content-type", "application/json")
MAX_BODY = 64 * 1024  # what the app documents as its limit


async def request(
    app: ASGIApp,
    method: str = "GET",
    query: str = "",
    *,
    headers: Sequence[tuple[str, str]] = (),
    chunks: Sequence[bytes] = (b"",),
) -> Call:
    """One request, its body in ``chunks``; the client stays until the response ends."""
    call = Call()
    pending = list(chunks)
    ended = anyio.Event()

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await ended.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        call.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            ended.set()

    scope = {
        "type": "http",
        "method": method,
        "path": "/",
        "query_string": query.encode("ascii"),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "http_version": "1.1",
    }
    with anyio.fail_after(BOUND):
        await app(scope, receive, send)
    return call


async def post(app: ASGIApp, body: bytes, content_type: str = "application/json") -> Call:
    return await request(app, "POST", headers=[("content-type", content_type)], chunks=[body])


def answer(call: Call) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and whole body; ``Call.start`` holds that the status came first."""
    assert call.finished
    return call.start["status"], call.start["headers"], call.body


KINDS = {
    400: "MalformedRequest",
    405: "MethodNotAllowed",
    413: "BodyTooLarge",
    415: "UnsupportedMediaType",
    422: "InvalidArguments",
}


def error(status: int, message: str, *extra: tuple[str, str]) -> tuple[int, list[Any], bytes]:
    """A plain JSON error in asgi-sse's one shape, as the app must answer it
    instead of a stream."""
    pairs = (JSON, ("cache-control", "no-store"), *extra)
    headers = [(k.encode(), v.encode()) for k, v in pairs]
    body = {"type": KINDS[status], "detail": message}
    return status, headers, json.dumps(body, separators=(",", ":")).encode()


def completed(call: Call) -> str:
    """The ``completed`` event's data (JSON text) of a whole 200 stream."""
    status, headers, body = answer(call)
    assert (status, headers[0]) == (200, (b"content-type", b"text/event-stream; charset=utf-8"))
    events = parse(body)
    assert events[-1]["event"] == "completed", events
    return events[-1]["data"]


def measuring() -> tuple[ASGIApp, list[dict[str, Any]]]:
    """An app over a job with typed parameters, and the arguments it was called with."""
    calls: list[dict[str, Any]] = []

    def measure(
        n: int,
        ratio: float,
        loud: bool,
        ids: list[int],
        label: str = "none",
        *,
        on_progress: Reporter,
    ) -> dict[str, Any]:
        arguments = {"n": n, "ratio": ratio, "loud": loud, "ids": ids, "label": label}
        calls.append(arguments)
        on_progress("measured", {"n": n})
        return arguments

    return progress_app(measure, heartbeat=None), calls


VALID = "n=3&ratio=0.5&loud=true&ids=1&ids=2"

# Each bad request, what it must get instead of a stream: (method, query,
# headers, body chunks) -> (status, error message, extra headers).
BAD_REQUESTS = [
    pytest.param("GET", "ratio=0.5&loud=true&ids=1", [], [b""],
                 error(422, "Object missing required field `n`"), id="missing"),
    pytest.param("GET", "n=three&ratio=0.5&loud=true&ids=1", [], [b""],
                 error(422, "Expected `int`, got `str` - at `$.n`"), id="not an int"),
    pytest.param("GET", "n=3&ratio=half&loud=true&ids=1", [], [b""],
                 error(422, "Expected `float`, got `str` - at `$.ratio`"), id="not a float"),
    pytest.param("GET", "n=3&ratio=0.5&loud=yes&ids=1", [], [b""],
                 error(422, "Expected `bool`, got `str` - at `$.loud`"), id="not a bool"),
    pytest.param("GET", "n=3&ratio=0.5&loud=true&ids=1&ids=x", [], [b""],
                 error(422, "Expected `int`, got `str` - at `$.ids[1]`"), id="list item"),
    pytest.param("GET", f"{VALID}&colour=red", [], [b""],
                 error(422, "Object contains unknown field `colour`"), id="unknown"),
    pytest.param("GET", f"{VALID}&on_progress=x", [], [b""],
                 error(422, "Object contains unknown field `on_progress`"), id="on_progress"),
    pytest.param("GET", f"{VALID}&n=4", [], [b""],
                 error(422, "`n` is given more than once"), id="repeated"),
    pytest.param("POST", "", [JSON], [b"[3, 0.5]"],
                 error(422, "Expected `object`, got `array`"), id="JSON not an object"),
    pytest.param("POST", "", [JSON], [b'{"n": "3", "ratio": 0.5, "loud": true, "ids": []}'],
                 error(422, "Expected `int`, got `str` - at `$.n`"), id="JSON is typed"),
    pytest.param("POST", "", [JSON], [b'{"n": 3, "ratio": 0.5, "loud": true, "ids": [], "x": 1}'],
                 error(422, "Object contains unknown field `x`"), id="JSON unknown"),
    pytest.param("POST", "", [JSON], [b'{"n": 3,', b""],
                 error(400, "malformed JSON body: Input data was truncated"), id="truncated"),
    pytest.param("POST", "", [JSON], [b""],
                 error(400, "malformed JSON body: Input data was truncated"), id="empty"),
    pytest.param("POST", "", [JSON], [b'{"n": 3,}'],
                 error(400, "malformed JSON body: JSON is malformed: trailing comma in object"
                       " (byte 8)"), id="trailing comma"),
    pytest.param("POST", "", [("content-type", "text/plain")], [b'{"n": 3}'],
                 error(415, "send the arguments as a JSON object (content-type: application/json)"),
                 id="text/plain"),
    pytest.param("POST", VALID, [], [b""],
                 error(415, "send the arguments as a JSON object (content-type: application/json)"),
                 id="no content-type"),
    pytest.param("POST", "", [JSON], [b" " * (MAX_BODY + 1)],
                 error(413, f"the body is larger than {MAX_BODY} bytes"), id="too large"),
    pytest.param("POST", "", [JSON], [b" " * 16384] * 4 + [b"{}"],
                 error(413, f"the body is larger than {MAX_BODY} bytes"), id="too large in chunks"),
    pytest.param("PUT", VALID, [], [b""],
                 error(405, "PUT is not allowed", ("allow", "GET, POST")), id="PUT"),
    pytest.param("DELETE", VALID, [], [b""],
                 error(405, "DELETE is not allowed", ("allow", "GET, POST")), id="DELETE"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "query", "headers", "chunks", "expected"), BAD_REQUESTS)
async def test_a_bad_request_gets_a_plain_json_error_and_no_job_runs(
    method: str,
    query: str,
    headers: list[tuple[str, str]],
    chunks: list[bytes],
    expected: tuple[int, list[Any], bytes],
) -> None:
    app, calls = measuring()
    call = await request(app, method, query, headers=headers, chunks=chunks)
    assert answer(call) == expected
    assert calls == []


@pytest.mark.parametrize(
    ("loud", "loud_json"), [("true", "true"), ("1", "true"), ("false", "false"), ("0", "false")]
)
async def test_query_values_become_the_parameters_types(loud: str, loud_json: str) -> None:
    app, calls = measuring()
    query = urlencode(
        [("n", "3"), ("ratio", "2"), ("loud", loud), ("ids", "1"), ("ids", "22"), ("ids", "3")]
    )
    data = completed(await request(app, "GET", query))
    # The JSON text tells 3 from 3.0 and true from "true": the types arrived, not only the values.
    assert data == f'{{"n":3,"ratio":2.0,"loud":{loud_json},"ids":[1,22,3],"label":"none"}}'
    assert [type(v) for v in calls[0].values()] == [int, float, bool, list, str]


async def test_a_list_parameter_takes_one_value_or_many_and_text_is_utf8() -> None:
    app, calls = measuring()
    query = urlencode({"n": 1, "ratio": 0.5, "loud": "false", "ids": 7, "label": "été 日本+1"})
    data = json.loads(completed(await request(app, "GET", query)))
    assert data["ids"] == [7]
    assert data["label"] == "été 日本+1"
    assert calls == [{"n": 1, "ratio": 0.5, "loud": False, "ids": [7], "label": "été 日本+1"}]


async def test_a_json_body_passes_typed_arguments() -> None:
    app, calls = measuring()
    body = json.dumps({"n": 2, "ratio": 1, "loud": True, "ids": [4, 5], "label": "café"})
    call = await post(app, body.encode(), "application/json; charset=utf-8")
    assert completed(call) == '{"n":2,"ratio":1.0,"loud":true,"ids":[4,5],"label":"café"}'
    assert len(calls) == 1
    assert [e["event"] for e in parse(call.body)] == ["progress", "completed"]


async def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    app, calls = measuring()
    head = b'{"n": 1, "ratio": 1, "loud": true, "ids": [], "label": "'
    body = head + b"x" * (MAX_BODY - len(head) - 2) + b'"}'
    assert len(body) == MAX_BODY
    half = MAX_BODY // 2
    call = await request(app, "POST", headers=[JSON], chunks=[body[:half], body[half:]])
    assert json.loads(completed(call))["label"] == "x" * (MAX_BODY - len(head) - 2)
    assert len(calls) == 1


async def test_stream_options_reach_the_stream() -> None:
    def failing(reason: str, *, on_progress: Reporter) -> None:
        raise LookupError(reason)

    app = progress_app(
        failing,
        heartbeat=None,
        headers={"x-job": "failing"},
        on_error=lambda exc: {"type": type(exc).__name__, "reason": str(exc)},
    )
    status, headers, body = answer(await request(app, "GET", "reason=gone"))
    assert status == 200
    assert (b"x-job", b"failing") in headers
    assert [(e["event"], e["data"]) for e in parse(body)] == [
        ("error", '{"type":"LookupError","reason":"gone"}')
    ]


async def test_it_answers_lifespan_itself() -> None:
    app, _ = measuring()
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(BOUND):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


async def test_it_refuses_websockets() -> None:
    app, _ = measuring()

    async def never(*_: Any) -> Any:
        raise AssertionError("a websocket must not be read or answered")

    with pytest.raises(RuntimeError, match="websocket"):
        await app({"type": "websocket", "path": "/"}, never, never)


def construction_mistakes() -> list[Any]:
    async def asynchronous(n: int, *, on_progress: Reporter) -> None:
        pass

    def unreporting(n: int) -> None:
        pass

    def positional(n: int, /, *, on_progress: Reporter) -> None:
        pass

    return [
        pytest.param(asynchronous, "is async", id="async"),
        pytest.param(unreporting, "on_progress", id="no on_progress"),
        pytest.param(positional, "'n' is positional-only", id="positional-only"),
    ]


@pytest.mark.parametrize(("func", "match"), construction_mistakes())
def test_a_function_it_cannot_call_fails_when_the_app_is_built(func: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        progress_app(func)


def test_bad_stream_options_fail_when_the_app_is_built() -> None:
    def job(on_progress: Reporter) -> None:
        pass

    with pytest.raises(ValueError, match="heartbeat"):
        progress_app(job, heartbeat=0)


async def test_an_optional_list_takes_repeated_query_keys() -> None:
    def tagged(tags: list[str] | None = None, *, on_progress: Reporter) -> list[str] | None:
        return tags

    app = progress_app(tagged, heartbeat=None)
    assert completed(await request(app, "GET", "tags=a&tags=b")) == '["a","b"]'
    assert completed(await request(app, "GET", "tags=a")) == '["a"]'
    assert completed(await request(app, "GET", "")) == "null"


async def test_a_head_request_gets_the_headers_without_running_the_job() -> None:
    app, calls = measuring()
    status, headers, body = answer(await request(app, "HEAD", VALID))
    assert (status, headers[0]) == (200, (b"content-type", b"text/event-stream; charset=utf-8"))
    assert body == b""
    assert calls == []


# Over a real socket.


def alone() -> tuple[ASGIApp, str]:
    return measuring()[0], ""


def under_starlette() -> tuple[ASGIApp, str]:
    return Starlette(routes=[Mount("/jobs", app=measuring()[0])]), "jobs/"


def under_litestar() -> tuple[ASGIApp, str]:
    mounted = asgi("/jobs", is_mount=True, copy_scope=True)(measuring()[0])
    return Litestar([mounted]), "jobs"


@pytest.mark.parametrize(
    ("setup", "backend"),
    [
        (alone, "asyncio"),
        (alone, "trio"),
        (under_starlette, "asyncio"),
        (under_litestar, "asyncio"),
    ],
    ids=["alone-asyncio", "alone-trio", "Starlette Mount", "Litestar asgi mount"],
)
def test_over_a_socket_it_streams_a_good_request_and_refuses_a_bad_one(
    setup: Callable[[], tuple[ASGIApp, str]], backend: str
) -> None:
    app, path = setup()
    with (
        serve(app, wrap=False, backend=backend) as server,
        httpx.Client(timeout=BOUND, base_url=server.url) as client,
    ):
        with client.stream("GET", f"{path}?{VALID}&label=caf%C3%A9") as response:
            streamed = parse(response.read())
        posted = client.post(path, json={"n": 1, "ratio": 0.5, "loud": False, "ids": []})
        refused = client.get(f"{path}?n=three&ratio=0.5&loud=true&ids=1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert [(e["event"], e["id"], json.loads(e["data"])) for e in streamed] == [
        ("progress", "1", {"step": "measured", "details": {"n": 3}}),
        ("completed", "2", {"n": 3, "ratio": 0.5, "loud": True, "ids": [1, 2], "label": "café"}),
    ]
    assert posted.status_code == 200
    assert parse(posted.content)[-1]["data"] == (
        '{"n":1,"ratio":0.5,"loud":false,"ids":[],"label":"none"}'
    )
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/json"
    assert refused.json() == {
        "type": "InvalidArguments",
        "detail": "Expected `int`, got `str` - at `$.n`",
    }
