"""The same scenarios under each server users run, side by side: hypercorn, uvicorn, granian.

    python benchmarks/servers.py                     # 3 runs each (make bench)
    python benchmarks/servers.py --servers granian   # measure one again, keep the others

For each server, ``run.py --server S`` measures the floor, asgi-sse and
sse-starlette, each in a fresh server process, into
docs/benchmarks/servers-S.json; the table of every server measured goes to
docs/benchmark-servers.md. Every
figure is also given as a ratio to the floor measured on the same server in the
same run: servers differ more than the libraries on them do, so a figure on its
own says more about the server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["hypercorn", "uvicorn", "granian"]
NAMES = ["floor", "asgi_sse", "sse_starlette"]
#: Per scenario: what is compared, how it is read from a run, its unit, and
#: whether more is better.
FIGURES: dict[str, tuple[str, Callable[[dict[str, Any]], float], str, bool]] = {
    "A": ("latency p50", lambda run: run["latency_us"]["p50"], "us", False),
    "B": ("latency p99", lambda run: run["latency_us"]["p99"], "us", False),
    "C1": ("throughput", lambda run: run["rate"], "events/s", True),
    "C50": ("throughput", lambda run: run["rate"], "events/s", True),
}


def measure(server: str, runs: int, smoke: bool, out: Path) -> None:
    command = [sys.executable, "benchmarks/run.py", "--server", server, "--out", str(out)]
    command += ["--scenarios", *FIGURES, "--only", *NAMES, "--runs", str(runs)]
    subprocess.run([*command, *(["--smoke"] if smoke else [])], cwd=ROOT, check=True)


def median(document: dict[str, Any], scenario: str, name: str) -> float | str:
    """The median figure of the runs that lost nothing, or why there is none."""
    runs = [r for r in document["runs"] if (r["scenario"], r["name"]) == (scenario, name)]
    values = [FIGURES[scenario][1](run) for run in runs if run["lost"] == 0]
    values = [value for value in values if value is not None]
    if values:
        return statistics.median(values)
    return "lost events" if runs else "not run"


def render(documents: dict[str, dict[str, Any]]) -> str:
    first = next(iter(documents.values()))["meta"]
    versions = ", ".join(
        f"{server} {documents[server]['meta']['versions'][server]}" for server in documents
    )
    lines = [
        "<!-- Written by benchmarks/servers.py from docs/benchmarks/servers-*.json. -->",
        "# Benchmarks by server",
        "",
        f"`python benchmarks/servers.py`, {first['date']},"
        f" Python {first['python']}, {first['machine']}; {versions}. Medians of the runs;"
        " in brackets, the ratio to the floor on the same server (for latency, lower is"
        " better; for throughput, higher is).",
        "",
        "| scenario | figure | server | floor | asgi-sse | sse-starlette |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, (figure, _, unit, _) in FIGURES.items():
        for server, document in documents.items():
            floor = median(document, scenario, "floor")
            cells = []
            for name in NAMES:
                value = median(document, scenario, name)
                if isinstance(value, str):
                    cells.append(value)
                elif name == "floor" or isinstance(floor, str) or not floor:
                    cells.append(f"{value:,.0f} {unit}")
                else:
                    cells.append(f"{value:,.0f} {unit} ({value / floor:.2f}x)")
            if set(cells) != {"not run"}:
                lines.append(f"| {scenario} | {figure} | {server} | {' | '.join(cells)} |")
    lines += ["", "The scenarios are described in [Method](benchmarks.md).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", nargs="*", choices=SERVERS, default=SERVERS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    (args.out / "benchmarks").mkdir(parents=True, exist_ok=True)
    results = {server: args.out / f"benchmarks/servers-{server}.json" for server in SERVERS}
    for server in args.servers:
        measure(server, runs, args.smoke, results[server])
    documents = {s: json.loads(path.read_text()) for s, path in results.items() if path.exists()}
    (args.out / "benchmark-servers.md").write_text(render(documents))
    print(f"wrote {args.out / 'benchmark-servers.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
