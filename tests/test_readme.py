"""The README's examples run, and the output it shows is the output they give."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BOUND, call_app, parse, serve

import asgi_sse
import asgi_sse.resumable

README = (Path(__file__).parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def run(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(source, "README.md", "exec"), namespace)  # our own README
    return namespace


def test_the_quickstart_streams_exactly_what_the_readme_shows() -> None:
    quickstart = run(blocks("python")[0])
    [shown] = blocks("text")
    with serve(quickstart["app"], wrap=False) as server:
        response = httpx.get(server.url + "analyse?text=hello+world", timeout=BOUND)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.text == shown + "\n"  # a fenced block cannot end in a blank line


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_more_control_example_runs() -> None:
    example = run(blocks("python")[1])
    configured = parse((await call_app(example["configured"]("café"))).body)
    assert configured == [
        {"event": "progress", "data": '{"step":"read","details":{"chars":4}}', "id": "1"},
        {"event": "completed", "data": '"CAFE"', "id": "2"},
    ]
    custom = parse((await call_app(example["custom"]())).body)
    assert [e["event"] for e in custom] == ["greeting", "message", "completed"]


def test_the_resumable_example_resumes_after_the_last_event_id() -> None:
    source = blocks("python")[2]
    assert "jobs.watch(" in source
    example = run(source)  # as printed: nothing injected
    with serve(example["app"], wrap=False) as server, httpx.Client(timeout=BOUND) as client:
        job_id = client.post(server.url + "jobs").json()["id"]
        events = parse(client.get(f"{server.url}jobs/{job_id}/events").content)
        assert [e["id"] for e in events] == [str(i) for i in range(1, 22)]
        rest = client.get(f"{server.url}jobs/{job_id}/events", headers={"last-event-id": "19"})
        assert [(e["id"], e["event"]) for e in parse(rest.content)] == [
            ("20", "progress"),
            ("21", "completed"),
        ]
        again = client.get(f"{server.url}jobs/{job_id}/events", headers={"last-event-id": "21"})
        assert again.status_code == 204


def test_the_readme_lists_the_public_api_as_it_is() -> None:
    paragraph = README[README.index("The public API:") :].split("\n\n")[0]
    named = set(re.findall(r"`([A-Za-z_][A-Za-z_]*)`", paragraph))
    constants = {"ABANDONED_ERROR", "CANCELLED_ERROR"}
    public = set(asgi_sse.__all__) | set(asgi_sse.resumable.__all__) - constants
    assert named == public
