"""The implementations compared, each served by hypercorn as ``benchmarks.apps:NAME``.

All stream the same job: ``n`` progress callbacks with no sleep, each stamped with
``time.monotonic_ns()`` in the worker, then a result; all emit the same wire format,
so one client checks them all. ``/?n=100000`` sets the size.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from asgi_sse import DEFAULT_BUFFER_BYTES, EventStream, EventStreamMiddleware, Job

BUFFER = int(os.environ.get("ASGI_SSE_BUFFER", str(DEFAULT_BUFFER_BYTES)))
ProgressCallback = Callable[[str, dict[str, Any]], None]


def job(n: int, on_progress: ProgressCallback) -> dict[str, int]:
    for i in range(n):
        on_progress("step", {"i": i, "t": time.monotonic_ns()})
    return {"events": n}


def _size(query: bytes) -> int:
    return int(parse_qs(query.decode()).get("n", ["1000"])[0])


async def _lifespan(receive: Any, send: Any) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


# -- 1. asgi-sse -----------------------------------------------------------------


async def asgi_sse(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    stream = EventStream(Job(job, _size(scope["query_string"])), max_buffer_bytes=BUFFER)
    return await stream(scope, receive, send)


# The same, under the app-wide middleware (shared limiter, counters, admission).
asgi_sse_middleware = EventStreamMiddleware(asgi_sse, max_streams=1000)


# -- 2. the floor: hand-written for this one job, the yardstick -------------------

_encode = msgspec.json.Encoder().encode
_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


async def floor(scope: Any, receive: Any, send: Any) -> None:
    """Thread per request, events encoded in the worker, everything queued in one send.

    No limiter, no backpressure, no disconnect handling, no heartbeat: only speed.
    """
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    n = _size(scope["query_string"])
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    pending: list[bytes] = []
    wake = asyncio.Event()
    state = {"waiting": False, "done": False}

    def push(chunk: bytes) -> None:
        with lock:
            pending.append(chunk)
            if not state["waiting"]:
                return
            state["waiting"] = False
        loop.call_soon_threadsafe(wake.set)

    def run() -> None:
        counter = 0

        def on_progress(step: str, details: dict[str, Any]) -> None:
            nonlocal counter
            counter += 1
            data = _encode({"step": step, "details": details})
            push(b"event: progress\nid: %d\ndata: %b\n\n" % (counter, data))

        result = job(n, on_progress)
        state["done"] = True
        push(b"event: completed\nid: %d\ndata: %b\n\n" % (counter + 1, _encode(result)))

    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    threading.Thread(target=run, daemon=True).start()
    while True:
        with lock:
            batch = pending[:]
            pending.clear()
            if not batch:
                if state["done"]:
                    break
                state["waiting"] = True
                wake.clear()
        if batch:
            await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
        else:
            await wake.wait()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return None


# -- 3. the common pattern: asyncio.Queue and a polling consumer --------------------


async def _queue_endpoint(request: Request) -> StreamingResponse:
    n = int(request.query_params.get("n", "1000"))
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def on_progress(step: str, details: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (step, details))

    async def events() -> Any:
        task = asyncio.ensure_future(run_in_threadpool(job, n, on_progress))
        sent = 0
        while True:
            try:
                step, details = await asyncio.wait_for(queue.get(), timeout=0.1)
            except asyncio.TimeoutError:
                if task.done():
                    break
                continue
            sent += 1
            data = msgspec.json.encode({"step": step, "details": details})
            yield b"event: progress\nid: %d\ndata: %b\n\n" % (sent, data)
        result = await task
        yield b"event: completed\nid: %d\ndata: %b\n\n" % (sent + 1, msgspec.json.encode(result))

    return StreamingResponse(events(), media_type="text/event-stream")


queue_pattern = Starlette(routes=[Route("/", _queue_endpoint)])

IMPLEMENTATIONS = {
    "asgi_sse": asgi_sse,
    "asgi_sse_middleware": asgi_sse_middleware,
    "floor": floor,
    "queue_pattern": queue_pattern,
}
