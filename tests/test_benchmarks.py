"""The benchmark harness works: a tiny run of every implementation, counted event by event.

Speed is not asserted here (that is `make bench`'s job), only that the harness
measures what it claims: every event of asgi-sse and of the floor arrives, in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_a_smoke_run_of_every_implementation_counts_every_event() -> None:
    output = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--events", "3000", "--runs", "1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    runs = {run["name"]: run for run in json.loads(output)}
    assert set(runs) == {"floor", "asgi_sse", "asgi_sse_middleware", "queue_pattern"}
    for name in ("floor", "asgi_sse"):
        assert runs[name]["events"] == 3000, runs[name]
        assert runs[name]["lost"] == 0
        assert runs[name]["completed"]
    assert runs["queue_pattern"]["completed"]  # it may lose events under load, not here
    assert all(run["server_cpu"] >= 0 and run["peak_rss_mib"] > 0 for run in runs.values())
