"""In a real browser: headless Chromium's EventSource against hypercorn.

Each test serves a small raw ASGI site with hypercorn (``conftest.serve``): ``/`` is a page whose
script opens ``new EventSource(src)`` and records, in ``window.seen``, everything it is told
(``onopen``, ``onmessage``, ``onerror`` and ``addEventListener`` for the types the test names),
and the other paths are asgi-sse streams. Chromium is the Debian package (``scripts/system-deps.sh``
installs it), driven by Playwright's sync API pointed at ``/usr/bin/chromium``: no browser download.
Python waits on the page with ``wait_for_function`` (bounded by ``BOUND``), never by sleeping.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import chromium
import pytest
from conftest import BOUND, Endless, serve

from asgi_sse import Encoder, EventStream, Reporter, ServerSentEvent, stream_progress

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>asgi-sse in a browser</title></head><body><script>
const params = new URLSearchParams(location.search);
const closeOn = params.get("close");  // the event type after which the page closes the source
const asJson = params.getAll("json");  // the event types whose data the page parses as JSON
const seen = [];
const source = new EventSource(params.get("src"));
window.seen = seen;
window.source = source;

function entry(kind, e) {
  const isMessage = e instanceof MessageEvent;
  const item = {kind, type: e.type, readyState: source.readyState, isMessage};
  if (isMessage) {
    item.data = e.data;
    item.lastEventId = e.lastEventId;
    if (asJson.includes(e.type)) item.parsed = JSON.parse(e.data);
  }
  return item;
}
function recorder(kind) {
  return (e) => {
    seen.push(entry(kind, e));
    if (e.type === closeOn && kind !== "onerror") {
      source.close();
      seen.push({kind: "closed", readyState: source.readyState});
    }
  };
}
source.onopen = (e) => seen.push({kind: "open", type: e.type, readyState: source.readyState});
source.onmessage = recorder("onmessage");
source.onerror = recorder("onerror");
for (const type of params.getAll("listen")) source.addEventListener(type, recorder("listener"));
</script></body></html>
"""

# (what the server sends as text data, what the browser must hand to the page).
# A text event can only carry lines: the format's line ends are CR LF, LF and CR, and a browser
# joins a multi-line event's lines with LF. So a CR or CR LF the server sends arrives as LF,
# which is what it means on this wire. Everything else arrives exactly as sent.
TEXTS = [
    ("", ""),
    ("a\nb", "a\nb"),
    ("a\rb", "a\nb"),
    ("a\r\nb", "a\nb"),
    ("a\n\rb\r\n\nc", "a\n\nb\n\nc"),  # LF CR is two line ends, CR LF is one
    ("\n", "\n"),
    ("ends with a line end\n", "ends with a line end\n"),
    ("\n\nblank lines around\n\n", "\n\nblank lines around\n\n"),
    ("  leading spaces", "  leading spaces"),
    (" \n  indented second line", " \n  indented second line"),
    ("trailing  ", "trailing  "),
    (": not a comment", ": not a comment"),
    ("event: forged\nid: 666\nretry: 1", "event: forged\nid: 666\nretry: 1"),
    ("\u2028 and \u2029", "\u2028 and \u2029"),
    ("form feed \f, vertical tab \v, NEL \x85", "form feed \f, vertical tab \v, NEL \x85"),
    ("é ñ 中文", "é ñ 中文"),
    ("emoji 🎉👍🏽", "emoji 🎉👍🏽"),
    ("nul \u0000 inside", "nul \u0000 inside"),
    ("\ufeffa byte order mark first", "\ufeffa byte order mark first"),
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),  # UTF-8 cannot carry it (documented)
    ("x" * 50_000 + "é🎉\n" + "y" * 50_000, "x" * 50_000 + "é🎉\n" + "y" * 50_000),
]
CUSTOM_TYPES = ["payload", "ünïcode type"]
JSON_TEXTS = [sent for sent, _ in TEXTS]
RESULT = {"count": len(TEXTS), "last": "done 🎉"}


def corpus_event(i: int, text: str) -> ServerSentEvent:
    """Event ``i`` of the corpus: a mix of default and custom types, and of id rules."""
    event = [None, *CUSTOM_TYPES][i % 3]
    if i == 4:
        return ServerSentEvent(data=text, event=event)  # no id: lastEventId is kept
    if i == 7:
        return ServerSentEvent(data=text, event=event, id="")  # empty id: lastEventId resets
    if i == 10:
        return ServerSentEvent(data=text, event=event, id="é-id 🎉 10")
    return ServerSentEvent(data=text, event=event, id=i + 1)


def corpus() -> Generator[ServerSentEvent, None, dict[str, Any]]:
    for i, (text, _) in enumerate(TEXTS):
        yield corpus_event(i, text)
    # The same strings as JSON: a CR survives there, escaped.
    yield ServerSentEvent(data=JSON_TEXTS, event="json", id="json")
    return RESULT  # a generator's return value: the data of `completed`


def site(streams: dict[str, Callable[[], ASGIApp]], requests: list[dict[str, str]]) -> ASGIApp:
    """``/``: the page; each path in ``streams``: a new stream per request; else 404."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path in streams:
            requests.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await streams[path]()(scope, receive, send)
            return
        status, body = (200, PAGE.encode()) if path == "/" else (404, b"")
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def page_url(
    base: str, src: str, *, listen: list[str], close: str | None, json_types: list[str]
) -> str:
    query: list[tuple[str, str]] = [("src", src)]
    query += [("listen", t) for t in listen]
    query += [("json", t) for t in json_types]
    if close is not None:
        query.append(("close", close))
    return f"{base}?{urlencode(query)}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium.launch() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with chromium.open_page(browser) as opened:
        yield opened


def wait_for_closed(page: Page) -> list[dict[str, Any]]:
    """Wait until the page has closed its source; return what it saw."""
    page.wait_for_function("() => window.source.readyState === 2", timeout=chromium.WAIT_MS)
    seen: list[dict[str, Any]] = page.evaluate("() => window.seen")
    return seen


def test_the_browser_sees_each_payload_exactly_with_its_type_and_last_event_id(
    page: Page,
) -> None:
    requests: list[dict[str, str]] = []
    app = site({"/corpus": lambda: EventStream(corpus())}, requests)
    with serve(app) as server:
        page.goto(
            page_url(
                server.url,
                "/corpus",
                listen=[*CUSTOM_TYPES, "json", "completed"],
                close="completed",
                json_types=["json", "completed"],
            )
        )
        seen = wait_for_closed(page)

    expected: list[dict[str, Any]] = []
    last_id = ""
    for i, (sent, meant) in enumerate(TEXTS):
        sse = corpus_event(i, sent)
        if sse.id is not None:
            last_id = str(sse.id)
        expected.append(
            {
                # A custom type reaches its listener only; onmessage gets the default type.
                "kind": "onmessage" if sse.event is None else "listener",
                "type": sse.event or "message",
                "readyState": 1,
                "isMessage": True,
                "data": meant,
                "lastEventId": last_id,
            }
        )
    # A check on the expectation itself, which encodes the spec's lastEventId rules.
    assert [e["lastEventId"] for e in expected[3:12]] == [
        "4", "4", "6", "7", "", "9", "10", "é-id 🎉 10", "12",
    ]  # fmt: skip
    # JSON escapes CR and LF: there the strings arrive as sent, line ends and all.
    expected_json = [sent.replace("\ud800", "\ufffd") for sent, _ in TEXTS]
    message = {"readyState": 1, "isMessage": True}
    expected += [
        {
            "kind": "listener",
            "type": "json",
            **message,
            "data": Encoder().json(JSON_TEXTS).decode(),
            "lastEventId": "json",
            "parsed": expected_json,
        },
        {
            "kind": "listener",
            "type": "completed",
            **message,
            "data": Encoder().json(RESULT).decode(),
            "lastEventId": "json",  # the iterable's terminal event has no id: the last one holds
            "parsed": RESULT,
        },
        {"kind": "closed", "readyState": 2},
    ]
    assert seen[0] == {"kind": "open", "type": "open", "readyState": 1}, seen[:2]
    events = seen[1:]
    assert len(events) == len(expected), [(e["kind"], e.get("type")) for e in events]
    for i, (got, want) in enumerate(zip(events, expected, strict=True)):
        assert got == want, f"event {i}: sent {TEXTS[i][0][:80]!r}" if i < len(TEXTS) else i
    assert len(requests) == 1  # the page closed on `completed`: no reconnection
    assert "last-event-id" not in requests[0]


def test_an_error_event_from_a_failing_job_reaches_the_error_listener(page: Page) -> None:
    def job(on_progress: Reporter) -> None:
        on_progress("started", {"note": "é🎉"})
        raise ValueError("a secret the client must not see")

    app = site({"/fails": lambda: stream_progress(job)}, [])
    with serve(app) as server:
        page.goto(
            page_url(
                server.url,
                "/fails",
                listen=["progress", "error"],
                close="error",
                json_types=["progress", "error"],
            )
        )
        seen = wait_for_closed(page)

    message = {"readyState": 1, "isMessage": True}
    error_data = {"type": "ValueError"}
    error = {"type": "error", **message, "data": json.dumps(error_data, separators=(",", ":"))}
    assert seen == [
        {"kind": "open", "type": "open", "readyState": 1},
        {
            "kind": "listener",
            "type": "progress",
            **message,
            "data": '{"step":"started","details":{"note":"é🎉"}}',
            "lastEventId": "1",
            "parsed": {"step": "started", "details": {"note": "é🎉"}},
        },
        # asgi-sse's `error` is a MessageEvent named "error": onerror (set first) gets it too,
        # with its data, as well as addEventListener("error"), which closes the source.
        {"kind": "onerror", **error, "lastEventId": "2", "parsed": error_data},
        {"kind": "listener", **error, "lastEventId": "2", "parsed": error_data},
        {"kind": "closed", "readyState": 2},
    ]


def test_a_page_that_does_not_close_gets_the_generic_error_and_reconnects(page: Page) -> None:
    """The stream ends after `completed`; a page that ignores it sees the connection end."""
    requests: list[dict[str, str]] = []
    reconnected = threading.Event()

    def stream() -> ASGIApp:
        if not requests[1:]:
            # retry: reconnect after 50 ms rather than Chromium's default 3 s.
            return EventStream([ServerSentEvent(data="only", id="7", retry=50)])

        async def no_content(scope: Any, receive: Any, send: Any) -> None:
            # 204 tells EventSource to stop: it fails the connection, no more retries.
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            reconnected.set()

        return no_content

    app = site({"/once": stream}, requests)
    with serve(app) as server:
        page.goto(page_url(server.url, "/once", listen=["completed"], close=None, json_types=[]))
        seen = wait_for_closed(page)
        assert reconnected.wait(BOUND)

    message = {"readyState": 1, "isMessage": True}
    assert seen == [
        {"kind": "open", "type": "open", "readyState": 1},
        {"kind": "onmessage", "type": "message", **message, "data": "only", "lastEventId": "7"},
        {"kind": "listener", "type": "completed", **message, "data": "null", "lastEventId": "7"},
        # The connection ended: a plain Event, no data, and the source is reconnecting.
        {"kind": "onerror", "type": "error", "readyState": 0, "isMessage": False},
        # The reconnection got 204: failed for good.
        {"kind": "onerror", "type": "error", "readyState": 2, "isMessage": False},
    ]
    assert len(requests) == 2
    assert "last-event-id" not in requests[0]
    assert requests[1]["last-event-id"] == "7"  # the reconnection says where it was


def test_closing_the_event_source_cancels_the_job(page: Page) -> None:
    endless = Endless()
    done = threading.Event()

    def stream() -> ASGIApp:
        inner = stream_progress(endless)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            try:
                await inner(scope, receive, send)
            finally:
                done.set()

        return app

    app = site({"/endless": stream}, [])
    with serve(app) as server:
        page.goto(
            page_url(server.url, "/endless", listen=["progress"], close="progress", json_types=[])
        )
        seen = wait_for_closed(page)
        # close() aborts the request: the server hears the disconnect and stops the job.
        assert endless.stopped.wait(BOUND), "the job still runs after the page closed its source"
        assert done.wait(BOUND), "the stream did not end after the page closed its source"
    assert endless.outcome == ["cancelled"]
    assert seen == [
        {"kind": "open", "type": "open", "readyState": 1},
        {
            "kind": "listener",
            "type": "progress",
            "readyState": 1,
            "isMessage": True,
            "data": '{"step":"started","details":{}}',
            "lastEventId": "1",
        },
        {"kind": "closed", "readyState": 2},
    ]
