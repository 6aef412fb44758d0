"""The docs' examples run, the apps they define answer as the page says, and the site builds.

The convention a docs page follows, so that every example is tested and none silently is not:

- Every fenced block tagged ``python`` in ``docs/**/*.md`` is one test, with an id like
  ``wire-format.md:3`` (the page's third Python block). What is not Python, or must not run, is
  tagged ``text``, ``console``, ``nginx`` or ``js``; an untagged fence, ``py`` or ``pycon`` is
  refused, and fences start at column 0, so that no example is skipped by accident.
- A page is a tutorial: its blocks run in order in one module namespace (not named
  ``__main__``), so a block may use what earlier blocks defined. A block must return: code that
  serves forever goes under ``if __name__ == "__main__":`` or into a ``console`` block.
- A block that binds a new object to ``app`` (an ASGI app) must be followed, after optional blank
  lines, by HTML comments (invisible on the site) naming the requests to make to it; a later
  block that changes what the app does (adds a route, say) may name requests too::

      <!-- GET /progress?steps=3 -->              served behind the tests' lifespan stub
      <!-- GET /progress?steps=3 lifespan=app --> served as is: the app answers lifespan itself
      <!-- GET / http2 -->                        requested over cleartext HTTP/2 (h2c)
      <!-- POST /count {"steps": 3} -->          a POST with this JSON body
      <!-- ends: error {"type": "ValueError"} --> the last event of the request above (default:
                                                  completed, any data); the data is optional
      <!-- first: queued {"position": 1} -->      its first event, the same way
      <!-- GET /slow open -->                     held open after its first event, until the
                                                  block's last request is done
      <!-- status: 503 -->                        not a stream: a response with this status
      <!-- body: next text block -->              the whole body is the page's next block
                                                  tagged text that no earlier "body" took

  The app is served once per block by a real hypercorn on 127.0.0.1 (``lifespan=app`` on every
  request of a block or on none) and requested in order with httpx; unless a ``status`` says
  otherwise, each response must be a 200 event stream whose one terminal event (``completed`` or
  ``error``) is its last.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import types
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from conftest import BOUND, parse, serve

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PACKAGES = ["asgi_sse_starlette", "asgi_sse_litestar", "asgi_sse_quart"]  # under adapters/

_FENCE = re.compile(r"^```(?P<info>.*)$")
_REQUEST = re.compile(
    r"^<!-- (?P<method>GET|POST) (?P<path>/\S*)"
    r"(?P<flags>(?: (?:lifespan=app|http2|open))*)(?: (?P<json>[\[{].*))? -->$"
)
_EVENT = re.compile(r"^<!-- (?P<which>ends|first): (?P<event>[\w-]+)(?: (?P<data>.+?))? -->$")
_STATUS = re.compile(r"^<!-- status: (?P<status>[1-5]\d\d) -->$")
_BODY = "<!-- body: next text block -->"
_DIRECTIVE = re.compile(r"^\s*<!--\s*(GET|POST|ends|first|status|body)\b")
_NOT_PYTHON_ON_PURPOSE = {"text", "console", "nginx", "js", "html", "toml", "ini"}
_SKIPPED_PYTHON = {"py", "python3", "pycon", "pyi", "ipython"}  # would not run: use "python"


@dataclass
class Expected:
    """An event a response must have: its name, and its data if given."""

    event: str
    data: Any = None
    has_data: bool = False


@dataclass
class Request:
    path: str
    method: str = "GET"
    json: Any = None
    has_json: bool = False
    own_lifespan: bool = False
    http2: bool = False
    open: bool = False  # held open after its first event, to the end of the block
    status: int | None = None  # None: a 200 event stream
    first: Expected | None = None
    ends: Expected | None = None  # None: completed, any data (for a stream read to its end)
    body: str | None = None  # the whole body, when the page shows it


@dataclass
class Block:
    page: str  # relative to docs/, with "/"
    number: int  # among the page's Python blocks, from 1
    line: int  # of the block's first line of code in the .md file
    source: str
    requests: list[Request] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.page}:{self.number}"


@dataclass
class Page:
    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # breaches of the convention


def read_page(path: Path) -> Page:
    """Split a page into Python blocks and their request comments, noting any breach."""
    name = path.relative_to(DOCS).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    page = Page()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if line.lstrip().startswith("```") and not fence:
            page.problems.append(f"{name}:{i + 1}: an indented fence is not collected")
        if _DIRECTIVE.match(line):
            page.problems.append(f"{name}:{i + 1}: {line.strip()} does not follow a Python block")
        if not fence:
            i += 1
            continue
        info = fence["info"].strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
        if end is None:
            page.problems.append(f"{name}:{i + 1}: a fence that never closes")
            break
        if info in _SKIPPED_PYTHON or info == "":
            page.problems.append(f"{name}:{i + 1}: fence {info!r}: use python, or text/console")
        elif info != "python" and info not in _NOT_PYTHON_ON_PURPOSE:
            page.problems.append(f"{name}:{i + 1}: unknown fence language {info!r}")
        if info == "python":
            block = Block(name, len(page.blocks) + 1, i + 2, "\n".join(lines[i + 1 : end]))
            page.blocks.append(block)
            i = _read_requests(lines, end + 1, block, name, page.problems)
        else:
            i = end + 1
    return page


def _read_requests(lines: list[str], i: int, block: Block, name: str, problems: list[str]) -> int:
    """Consume the comments after a block; return the index of the first other line."""
    unclaimed = i  # where to look for the next text block a "body" names
    while i < len(lines) and (not lines[i].strip() or _DIRECTIVE.match(lines[i])):
        line, where = lines[i].strip(), f"{name}:{i + 1}: {lines[i].strip()}"
        i += 1
        if not line:
            continue
        named = _request(line, where, problems)
        if named is not None:
            block.requests.append(named)
        elif not block.requests:
            problems.append(f"{where} names no request")
        elif line == _BODY:
            found = _next_text_block(lines, unclaimed)
            if found is None:
                problems.append(f"{where}: no text block follows")
            else:
                block.requests[-1].body, unclaimed = found
        else:
            _qualify(block.requests[-1], line, where, problems)
    for request in block.requests:
        if request.status is not None and (request.open or request.first or request.ends):
            problems.append(f"{name}: {request.path} has a status: it is not a stream")
        if request.open and (request.ends or request.body is not None):
            problems.append(f"{name}: {request.path} is held open: it has no end or whole body")
    return i


def _request(line: str, where: str, problems: list[str]) -> Request | None:
    """The request a comment names, if it names one."""
    match = _REQUEST.match(line)
    if match is None:
        return None
    flags = match["flags"].split()
    request = Request(
        match["path"],
        match["method"],
        own_lifespan="lifespan=app" in flags,
        http2="http2" in flags,
        open="open" in flags,
    )
    if match["json"] is not None:
        request.json, request.has_json = _json(match["json"], where, problems), True
    return request


def _qualify(request: Request, line: str, where: str, problems: list[str]) -> None:
    """Apply an ``ends``, ``first`` or ``status`` comment to the request above it."""
    event, status = _EVENT.match(line), _STATUS.match(line)
    if event:
        expected = Expected(event["event"])
        if event["data"] is not None:
            expected.data, expected.has_data = _json(event["data"], where, problems), True
        setattr(request, event["which"], expected)
    elif status:
        request.status = int(status["status"])
    else:
        problems.append(f"{where}: malformed or misplaced comment")


def _json(text: str, where: str, problems: list[str]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        problems.append(f"{where}: {text} is not JSON")
        return None


def _next_text_block(lines: list[str], i: int) -> tuple[str, int] | None:
    """The next text block from line ``i`` (lines ended with LF) and the index after it; None if
    the next Python block comes first."""
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
            if end is None or lines[i] == "```python":
                return None
            if lines[i] == "```text":
                return "".join(line + "\n" for line in lines[i + 1 : end]), end + 1
            i = end
        i += 1
    return None


PAGES = {path: read_page(path) for path in sorted(DOCS.rglob("*.md"))}
BLOCKS = [block for page in PAGES.values() for block in page.blocks]


def test_the_docs_follow_the_example_convention() -> None:
    assert len(BLOCKS) >= 10, "the collector found almost no Python blocks: is it broken?"
    assert [p for page in PAGES.values() for p in page.problems] == []


def run(block: Block, module: types.ModuleType) -> None:
    """Execute a block so that tracebacks point at its lines in the .md file."""
    padded = "\n" * (block.line - 1) + block.source
    exec(compile(padded, str(DOCS / block.page), "exec"), module.__dict__)  # our own docs


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_example(block: Block) -> None:
    earlier = [b for b in BLOCKS if b.page == block.page and b.number < block.number]
    name = "docs_" + re.sub(r"\W", "_", block.page.removesuffix(".md"))
    module = types.ModuleType(name)
    sys.modules[name] = module  # for what looks its module up: dataclasses, pickling, typing
    try:
        for previous in earlier:
            try:
                run(previous, module)
            except Exception:
                pytest.fail(f"{previous}, which this block builds on, fails: see its own test")
        before = module.__dict__.get("app")
        run(block, module)
        app = module.__dict__.get("app")
        if app is not before:
            assert block.requests, f"{block} defines an app: name a request, <!-- GET /path -->"
        if not block.requests:
            return
        assert app is not None, f"{block} names a request, but no block so far defines an app"
        own_lifespan = {r.own_lifespan for r in block.requests}
        assert len(own_lifespan) == 1, f"{block}: say lifespan=app on every request, or on none"
        # One server, as in production; streams held open are closed before it stops.
        with serve(app, wrap=not own_lifespan.pop()) as server, ExitStack() as held:
            for request in block.requests:
                check_request(server.url.rstrip("/") + request.path, request, held)
    finally:
        del sys.modules[name]


def check_request(url: str, request: Request, held: ExitStack) -> None:
    with ExitStack() as stack:
        client = stack.enter_context(
            httpx.Client(timeout=BOUND, http1=not request.http2, http2=request.http2)
        )
        body = {"json": request.json} if request.has_json else {}
        response = stack.enter_context(client.stream(request.method, url, **body))
        if request.status is not None:
            response.read()
            assert response.status_code == request.status, response.text
            if request.body is not None:
                assert response.text == request.body.removesuffix("\n")
            return
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        if request.http2:
            assert response.http_version == "HTTP/2"
        if request.open:
            # Kept and closed with the stream: a lost generator would close the stream now.
            chunks = cast("Generator[bytes, None, None]", response.iter_bytes())
            stack.callback(chunks.close)
            events = first_events(chunks)
            held.enter_context(stack.pop_all())  # closed after the block's last request
        else:
            events = parse(response.read())
            terminal = [i for i, e in enumerate(events) if e["event"] in {"completed", "error"}]
            assert terminal == [len(events) - 1], f"not one terminal event, last: {events}"
            check_event(events[-1], request.ends or Expected("completed"))
            if request.body is not None:
                # A fenced block cannot end in a blank line, which a stream does.
                assert response.text == request.body + "\n"
        if request.first is not None:
            check_event(events[0], request.first)


def first_events(chunks: Iterator[bytes]) -> list[dict[str, str]]:
    """Read a stream until it has dispatched an event, and no further."""
    received = b""
    for chunk in chunks:
        received += chunk
        events = parse(received)
        if events:
            return events
    raise AssertionError(f"the stream ended before its first event: {received!r}")


def check_event(event: dict[str, str], expected: Expected) -> None:
    assert event["event"] == expected.event, event
    if expected.has_data:
        assert json.loads(event["data"]) == expected.data, event


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).with_name("mkdocs")  # the venv's, next to its python
    site = tmp_path / "site"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The API page was generated from the docstrings, and covers every public name.
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    assert ":::" not in reference
    missing = [
        f"{package}.{name}"
        for package in ["asgi_sse", *PACKAGES]
        for name in importlib.import_module(package).__all__
        if f'id="{package}.{name}"' not in reference
    ]
    assert missing == []
    # The docstrings' Sphinx roles became links or code, not literal text.
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", reference))
    assert re.findall(r":(?:class|meth|func|attr|mod|data|exc|obj): ?`", text) == []
    assert '<a class="autorefs autorefs-internal" title="Job" href="#asgi_sse.Job">' in reference
    # Attributes set in __init__ are listed by name, not as "func = func".
    assert re.findall(r"\b(?!None\b)(\w+) = \1\b", text) == []
    # Highlighted at build time, nothing fetched from elsewhere (the site works offline).
    pages = [page.read_text(encoding="utf-8") for page in site.rglob("*.html")]
    fetched = re.compile(r"<(script|link|img)[^>]+(src|href)=\"(https?:)?//")
    assert [p for p in pages if fetched.search(p)] == []
    assert '<span class="kn">import</span>' in (site / "index.html").read_text(encoding="utf-8")
