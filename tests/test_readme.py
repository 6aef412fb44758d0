"""The README's examples run, and the output it shows is the output they give."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BOUND, call_app, parse, serve
from processes import launch, worker
from redis_server import start_redis

import asgi_sse
import asgi_sse.metrics
import asgi_sse.resumable

README = (Path(__file__).parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def block(marker: str) -> str:
    """The one Python block of the README that holds ``marker``."""
    [found] = [source for source in blocks("python") if marker in source]
    return found


def run(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(source, "README.md", "exec"), namespace)  # our own README
    return namespace


def test_the_quickstart_streams_exactly_what_the_readme_shows() -> None:
    quickstart = run(block("class AnalysisPipeline"))
    [shown] = blocks("text")
    with serve(quickstart["app"], wrap=False) as server:
        response = httpx.get(server.url + "analyse?text=hello+world", timeout=BOUND)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.text == shown + "\n"  # a fenced block cannot end in a blank line


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_more_control_example_runs() -> None:
    example = run(block("def configured("))
    configured = parse((await call_app(example["configured"]("café"))).body)
    assert configured == [
        {"event": "progress", "data": '{"step":"read","details":{"chars":4}}', "id": "1"},
        {"event": "completed", "data": '"CAFE"', "id": "2"},
    ]
    custom = parse((await call_app(example["custom"]())).body)
    assert [e["event"] for e in custom] == ["greeting", "message", "completed"]


def test_the_resumable_example_resumes_after_the_last_event_id() -> None:
    source = block("jobs = Jobs()")
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
    public |= set(asgi_sse.metrics.__all__)
    assert named == public


def test_the_celery_example_runs_as_printed(tmp_path: Path) -> None:
    """tasks.py and web.py as printed, under the commands printed: a real redis-server,
    `celery -A tasks worker` and `uvicorn web:app`."""
    (tmp_path / "tasks.py").write_text(block("@progress_task(app)"))
    (tmp_path / "web.py").write_text(block("CeleryJobs(celery)"))
    assert "$ celery -A tasks worker\n$ uvicorn web:app\n" in blocks("console")
    (tmp_path / "redis").mkdir()
    redis = start_redis(tmp_path / "redis")
    env = {"REDIS_URL": redis.url, "PYTHONPATH": str(tmp_path)}
    try:
        with (
            worker("celery", "celery", "-A", "tasks", "worker", env=env),
            launch("uvicorn", "web:app", env=env) as web,
            httpx.Client(base_url=web.url, timeout=BOUND) as client,
        ):
            started = client.post("/jobs")
            assert started.status_code == 201, started.text
            job_id = started.json()["id"]
            events = parse(client.get(f"/jobs/{job_id}/events").content)  # queued until it starts
            work = [e for e in events if e["event"] != "queued"]
            assert [e["event"] for e in work] == ["progress"] * 5 + ["completed"]
            assert work[-1]["data"] == '{"pages":5}'
            assert client.post(f"/jobs/{job_id}/cancel").json() == {"cancelled": False}
    finally:
        redis.stop()
