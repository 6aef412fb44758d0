"""Turn ``run.py``'s JSON into the results page and its charts.

    python benchmarks/report.py                       # docs/benchmarks/results.json -> docs/
    python benchmarks/report.py --results R.json --out DIR

Each figure is the median over a scenario's runs, with the spread (min-max)
beside the headline ones; ratios are against the floor served in the same
invocation, since absolute figures drift on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
Runs = list[dict[str, Any]]
ASGI_SSE = (
    "asgi_sse",
    "asgi_sse_middleware",
    "asgi_sse_observed",
    "asgi_sse_litestar",
    "asgi_sse_quart",
)


def _median(runs: Runs, get: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [v for v in map(get, runs) if v is not None]
    return statistics.median(values) if values else None


def _spread(runs: Runs, get: Callable[[dict[str, Any]], float | None], fmt: str) -> str:
    values = [v for v in map(get, runs) if v is not None]
    if not values:
        return "-"
    middle = format(statistics.median(values), fmt)
    if len(values) == 1:
        return middle
    return f"{middle} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _cpu_per_event(runs: Runs) -> float | None:
    """Server CPU us per event over all runs together: /proc counts in 10 ms ticks,
    too coarse for one short run."""
    events = sum(r["events"] for r in runs)
    return sum(r["server_cpu_s"] for r in runs) / events * 1e6 if events else None


def _client(runs: Runs) -> str:
    """The client's CPU share, flagged where the client may be what limits the rate."""
    share = _median(runs, lambda r: r["client_cpu_share"]) or 0.0
    return f"{share:.0%}" + (" (client-bound?)" if share > 0.8 else "")


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: float | None, floor: float | None) -> str:
    return "-" if value is None or not floor else f"{value / floor:.2f}x"


def _by_name(runs: Runs, scenario: str) -> dict[str, Runs]:
    grouped: dict[str, Runs] = {}
    for run in runs:
        if run["scenario"] == scenario:
            grouped.setdefault(run["name"], []).append(run)
    return grouped


def _losses(runs: Runs) -> str:
    lost = sum(r["lost"] for r in runs)
    unfinished = sum(r["unfinished"] for r in runs)
    text = f"{lost}" if not unfinished else f"{lost}, {unfinished} unfinished"
    abandoned = sum(r["abandoned"] for r in runs)
    return f"**{text}** ({abandoned} abandoned)" if lost and abandoned else text


def latency_table(groups: dict[str, Runs], under_load: bool) -> list[str]:
    floor = groups.get("floor", [])
    p50 = _median(floor, lambda r: r["latency_us"]["p50"])
    p99 = _median(floor, lambda r: r["latency_us"]["p99"])
    head = "| implementation | p50 us | p99 us | max us | p50 vs floor | p99 vs floor |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if under_load:
        head += " first byte p50 / p99 ms | first frame p50 / p99 ms | first event p50 / p99 ms |"
        rule += "---:|---:|---:|"
    lines = [head + " lost |", rule + "---:|"]
    for name, runs in groups.items():
        row = (
            f"| {name} | {_spread(runs, lambda r: r['latency_us']['p50'], ',.0f')}"
            f" | {_spread(runs, lambda r: r['latency_us']['p99'], ',.0f')}"
            f" | {_fmt(_median(runs, lambda r: r['latency_us']['max']), ',.0f')}"
            f" | {_ratio(_median(runs, lambda r: r['latency_us']['p50']), p50)}"
            f" | {_ratio(_median(runs, lambda r: r['latency_us']['p99']), p99)} |"
        )
        if under_load:
            row += (
                f" {_fmt(_median(runs, lambda r: r['ttfb_ms']['p50']), ',.1f')}"
                f" / {_fmt(_median(runs, lambda r: r['ttfb_ms']['p99']), ',.1f')}"
                f" | {_fmt(_median(runs, lambda r: r['ttff_ms']['p50']), ',.1f')}"
                f" / {_fmt(_median(runs, lambda r: r['ttff_ms']['p99']), ',.1f')}"
                f" | {_fmt(_median(runs, lambda r: r['ttfe_ms']['p50']), ',.0f')}"
                f" / {_fmt(_median(runs, lambda r: r['ttfe_ms']['p99']), ',.0f')} |"
            )
        lines.append(row + f" {_losses(runs)} |")
    return lines


def throughput_table(groups: dict[str, Runs]) -> list[str]:
    floor = groups.get("floor", [])
    rate = _median(floor, lambda r: r["rate"])
    cpu = _cpu_per_event(floor)
    queue = _median(groups.get("queue_pattern", []), lambda r: r["rate"])
    lines = [
        "| implementation | events/s | vs floor | vs queue pattern | server CPU us/event"
        " | vs floor | peak RSS MiB | client CPU | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in groups.items():
        median = _median(runs, lambda r: r["rate"])
        us = _cpu_per_event(runs)
        lines.append(
            f"| {name} | {_spread(runs, lambda r: r['rate'], ',.0f')} | {_ratio(median, rate)}"
            f" | {_ratio(median, queue)} | {_fmt(us, '.2f')} | {_ratio(us, cpu)}"
            f" | {_fmt(_median(runs, lambda r: r['rss_peak_mib']), '.0f')}"
            f" | {_client(runs)} | {_losses(runs)} |"
        )
    return lines


def scale_table(groups: dict[str, Runs]) -> list[str]:
    lines = [
        "| implementation | memory per stream KiB | heartbeat jitter p50 / p99 / max ms"
        " | heartbeats | first byte p99 ms | first event p99 ms | lost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in groups.items():
        jitter = [_median(runs, lambda r, q=q: r["jitter_ms"][q]) for q in ("p50", "p99", "max")]
        lines.append(
            f"| {name} | {_spread(runs, lambda r: r['rss_per_stream_kib'], '.0f')}"
            f" | {' / '.join(_fmt(j, '.1f') for j in jitter)}"
            f" | {_fmt(_median(runs, lambda r: r['heartbeats']), '.0f')}"
            f" | {_fmt(_median(runs, lambda r: r['ttfb_ms']['p99']), ',.0f')}"
            f" | {_fmt(_median(runs, lambda r: r['ttfe_ms']['p99']), ',.0f')} | {_losses(runs)} |"
        )
    return lines


def slow_reader_table(groups: dict[str, Runs]) -> list[str]:
    lines = [
        "| implementation | server memory growth MiB | job done at (share of the read)"
        " | job finished before the client, s | read time s | lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in groups.items():
        lines.append(
            f"| {name} | {_spread(runs, lambda r: r['rss_peak_mib'] - r['rss_before_mib'], '.1f')}"
            f" | {_fmt(_median(runs, lambda r: r['job_done_at']), '.2f')}"
            f" | {_fmt(_median(runs, lambda r: r['job_lead_s']), '.1f')}"
            f" | {_fmt(_median(runs, lambda r: r['wall_s']), '.1f')} | {_losses(runs)} |"
        )
    return lines


def calibration_table(calibration: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| streams | events/s | client CPU | client CPU us/event | ceiling events/s | lost |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c in calibration:
        lines.append(
            f"| {c['streams']} | {c['rate']:,.0f} | {c['client_cpu_share']:.0%}"
            f" | {c['client_us_per_event']:.2f} | {1e6 / c['client_us_per_event']:,.0f}"
            f" | {c['lost']} |"
        )
    return lines


def targets(runs: Runs) -> list[str]:
    """The issue's targets for asgi-sse (raw ASGI), each with its measured ratio."""

    def value(scenario: str, name: str, get: Callable[[dict[str, Any]], float | None]) -> Any:
        return _median(_by_name(runs, scenario).get(name, []), get)

    rows: list[tuple[str, str, bool]] = []
    for key in ("C1", "C50"):
        rate = value(key, "asgi_sse", lambda r: r["rate"])
        floor, queue = (
            value(key, "floor", lambda r: r["rate"]),
            value(key, "queue_pattern", lambda r: r["rate"]),
        )
        if rate and floor:
            rows.append(
                (f"{key}: events/s >= 0.8x floor", f"{rate / floor:.2f}x", rate >= 0.8 * floor)
            )
        if rate and queue:
            rows.append(
                (
                    f"{key}: events/s >= 10x queue pattern",
                    f"{rate / queue:.0f}x",
                    rate >= 10 * queue,
                )
            )
        groups = _by_name(runs, key)
        cpu = _cpu_per_event(groups.get("asgi_sse", []))
        floor_cpu = _cpu_per_event(groups.get("floor", []))
        if cpu and floor_cpu:
            rows.append(
                (
                    f"{key}: CPU/event <= 1.5x floor",
                    f"{cpu / floor_cpu:.2f}x",
                    cpu <= 1.5 * floor_cpu,
                )
            )
    for key in ("A", "B", "B200"):
        groups = _by_name(runs, key)
        for q in ("p50", "p99"):
            ours = value(key, "asgi_sse", lambda r, q=q: r["latency_us"][q])
            floor = value(key, "floor", lambda r, q=q: r["latency_us"][q])
            if ours is None or floor is None:
                continue
            rows.append(
                (f"{key}: latency {q} <= 1.2x floor", f"{ours / floor:.2f}x", ours <= 1.2 * floor)
            )
            others = {
                name: _median(group, lambda r, q=q: r["latency_us"][q])
                for name, group in groups.items()
                if name != "floor" and name not in ASGI_SSE
            }
            best = min(others.items(), key=lambda item: item[1] or float("inf"), default=None)
            if best and best[1]:
                rows.append(
                    (
                        f"{key}: latency {q} below every other implementation",
                        f"{ours:,.0f} us vs {best[1]:,.0f} us ({best[0]})",
                        ours < best[1],
                    )
                )
    ttfb = value("B", "asgi_sse", lambda r: r["ttfb_ms"]["p99"])
    if ttfb is not None:
        rows.append(("B: first bytes (headers) p99 <= 100 ms", f"{ttfb:,.1f} ms", ttfb <= 100))
    ttff = value("B", "asgi_sse_middleware", lambda r: r["ttff_ms"]["p99"])
    if ttff is not None:
        rows.append(
            ("B: first event (`queued`) p99 <= 100 ms, middleware", f"{ttff:,.1f} ms", ttff <= 100)
        )
    ours = [r for r in runs if r["name"] in ASGI_SSE]
    lost = sum(r["lost"] + r["unfinished"] + r["disorder"] for r in ours)
    rows.append(("zero events lost, every scenario and run", f"{lost} lost", lost == 0))
    return [
        "| target | measured | met |",
        "|---|---|---|",
        *(f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in rows),
    ]


def _bars(
    ax: Any, groups: dict[str, Runs], series: dict[str, Callable[[dict[str, Any]], Any]]
) -> None:
    names = list(groups)
    width = 0.8 / len(series)
    for index, (label, get) in enumerate(series.items()):
        heights = [_median(groups[name], get) or 0 for name in names]
        ax.bar([i + index * width for i in range(len(names))], heights, width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(names))], names)
    ax.tick_params(axis="x", labelrotation=35, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)


def charts(runs: Runs, out: Path) -> list[str]:
    """Four PNGs beside the page; returns their file names."""
    plots: list[
        tuple[str, list[tuple[str, str, dict[str, Callable[[dict[str, Any]], Any]], bool]]]
    ] = [
        (
            "latency.png",
            [
                (
                    k,
                    f"{k}: event latency, us (log)",
                    {q: lambda r, q=q: r["latency_us"][q] for q in ("p50", "p99")},
                    True,
                )
                for k in ("A", "B", "B200")
            ],
        ),
        (
            "throughput.png",
            [
                (k, f"{k}: events/s", {"events/s": lambda r: r["rate"]}, False)
                for k in ("C1", "C50")
            ],
        ),
        (
            "cpu.png",
            [
                (
                    k,
                    f"{k}: server CPU us per event",
                    {"us": lambda r: r["server_us_per_event"]},
                    False,
                )
                for k in ("C1", "C50")
            ],
        ),
        (
            "memory.png",
            [
                (
                    "D",
                    "D: server memory per idle stream, KiB",
                    {"KiB": lambda r: r["rss_per_stream_kib"]},
                    False,
                ),
                (
                    "E",
                    "E: server memory growth with a slow reader, MiB",
                    {"MiB": lambda r: r["rss_peak_mib"] - r["rss_before_mib"]},
                    False,
                ),
            ],
        ),
    ]
    written = []
    for filename, panels in plots:
        present = [p for p in panels if _by_name(runs, p[0])]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(6 * len(present), 4.2), squeeze=False)
        for ax, (key, title, series, log) in zip(axes[0], present, strict=False):
            _bars(ax, _by_name(runs, key), series)
            ax.set_title(title, fontsize=10)
            if log:
                ax.set_yscale("log")
        fig.tight_layout()
        fig.savefig(out / filename, dpi=90)
        plt.close(fig)
        written.append(filename)
    return written


def render(document: dict[str, Any], out: Path) -> Path:
    """Write ``benchmark-results.md`` and its charts (under ``benchmarks/``) into ``out``."""
    meta, runs, scenarios = document["meta"], document["runs"], document["scenarios"]
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines = [
        "# Benchmark results",
        "",
        "<!-- Written by benchmarks/report.py from docs/benchmarks/results.json: do not edit. -->",
        "",
        f"Command: `{meta['command']}`, then `python benchmarks/report.py` (both: `make bench`).",
        f"Measured {meta['date']} on {meta['machine']}; Python {meta['python']};",
        f"server pinned to core 0 and client to core 1: {'yes' if meta['pinned'] else 'no'}.",
        f"Versions: {versions}.",
        "How these are measured, and what they mean: [Benchmarks](benchmarks.md).",
        "",
    ]
    if meta["smoke"]:
        lines += ["**A smoke run: tiny sizes, one run. These figures prove the harness only.**", ""]
    lines += ["## Targets for asgi-sse", "", *targets(runs), ""]
    lines += ["## The client's ceiling (calibration)", ""]
    lines += [
        "The same client against a server that sends pre-encoded events and does nothing else:",
        "",
        *calibration_table(document["calibration"]),
        "",
    ]
    sections = {
        "A": lambda g: latency_table(g, under_load=False),
        "B": lambda g: latency_table(g, under_load=True),
        "B200": lambda g: latency_table(g, under_load=True),
        "C1": throughput_table,
        "C50": throughput_table,
        "D": scale_table,
        "E": slow_reader_table,
    }
    for key, table in sections.items():
        if key not in scenarios:
            continue
        groups = _by_name(runs, key)
        runs_each = max((len(g) for g in groups.values()), default=0)
        lines += [f"## {key}, {scenarios[key]['title']}", "", f"Median of {runs_each} runs.", ""]
        lines += [*table(groups), ""]
    for filename in charts(runs, out / "benchmarks"):
        lines += [f"![{filename[:-4]}](benchmarks/{filename})", ""]
    page = out / "benchmark-results.md"
    page.write_text("\n".join(lines))
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "docs/benchmarks/results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    print(f"wrote {render(json.loads(args.results.read_text()), args.out)}")


if __name__ == "__main__":
    main()
