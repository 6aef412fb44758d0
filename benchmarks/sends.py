"""Why the servers differ: how many events go out in each send, floor and asgi-sse.

    python benchmarks/sends.py

An event stream's cost beyond encoding is its sends (one ``http.response.body``
each), and how many events each send carries depends on the server: a send that
returns at once (uvicorn, into the transport's buffer) lets a big batch build up
before the next, one that waits on the server's own machinery (hypercorn) does
not. For scenarios C1 and C50 under hypercorn and uvicorn, this serves the floor
and asgi-sse wrapped in a counter (``app`` below; ``GET /counts`` answers the
totals) and prints the sends, the events per send and the rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAME = os.environ.get("BENCH_APP", "floor")
_totals = {"sends": 0, "events": 0}


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The benchmark app named by ``BENCH_APP``, its body sends counted."""
    from benchmarks import apps  # noqa: PLC0415 (in the server process only)

    inner = getattr(apps, NAME)
    if scope["type"] == "http" and scope["path"] == "/counts":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(_totals).encode()})
        return

    async def counted(message: Any) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            _totals["sends"] += 1
            _totals["events"] += message["body"].count(b"event: progress")
        await send(message)

    await inner(scope, receive, counted if scope["type"] == "http" else send)


def main() -> None:
    from client import load  # noqa: PLC0415
    from run import SERVERS, _server  # noqa: PLC0415

    print("server     app       scenario  sends  events/send  events/s")
    for server in ("hypercorn", "uvicorn"):
        command, ready = SERVERS[server]
        command = [sys.executable, *(p.replace("{app}", "benchmarks.sends:app") for p in command)]
        for name in ("floor", "asgi_sse"):
            for key, streams, n in (("C1", 1, 100_000), ("C50", 50, 5000)):
                with _server(command, {"BENCH_APP": name}, ready) as (port, _):
                    found = asyncio.run(load(port, f"/?n={n}", streams=streams, n=n, deadline=60))
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/counts") as answer:
                        totals = json.loads(answer.read())
                wall = (max(s.ended for s in found) - min(s.started for s in found)) / 1e9
                rate = sum(s.received for s in found) / wall
                per = totals["events"] / max(totals["sends"], 1)
                print(
                    f"{server:<10} {name:<9} {key:<8} {totals['sends']:>6} {per:>12,.0f}"
                    f" {rate:>9,.0f}"
                )


if __name__ == "__main__":
    main()
