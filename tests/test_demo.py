"""The demo `make demo` serves, started the way make starts it: hypercorn's own CLI."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import BOUND
from httpx_sse import connect_sse

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "hypercorn", "examples.demo:app", "--worker-class", "trio"),
            *("--bind", f"fd://{sock.fileno()}"),
        ],
        cwd=ROOT,
        pass_fds=[sock.fileno()],
    )
    sock.close()  # the server has its own copy; connections wait in the backlog meanwhile
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        assert server.wait(BOUND) == 0


def test_the_page_listens_with_eventsource(demo_url: str) -> None:
    page = httpx.get(demo_url + "/", timeout=BOUND)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "new EventSource(" in page.text
    assert 'addEventListener("completed"' in page.text


def test_the_job_streams_its_steps_and_result(demo_url: str) -> None:
    with (
        httpx.Client(timeout=BOUND) as client,
        connect_sse(client, "GET", demo_url + "/progress?steps=4&delay=0") as source,
    ):
        events = [(e.event, e.json()) for e in source.iter_sse()]
    assert [e[1]["details"]["percent"] for e in events[:-1]] == [25, 50, 75, 100]
    assert events[-1] == (
        "completed",
        {"steps": 4, "summary": "analysed in 4 steps", "verdict": "très bien"},
    )


@pytest.mark.parametrize("query", ["steps=x", "steps=0", "delay=-1", "steps=100000"])
def test_bad_input_is_a_400_before_any_stream(demo_url: str, query: str) -> None:
    response = httpx.get(f"{demo_url}/progress?{query}", timeout=BOUND)
    assert response.status_code == 400
    assert response.json() == {
        "type": "InvalidArguments",
        "detail": (
            "steps must be a whole number from 1 to 500, delay a number of seconds from 0 to 5"
        ),
    }


def test_stats_count_the_streams_served(demo_url: str) -> None:
    with httpx.Client(timeout=BOUND) as client:
        before = client.get(demo_url + "/stats").json()
        with connect_sse(client, "GET", demo_url + "/progress?steps=2&delay=0") as source:
            assert [e.event for e in source.iter_sse()] == ["progress", "progress", "completed"]
        stats = client.get(demo_url + "/stats").json()
    # Counted as handed to the server, so all three are in by the time the client has them.
    # (Whether the finished stream still counts as open is a race with its last send.)
    assert stats["events_sent"] - before["events_sent"] == 3
    assert stats["refused"] == stats["send_timeouts"] == 0


def test_make_demo_installs_only_the_demo_extra_and_takes_a_port() -> None:
    """The demo's own extra suffices: examples/demo.py imports the standard library and
    asgi_sse only, and hypercorn with trio serves it; `make demo PORT=...` binds there."""
    tree = ast.parse((ROOT / "examples/demo.py").read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported - sys.stdlib_module_names == {"asgi_sse"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'demo = ["asgi-sse[hypercorn]", "trio>=0.25"]' in pyproject.splitlines()
    dry = subprocess.run(
        ["make", "-n", "-B", "demo", "PORT=8123"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=BOUND,
    ).stdout
    assert "pip install --quiet -e '.[demo]'" in dry
    assert "[dev]" not in dry
    assert "--bind 127.0.0.1:8123" in dry
