"""In a real browser over HTTP/2: headless Chromium's EventSource against hypercorn over TLS.

Browsers speak HTTP/2 only over TLS, chosen by ALPN. trustme makes a test CA and a certificate for
127.0.0.1 and localhost; hypercorn serves it (its ALPN offers ``h2`` and ``http/1.1``) on
127.0.0.1. Chromium trusts exactly that certificate: it is launched with
``--ignore-certificate-errors-spki-list=<sha256 of the leaf's SubjectPublicKeyInfo>``, a pin on
this one key, not ``--ignore-certificate-errors`` (every certificate). Debian's Chromium reads
trusted CAs from an NSS database, and certutil (libnss3-tools) is not a dependency of this suite,
so the pin is the honest way in; ``test_the_pin_trusts_only_the_test_certificate`` shows that
another certificate from the same CA is still refused.

The page opens ``EventSource``s on demand (``openSource``) and records what each is told, so one
page can hold two streams on one connection. Python waits on the page with ``wait_for_function``
(bounded by ``BOUND``), never by sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import chromium
import httpx
import pytest
from conftest import BOUND, Endless, serve
from httpx_sse import connect_sse

from asgi_sse import EventStream, Job, JobCancelled, Reporter, stream_progress

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

try:
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
except ImportError:  # pragma: no cover - the dev group brings it
    trustme = None

# RFC 9113 section 8.2.2: an HTTP/2 response carrying one of these is malformed.
CONNECTION_SPECIFIC = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
}

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>asgi-sse over HTTP/2</title></head><body><script>
window.seen = {};
window.sources = {};
// Open an EventSource named `name`; record its events of `types`; close it on `closeOn`.
window.openSource = (name, src, types, closeOn) => {
  const source = new EventSource(src);
  const seen = [];
  window.seen[name] = seen;
  window.sources[name] = source;
  source.onopen = () => seen.push({type: "open"});
  source.onerror = () => seen.push({type: "onerror", readyState: source.readyState});
  for (const type of types) {
    source.addEventListener(type, (e) => {
      seen.push({type: e.type, data: e.data, lastEventId: e.lastEventId});
      if (e.type === closeOn) source.close();
    });
  }
};
window.closeSource = (name) => {
  window.sources[name].close();
  return window.sources[name].readyState;
};
window.count = (name, type) => (window.seen[name] || []).filter((e) => e.type === type).length;
</script></body></html>
"""


@dataclass
class Cert:
    ca: Any  # trustme.CA
    leaf: Any  # trustme.LeafCert
    certfile: Path
    keyfile: Path
    spki_sha256: str  # base64, as Chromium's --ignore-certificate-errors-spki-list wants it


def issue(ca: Any, directory: Path, name: str) -> Cert:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(certfile))
    leaf.private_key_pem.write_to_path(str(keyfile))
    public_key = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_key()
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return Cert(ca, leaf, certfile, keyfile, pin)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    if trustme is None:
        pytest.skip(
            "TRUSTME IS NOT INSTALLED: the HTTP/2 tests in a real browser did not run."
            " Install the dev group: pip install -e '.[all,unidecode]' --group dev (make test does)"
        )
    return issue(trustme.CA(), tmp_path_factory.mktemp("tls"), "leaf")


@pytest.fixture(scope="module")
def browser(cert: Cert) -> Iterator[Browser]:
    # Playwright always passes --user-data-dir, which Chromium requires to honour the pin.
    with chromium.launch(f"--ignore-certificate-errors-spki-list={cert.spki_sha256}") as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with chromium.open_page(browser) as opened:  # no ignore_https_errors: the pin is the only trust
        yield opened


@dataclass
class Request:
    path: str
    http_version: str
    scheme: str
    client: tuple[str, int]  # the TCP connection it came on
    sent_headers: list[tuple[bytes, bytes]]  # what the app put in http.response.start


def site(streams: dict[str, Callable[[], ASGIApp]], requests: list[Request]) -> ASGIApp:
    """``/``: the page; each path in ``streams``: a new stream per request; else 404."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        request = Request(path, scope["http_version"], scope["scheme"], tuple(scope["client"]), [])
        requests.append(request)

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                request.sent_headers = list(message.get("headers", []))
            await send(message)

        if path in streams:
            await streams[path]()(scope, receive, recording_send)
            return
        status, body = (200, PAGE.encode()) if path == "/" else (404, b"")
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        await recording_send({"type": "http.response.start", "status": status, "headers": headers})
        await recording_send({"type": "http.response.body", "body": body})

    return app


def open_source(page: Page, name: str, src: str, types: list[str], close_on: str | None) -> None:
    page.evaluate("([n, s, t, c]) => window.openSource(n, s, t, c)", [name, src, types, close_on])


def wait_count(page: Page, name: str, event_type: str, at_least: int) -> None:
    page.wait_for_function(
        "([n, t, k]) => window.count(n, t) >= k",
        arg=[name, event_type, at_least],
        timeout=chromium.WAIT_MS,
    )


def count(page: Page, name: str, event_type: str) -> int:
    return int(page.evaluate("([n, t]) => window.count(n, t)", [name, event_type]))


def tracked(inner: Callable[[], ASGIApp], done: threading.Event) -> Callable[[], ASGIApp]:
    """A stream factory whose streams set ``done`` when their response returns."""

    def stream() -> ASGIApp:
        app = inner()

        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            finally:
                done.set()

        return wrapped

    return stream


def test_each_event_reaches_the_page_over_http2_before_the_job_makes_the_next(
    page: Page, cert: Cert
) -> None:
    gates = [threading.Event() for _ in range(4)]

    def job(on_progress: Reporter) -> dict[str, int]:
        for i, gate in enumerate(gates):
            on_progress("step", {"i": i})
            if not gate.wait(BOUND):  # the test sets it once the page has event i
                raise TimeoutError(f"event {i} did not reach the page on its own")
        return {"steps": len(gates)}

    requests: list[Request] = []
    app = site({"/steps": lambda: stream_progress(job)}, requests)
    with serve(app, tls=(cert.certfile, cert.keyfile)) as server:
        url = server.url
        page.goto(url)
        open_source(page, "steps", "/steps", ["progress", "completed"], "completed")
        for i, gate in enumerate(gates):
            wait_count(page, "steps", "progress", i + 1)
            assert count(page, "steps", "progress") == i + 1  # the job waits: no next one yet
            gate.set()
        wait_count(page, "steps", "completed", 1)
        seen = page.evaluate("() => window.seen.steps")
        navigation = page.evaluate(
            "() => performance.getEntriesByType('navigation')[0].nextHopProtocol"
        )
    assert navigation == "h2"
    assert [(r.path, r.http_version, r.scheme) for r in requests] == [
        ("/", "2", "https"),
        ("/steps", "2", "https"),
    ]
    assert requests[0].client == requests[1].client  # the page's connection carried the stream
    assert seen == [
        {"type": "open"},
        *[
            {
                "type": "progress",
                "data": f'{{"step":"step","details":{{"i":{i}}}}}',
                "lastEventId": str(i + 1),
            }
            for i in range(4)
        ],
        {"type": "completed", "data": '{"steps":4}', "lastEventId": "5"},
    ]


def test_http2_responses_carry_no_connection_specific_headers(page: Page, cert: Cert) -> None:
    def job(on_progress: Reporter) -> int:
        for i in range(3):
            on_progress("step", {"i": i})
        return 3

    requests: list[Request] = []
    app = site({"/steps": lambda: stream_progress(job)}, requests)
    context = ssl.create_default_context()
    cert.ca.configure_trust(context)  # the test CA, and the default hostname checks
    with serve(app, tls=(cert.certfile, cert.keyfile)) as server:
        url = server.url
        # The browser's request: what asgi-sse handed hypercorn for an HTTP/2 stream.
        page.goto(url)
        open_source(page, "steps", "/steps", ["completed"], "completed")
        wait_count(page, "steps", "completed", 1)
        # A second, independent HTTP/2 client over the same TLS, verifying the test CA. h2
        # itself refuses a response with a connection-specific header; the asserts say so too.
        with (
            httpx.Client(http1=False, http2=True, verify=context, timeout=BOUND) as client,
            connect_sse(client, "GET", url + "steps") as source,
        ):
            response = source.response
            events = [(e.event, e.id) for e in source.iter_sse()]
    assert response.http_version == "HTTP/2"
    assert response.headers["content-type"].startswith("text/event-stream")
    assert not CONNECTION_SPECIFIC & set(response.headers.keys()), response.headers
    assert events == [("progress", "1"), ("progress", "2"), ("progress", "3"), ("completed", "4")]
    streams = [r for r in requests if r.path == "/steps"]
    assert [r.http_version for r in streams] == ["2", "2"]
    for request in streams:
        names = {name.decode().lower() for name, _ in request.sent_headers}
        assert "content-type" in names
        assert not CONNECTION_SPECIFIC & names, request.sent_headers


def test_closing_one_event_source_resets_its_stream_and_cancels_only_its_job(
    page: Page, cert: Cert
) -> None:
    endless = Endless()
    endless_done = threading.Event()
    gates = [threading.Event() for _ in range(2)]
    other_outcome: list[str] = []
    other_stopped = threading.Event()

    def other(on_progress: Reporter) -> None:
        """Reports step i, waits for the test to let it make step i + 1; then ticks on."""
        pace = threading.Event()  # never set: the ticks' pace, as in conftest.Endless
        try:
            for i, gate in enumerate(gates):
                on_progress("step", {"i": i})
                if not gate.wait(BOUND):
                    raise TimeoutError(f"the test never let step {i + 1} go")
            while not pace.wait(0.002):
                on_progress("tick", {})  # raises once the page has closed this one too
        except JobCancelled:
            other_outcome.append("cancelled")
        finally:
            other_stopped.set()

    other_done = threading.Event()
    limiter = anyio.CapacityLimiter(4)
    requests: list[Request] = []
    app = site(
        {
            "/endless": tracked(lambda: EventStream(Job(endless), limiter=limiter), endless_done),
            "/other": tracked(lambda: EventStream(Job(other), limiter=limiter), other_done),
        },
        requests,
    )
    with serve(app, tls=(cert.certfile, cert.keyfile)) as server:
        url = server.url
        page.goto(url)
        open_source(page, "endless", "/endless", ["progress"], None)
        open_source(page, "other", "/other", ["progress"], None)
        wait_count(page, "endless", "progress", 2)
        wait_count(page, "other", "progress", 1)
        # One connection, three HTTP/2 streams: the page, then the two event streams.
        assert [(r.path, r.http_version) for r in requests] == [
            ("/", "2"),
            ("/endless", "2"),
            ("/other", "2"),
        ]
        assert len({r.client for r in requests}) == 1, requests

        assert page.evaluate("() => window.closeSource('endless')") == 2  # CLOSED
        # close() resets that stream (RST_STREAM); hypercorn tells the app http.disconnect.
        assert endless.stopped.wait(BOUND), "the job still runs after the page closed its source"
        assert endless_done.wait(BOUND), "the stream did not end after the page closed its source"
        assert endless.outcome == ["cancelled"]
        assert limiter.borrowed_tokens == 1  # the other job's thread only
        assert not other_stopped.is_set()

        # The other stream, on the same connection, carries on: new events still arrive.
        assert count(page, "other", "progress") == 1
        gates[0].set()
        wait_count(page, "other", "progress", 2)  # made after the first stream was reset
        gates[1].set()
        wait_count(page, "other", "progress", 50)  # and a steady flow of ticks after it
        assert page.evaluate("() => window.seen.other.some((e) => e.type === 'onerror')") is False

        assert page.evaluate("() => window.closeSource('other')") == 2
        assert other_stopped.wait(BOUND), "the other job still runs after the page closed it"
        assert other_done.wait(BOUND)
        assert other_outcome == ["cancelled"]
        assert limiter.borrowed_tokens == 0
        # Nothing reconnected: still the same three requests.
        assert len(requests) == 3


def test_the_pin_trusts_only_the_test_certificate(page: Page, cert: Cert, tmp_path: Path) -> None:
    """Another certificate for the same names from the same CA is refused: no blanket trust."""
    other = issue(cert.ca, tmp_path, "other")
    assert other.spki_sha256 != cert.spki_sha256
    requests: list[Request] = []
    with (
        serve(site({}, requests), tls=(other.certfile, other.keyfile)) as server,
        pytest.raises(chromium.PlaywrightError, match=r"net::ERR_CERT_AUTHORITY_INVALID"),
    ):
        page.goto(server.url)
    assert requests == []
