"""The demo `make demo` serves, started the way make starts it: hypercorn's own CLI.

Over HTTP first (the API the page uses), then in headless Chromium, where the tests read
the page's own text and state: its cards (``data-state``, the status, percent, step,
elapsed time and result they show), ``window.events`` (every event the page received, in
order) and ``summary()`` (each job's states, and where each of its connections resumed
from). They wait on the page with ``wait_for_function``, never by sleeping; each
browser test has a demo server of its own, so no other test's jobs stand in its line.
"""

from __future__ import annotations

import ast
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chromium
import httpx
import pytest
from conftest import BOUND
from httpx_sse import connect_sse

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).parent.parent
RESULT_OF_5 = {"steps": 5, "summary": "analysed in 5 steps", "verdict": "très bien"}


@contextmanager
def running_demo() -> Iterator[str]:
    """``hypercorn examples.demo:app --worker-class trio`` on a socket bound already."""
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


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with running_demo() as url:
        yield url


def test_the_page_listens_with_eventsource_and_links_stats(demo_url: str) -> None:
    page = httpx.get(demo_url + "/", timeout=BOUND)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "new EventSource(" in page.text
    assert "last_event_id=" in page.text
    assert '<a href="/stats"' in page.text


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


def sse(client: httpx.Client, url: str, **headers: str) -> list[tuple[str, str, Any]]:
    """(type, id, data) of each event of a stream, to its end (the retry frame left out)."""
    with connect_sse(client, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200
        return [(e.event, e.id, e.json()) for e in source.iter_sse() if e.data]


def test_a_resumable_job_is_watched_resumed_and_cancelled(demo_url: str) -> None:
    with httpx.Client(timeout=BOUND, base_url=demo_url) as client:
        started = client.post("/jobs?steps=5&delay=0")
        assert started.status_code == 201
        job_id = started.json()["id"]
        assert started.json()["events"] == f"/jobs/{job_id}/events"
        events = sse(client, f"/jobs/{job_id}/events")
        assert [(e[0], e[1]) for e in events] == [
            *(("progress", str(i)) for i in range(1, 6)),
            ("completed", "6"),
        ]
        assert events[-1][2] == RESULT_OF_5
        # A reconnect gets what follows its last event, and 204 once it has the end.
        assert [e[1] for e in sse(client, f"/jobs/{job_id}/events", **{"last-event-id": "3"})] == [
            "4",
            "5",
            "6",
        ]
        assert client.get(f"/jobs/{job_id}/events?last_event_id=6").status_code == 204
        assert client.post(f"/jobs/{job_id}/cancel").json() == {"cancelled": False}  # it ended

        held = client.post("/jobs?steps=500&delay=0.05").json()["id"]
        with connect_sse(client, "GET", f"/jobs/{held}/events") as source:
            seen = []
            for event in source.iter_sse():
                if event.data:  # not the retry frame
                    seen.append((event.event, event.json()))
                if event.event == "progress" and len(seen) == 1:
                    assert client.post(f"/jobs/{held}/cancel").json() == {"cancelled": True}
        assert seen[-1] == ("error", {"type": "JobCancelled"})
        assert client.post("/jobs/nobody/cancel").status_code == 404
        assert client.get("/jobs/nobody/events").status_code == 404


@pytest.mark.parametrize("path", ["/progress", "/jobs"])
@pytest.mark.parametrize("query", ["steps=x", "steps=0", "delay=-1", "steps=100000"])
def test_bad_input_is_a_400_before_any_stream(demo_url: str, path: str, query: str) -> None:
    method = "POST" if path == "/jobs" else "GET"
    response = httpx.request(method, f"{demo_url}{path}?{query}", timeout=BOUND)
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


# In headless Chromium.

# What card n (from 0) shows, as the page's own text.
CARD = """(n) => {
  const card = document.querySelectorAll(".job")[n];
  if (!card) return null;
  const text = (selector) => card.querySelector(selector).textContent;
  return {state: card.dataset.state, status: text(".status"), percent: text(".percent"),
          step: text(".step"), elapsed: text(".elapsed"), note: text(".note"),
          result: text(".result"), last: text(".last")};
}"""
STAT = "(key) => document.getElementById(`stat-${key}`).textContent"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium.launch() as launched:
        yield launched


@pytest.fixture
def site(browser: Browser) -> Iterator[tuple[Page, str]]:
    """A fresh page on a demo server of its own (the page closes first)."""
    with running_demo() as url, chromium.open_page(browser) as page:
        yield page, url


def wait(page: Page, expression: str, arg: Any = None) -> Any:
    """Wait until ``expression`` (a page function of ``arg``) is truthy; return its value."""
    handle = page.wait_for_function(expression, arg=arg, timeout=chromium.WAIT_MS)
    return handle.json_value()


def wait_state(page: Page, n: int, state: str) -> dict[str, str]:
    """Wait until card ``n`` is in ``state``; return what it shows then."""
    shown: dict[str, str] = wait(
        page,
        f"([n, state]) => {{ const c = ({CARD})(n); return c && c.state === state && c; }}",
        [n, state],
    )
    return shown


def card(page: Page, n: int) -> dict[str, str]:
    shown: dict[str, str] = page.evaluate(CARD, n)
    return shown


def jobs(page: Page) -> list[dict[str, Any]]:
    summary: list[dict[str, Any]] = page.evaluate("summary()")
    return summary


def events_of(page: Page, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = page.evaluate(
        "(id) => events.filter((e) => e.job === id)", job_id
    )
    return events


def test_a_job_starts_on_load_and_completes_with_its_result(site: tuple[Page, str]) -> None:
    page, url = site
    page.goto(url + "/?steps=5&delay=0.05")
    shown = wait_state(page, 0, "completed")
    assert shown["status"] == "Done"
    assert shown["percent"] == "100%"
    assert shown["step"] == "rank: step 5 of 5"
    assert shown["last"] == "event #6"
    assert re.fullmatch(r"\d+\.\d s", shown["elapsed"])
    assert shown["result"].startswith("Result: ")
    assert json.loads(shown["result"].removeprefix("Result: ")) == RESULT_OF_5
    [job] = jobs(page)
    assert job["states"] == ["starting", "connecting", "running", "completed"]
    events = events_of(page, job["id"])
    assert [(e["id"], e["type"]) for e in events] == [
        *((i, "progress") for i in range(1, 6)),
        (6, "completed"),
    ]
    assert events[-1]["data"] == RESULT_OF_5


def test_percent_step_and_elapsed_time_update_then_stop(site: tuple[Page, str]) -> None:
    page, url = site
    page.goto(url + "/?steps=40&delay=0.05")
    first = wait_state(page, 0, "running")
    later = wait(
        page,
        f"""(first) => {{
          const c = ({CARD})(0);
          return c.percent !== first.percent && c.step !== first.step
            && c.elapsed !== first.elapsed && c;
        }}""",
        first,
    )
    assert int(later["percent"].rstrip("%")) > int(first["percent"].rstrip("%"))
    done = wait_state(page, 0, "completed")
    assert done["percent"] == "100%"
    # The clock stops with the job: two stats polls later (a second), it shows the same.
    polls = page.evaluate("statsPolls")
    wait(page, "(polls) => statsPolls >= polls + 2", polls)
    assert card(page, 0)["elapsed"] == done["elapsed"]


def test_several_jobs_at_once_show_the_waiting_line(site: tuple[Page, str]) -> None:
    page, url = site
    page.goto(url + "/?steps=500&delay=0.05")  # jobs that run until they are cancelled
    wait_state(page, 0, "running")
    page.click("#add-four")
    line = wait(
        page,
        """() => {
          const jobs = summary();
          const running = jobs.filter((j) => j.state === "running");
          const queued = jobs.filter((j) => j.state === "queued");
          return jobs.length === 5 && running.length === 2 && queued.length === 3 && jobs;
        }""",
    )
    waiting = sorted((j for j in line if j["state"] == "queued"), key=lambda j: j["position"])
    assert [j["position"] for j in waiting] == [1, 2, 3]
    for job in waiting:
        assert card(page, job["n"] - 1)["status"] == f"Waiting in line: number {job['position']}"
    # Five streams is the page's budget (a browser's six connections per server).
    assert page.is_disabled("#add")
    assert page.is_disabled("#add-four")
    assert "six connections" in page.text_content("#budget")
    wait(page, f"() => ({STAT})('running_jobs') === '2' && ({STAT})('queued_jobs') === '3'")

    # One running job ends: the first in line takes its slot, the others move up.
    running = next(j for j in line if j["state"] == "running")
    page.locator(".job").nth(running["n"] - 1).locator(".cancel").click()
    wait_state(page, running["n"] - 1, "cancelled")
    wait_state(page, waiting[0]["n"] - 1, "running")
    wait(
        page,
        "(ns) => ns.every((n, i) => { const j = summary()[n - 1];"
        " return j.state === 'queued' && j.position === i + 1; })",
        [waiting[1]["n"], waiting[2]["n"]],
    )
    assert page.is_enabled("#add")


def test_cancelled_is_shown_only_on_the_servers_terminal_event(site: tuple[Page, str]) -> None:
    page, url = site
    # First the server is not told: the page is answered {"cancelled": true} but the job
    # runs on, so the card must not say "Cancelled", and ends as the server says: done.
    page.route(
        "**/jobs/*/cancel", lambda route: route.fulfill(status=200, json={"cancelled": True})
    )
    page.goto(url + "/?steps=60&delay=0.05")
    wait_state(page, 0, "running")
    page.locator(".job").nth(0).locator(".cancel").click()
    assert card(page, 0)["status"].startswith("Cancelling")
    done = wait_state(page, 0, "completed")
    assert done["status"] == "Done"
    assert done["percent"] == "100%"
    [faked] = jobs(page)
    assert faked["states"][-3:] == ["running", "cancelling", "completed"]
    assert events_of(page, faked["id"])[-1]["type"] == "completed"

    # Now the server is asked, and its last event says the job was cancelled.
    page.unroute("**/jobs/*/cancel")
    page.click("#add")
    wait_state(page, 1, "running")
    page.locator(".job").nth(1).locator(".cancel").click()
    cancelled = wait_state(page, 1, "cancelled")
    job = jobs(page)[1]
    events = events_of(page, job["id"])
    assert events[-1]["type"] == "error"
    assert events[-1]["data"] == {"type": "JobCancelled"}
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["type"] == "progress" for e in events[:-1])
    assert cancelled["status"] == f"Cancelled by the server (event #{events[-1]['id']})"
    assert job["states"][-2:] == ["cancelling", "cancelled"]
    assert int(cancelled["percent"].rstrip("%")) < 100
    # The server agrees: that event is the job's last (a reconnect from it gets 204).
    with httpx.Client(timeout=BOUND, base_url=url) as client:
        resumed = client.get(f"/jobs/{job['id']}/events?last_event_id={events[-1]['id']}")
        assert resumed.status_code == 204


def test_a_dropped_connection_resumes_where_it_left_off(site: tuple[Page, str]) -> None:
    page, url = site
    page.goto(url + "/?steps=30&delay=0.1")
    wait(page, "() => summary()[0].last >= 3")
    page.locator(".job").nth(0).locator(".drop").click()
    [job] = jobs(page)
    dropped_at = job["last"]
    shown = card(page, 0)
    assert shown["state"] == "dropped"
    assert shown["note"].startswith(f"Disconnected after event #{dropped_at}.")
    done = wait_state(page, 0, "completed")
    [job] = jobs(page)
    assert job["connections"] == [None, dropped_at]  # the second asked for what followed
    assert job["states"][-4:] == ["running", "dropped", "running", "completed"]
    assert done["note"].startswith(
        f"Resumed: reconnected with last_event_id={dropped_at} and got #{dropped_at + 1} on."
    )
    events = events_of(page, job["id"])
    # Every id once, none missing, and the job never restarted: steps 1 to 30, then its result.
    assert [e["id"] for e in events] == list(range(1, 32))
    assert [e["data"]["details"]["done"] for e in events[:-1]] == list(range(1, 31))
    assert events[-1]["type"] == "completed"
    assert events[-1]["data"]["steps"] == 30


def test_the_stats_panel_is_live(site: tuple[Page, str]) -> None:
    page, url = site
    page.goto(url + "/?steps=500&delay=0.05")
    assert page.get_attribute("aside a", "href") == "/stats"
    wait_state(page, 0, "running")
    wait(page, f"() => ({STAT})('running_jobs') === '1' && ({STAT})('open_streams') === '1'")
    sent = int(page.evaluate(STAT, "events_sent"))
    wait(page, f"(sent) => Number(({STAT})('events_sent')) > sent", sent)
    page.locator(".job").nth(0).locator(".cancel").click()
    wait_state(page, 0, "cancelled")
    wait(page, f"() => ({STAT})('running_jobs') === '0' && ({STAT})('open_streams') === '0'")
    shown = {key: page.evaluate(STAT, key) for key in ("events_sent", "refused", "queued_jobs")}
    assert shown["refused"] == shown["queued_jobs"] == "0"
    # The panel shows what /stats says (events only ever add up).
    stats = httpx.get(url + "/stats", timeout=BOUND).json()
    assert stats["events_sent"] >= int(shown["events_sent"]) > sent
    assert "live: asked every second" in page.text_content("#stats-age")
