"""The benchmark harness measures what it claims.

Speed is not asserted here (that is `make bench`'s job). A tiny run of every
scenario, and of every implementation, goes through real hypercorn processes and
the real load client; the client's accounting is checked against streams whose
losses are known.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.client import Stream, _Reader, firehose_body
from benchmarks.servers import render

ROOT = Path(__file__).parent.parent
SCENARIOS = {"A", "B", "B200", "C1", "C50", "D", "E"}
IMPLEMENTATIONS = {
    "floor",
    "asgi_sse",
    "asgi_sse_middleware",
    "asgi_sse_observed",
    "asgi_sse_litestar",
    "asgi_sse_quart",
    "queue_pattern",
    "sse_starlette",
    "litestar_sse",
    "quart_generator",
}


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "benchmarks/run.py", "--smoke", "--out", str(out), *args],
        cwd=ROOT,
        check=True,
        timeout=150,
    )
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def _read(chunks: list[bytes], n: int) -> Stream:
    """Feed a response to the client's reader in these chunks."""
    loop = asyncio.new_event_loop()
    try:
        stream = Stream(n)
        reader = _Reader(stream, latency=True, pace=0, done=loop.create_future())
        for chunk in chunks:
            reader.data_received(chunk)
        return stream
    finally:
        loop.close()


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"


@pytest.mark.parametrize("crlf", [False, True])
def test_the_client_counts_the_same_at_every_chunk_boundary(crlf: bool) -> None:
    events = b": ping\n\n" + firehose_body(5)
    body = HEAD + (events.replace(b"\n", b"\r\n") if crlf else events)
    whole = _read([body], 5)
    assert (whole.received, whole.disorder, whole.lost, whole.completed) == (5, 0, 0, True)
    assert len(whole.latencies) == 5
    assert len(whole.heartbeats) == 1
    for cut in range(1, len(body)):
        split = _read([body[:cut], body[cut:]], 5)
        assert (split.received, split.lost, split.completed, len(split.heartbeats)) == (
            5,
            0,
            True,
            1,
        ), cut


def test_the_client_reports_gaps_as_lost_and_steps_back_as_disorder() -> None:
    events = firehose_body(6).split(b"\n\n")  # six progress events, completed, ""
    # i = 0, 1, 3, 2, 5: the 4 is missing, the 2 comes after the 3
    reordered = [events[i] for i in (0, 1, 3, 2, 5, 6)]
    stream = _read([HEAD + b"\n\n".join(reordered) + b"\n\n"], 6)
    assert (stream.received, stream.lost, stream.disorder, stream.completed) == (4, 2, 1, True)


def test_the_client_sees_a_bridge_confess_what_it_left_behind() -> None:
    events = firehose_body(3).split(b"\n\n")
    body = b"\n\n".join([events[0], b": abandoned 2", events[3]]) + b"\n\n"
    stream = _read([HEAD + body], 3)
    assert (stream.received, stream.lost, stream.abandoned, stream.heartbeats) == (1, 2, 2, [])


@pytest.mark.timeout(180)
def test_every_scenario_runs_small_and_asgi_sse_loses_nothing(tmp_path: Path) -> None:
    document = _run(tmp_path, "--only", "floor", "asgi_sse")
    runs = {(run["scenario"], run["name"]): run for run in document["runs"]}
    assert set(runs) == {(s, name) for s in SCENARIOS for name in ("floor", "asgi_sse")}
    for (scenario, name), run in runs.items():
        assert run["events"] == run["expected"] > 0, (scenario, name)
        assert (run["lost"], run["disorder"], run["unfinished"], run["not_200"]) == (0, 0, 0, 0)
        assert run["rss_before_mib"] > 10  # a Python server's memory, read from /proc
        # Headers come before the first whole frame, which comes no later than the first event.
        assert 0 < run["ttfb_ms"]["p50"] <= run["ttff_ms"]["p50"] <= run["ttfe_ms"]["p50"]
    for name in ("floor", "asgi_sse"):
        for scenario in ("A", "B", "B200"):  # latency is measured where asked for, and only there
            assert runs[scenario, name]["latency_us"]["p50"] > 0
        assert runs["C1", name]["latency_us"]["p50"] is None
        assert runs["D", name]["heartbeats"] > 0  # idle streams are kept alive
        assert runs["D", name]["jitter_ms"]["p50"] is not None
        assert runs["E", name]["job_done_at"] is not None
    assert all(c["lost"] == 0 and c["rate"] > 0 for c in document["calibration"])

    # The report turns it into a page with every section and its charts.
    subprocess.run(
        [
            sys.executable,
            "benchmarks/report.py",
            "--results",
            str(tmp_path / "results.json"),
            "--out",
            str(tmp_path / "docs"),
        ],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    page = (tmp_path / "docs/benchmark-results.md").read_text()
    assert "A smoke run" in page
    for heading in ("## Targets", "## The client's ceiling", *(f"## {s}," for s in SCENARIOS)):
        assert heading in page
    for chart in ("latency", "throughput", "cpu", "memory"):
        assert f"](benchmarks/{chart}.png)" in page
        assert (tmp_path / f"docs/benchmarks/{chart}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(180)
def test_every_implementation_streams_the_shared_job(tmp_path: Path) -> None:
    document = _run(tmp_path, "--scenarios", "C50")
    runs = {run["name"]: run for run in document["runs"]}
    assert set(runs) == IMPLEMENTATIONS
    for name, run in runs.items():
        assert run["unfinished"] == run["disorder"] == run["not_200"] == 0, name
        # Only the polling bridge may lose events, and then it says how many it left.
        expected_loss = run["abandoned"] if name == "queue_pattern" else 0
        assert run["lost"] == expected_loss, name


@pytest.mark.timeout(120)
@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_the_other_servers_serve_every_implementation_the_server_table_compares(
    tmp_path: Path, server: str
) -> None:
    """benchmarks/servers.py puts these side by side with hypercorn's (above)."""
    names = ["floor", "asgi_sse", "sse_starlette"]
    document = _run(tmp_path, "--server", server, "--scenarios", "A", "C50", "--only", *names)
    assert document["meta"]["server"] == server
    runs = {(run["scenario"], run["name"]): run for run in document["runs"]}
    assert set(runs) == {(s, name) for s in ("A", "C50") for name in names}
    for key, run in runs.items():
        assert run["events"] == run["expected"] > 0, key
        assert (run["lost"], run["disorder"], run["unfinished"], run["not_200"]) == (0, 0, 0, 0)
        assert run["rss_before_mib"] > 10, key  # the whole process tree, granian's worker too
    page = render({server: document})
    assert f"| A | latency p50 | {server} |" in page
    assert "lost events" not in page


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed: the Redis path of the resumable benchmark needs it",
)
def test_the_resumable_benchmark_measures_every_path_without_loss(tmp_path: Path) -> None:
    out = tmp_path / "resumable.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/resumable.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=100,
        capture_output=True,
        text=True,
    )
    document = json.loads(out.read_text())
    runs = {(run["scenario"], run["name"]): run for run in document["runs"]}
    paths = ("baseline", "memory", "redis", "redis_floor")
    assert set(runs) == {(s, path) for s in ("L", "T1", "T50") for path in paths}
    for key, run in runs.items():
        # Every event exactly once, in order, then the terminal event, on every path.
        assert run["events"] == run["expected"] > 0, key
        assert (run["lost"], run["disorder"], run["unfinished"], run["not_200"]) == (0, 0, 0, 0)
        assert run["rate"] > 0, key
    for path in paths:
        assert runs["L", path]["latency_us"]["p99"] >= runs["L", path]["latency_us"]["p50"] > 0
        assert runs["T1", path]["latency_us"]["p50"] is None  # throughput runs skip it
    # The table on stdout has a row per path in every scenario, and the command.
    for path in paths:
        assert done.stdout.count(f"| {path} |") == 3, path
    assert "command: python benchmarks/resumable.py --smoke" in done.stdout


@pytest.mark.timeout(120)
def test_the_engines_benchmark_loses_nothing_but_what_polling_misses(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/engines.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=100,
        capture_output=True,
        text=True,
    )
    document = json.loads(out.read_text())
    runs = {(run["scenario"], run["name"]): run for run in document["runs"]}
    assert set(runs) == {(s, p) for s in ("L", "T1") for p in ("stream", "celery", "polling")}
    for scenario in ("L", "T1"):
        for path in ("stream", "celery"):  # pushed: every event once, in order, then the end
            run = runs[scenario, path]
            assert run["events"] == run["expected"] > 0, (scenario, path)
            assert (run["lost"], run["disorder"], run["unfinished"]) == (0, 0, 0), (scenario, path)
        polled = runs[scenario, "polling"]
        assert polled["unfinished"] == 0  # it ends, having missed what came between two polls
        assert polled["events"] < polled["expected"]
    assert runs["L", "celery"]["latency_us"]["p50"] > 0
    assert "command: python benchmarks/engines.py --smoke" in done.stdout


def test_the_idle_benchmark_holds_every_stream_and_counts_its_heartbeats(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    sizes = ("--streams", "20", "--rounds", "1", "--heartbeat", "0.2")
    subprocess.run(
        [sys.executable, "benchmarks/idle.py", *sizes, "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == ["floor", "asgi_sse"]
    for result in results:
        assert result["streams"] == 20
        assert result["rounds"] >= 1  # every stream got its heartbeat, once more at least
        assert result["rss_after_mib"] >= result["rss_before_mib"] > 0


@pytest.mark.timeout(120)
def test_the_coalesce_benchmark_frees_the_stalled_clients_job_and_loses_no_step(
    tmp_path: Path,
) -> None:
    out = tmp_path / "coalesce.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/coalesce.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        check=False,
        timeout=100,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr  # non-zero when a case is not as expected
    document = json.loads(out.read_text())
    runs = {run["coalesce"]: run for run in document["runs"]}
    assert set(runs) == {False, True}
    assert all(run["as_expected"] for run in runs.values())
    without, with_ = runs[False], runs[True]
    # Without: backpressure gives the fast client everything, and holds the stalled
    # client's job until the send timeout stops it, unfinished.
    assert without["fast"]["every_event"]
    assert without["fast"]["events"] == document["events"]
    assert without["stalled"]["outcome"] == "JobCancelled"
    assert not without["stalled"]["completed"]
    # With: the stalled client's job runs to its end; the client then gets that end
    # and the last value of every step, but not every event.
    assert with_["stalled"]["outcome"] == "completed"
    assert with_["stalled"]["completed"]
    assert with_["stalled"]["every_steps_last_value"]
    assert with_["stalled"]["ids_increase"]
    assert 0 < with_["stalled"]["events"] < document["events"]
    assert with_["fast"]["in_order"]  # every event while it keeps up, then the latest
    assert with_["fast"]["last_report"]
    for run in runs.values():
        assert run["rss_peak_mib"] >= run["rss_before_mib"] > 10  # read from /proc
    assert "| stalled client's job ended | JobCancelled | completed | |" in done.stdout
    assert "command: python benchmarks/coalesce.py --smoke" in done.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workload", ["burst", "paced", "streams"])
def test_the_instruction_count_harness_runs_each_workload_observed_and_not(workload: str) -> None:
    """Its children, without valgrind: each runs its workload through the app,
    and an observed one checks that its observers counted every stream."""
    for observed in ("0", "1"):
        subprocess.run(
            [sys.executable, "benchmarks/instructions.py", "--child", workload, observed, "3"],
            cwd=ROOT,
            check=True,
            timeout=60,
            capture_output=True,
        )
