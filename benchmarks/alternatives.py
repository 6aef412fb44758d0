"""What a user would write instead of asgi-sse, each served by hypercorn as
``benchmarks.alternatives:NAME`` and streaming the events described in ``apps.py``.

Why these four: a user with a blocking job and a progress callback reaches for

- ``queue_pattern``: the FastAPI recipe found in answers and blog posts: an
  ``asyncio.Queue`` fed with ``call_soon_threadsafe``, a consumer polling it with a
  0.1 s timeout and stopping when the queue looks empty and the job is done. Kept as
  written, race included; ``: abandoned N`` before ``completed`` says how many
  events were still queued when the loop stopped. Threads: anyio's default limiter
  (``run_in_threadpool``).
- ``sse_starlette``: the most used SSE package for Starlette/FastAPI. The job feeds
  an anyio memory object stream bounded at 1024 items (``from_thread.run`` blocks
  the worker when full), driven by ``data_sender_callable`` so sse-starlette owns
  the task; heartbeats are its ``ping=``. Threads: anyio's default limiter.
- ``litestar_sse``: Litestar's own ``ServerSentEvent`` response; unbounded queue
  with an end sentinel. Threads: ``sync_to_thread``, i.e. the loop's default
  executor unless ``set_asyncio_executor`` gives one.
- ``quart_generator``: Quart's streamed async generator; unbounded queue with an
  end sentinel. Threads: ``run_sync``, i.e. the loop's default executor.

With ``BENCH_THREADS`` set, each tool's pool gets that many threads at startup.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from litestar import Litestar, Request, get
from litestar.concurrency import set_asyncio_executor, sync_to_thread
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from quart import Quart, make_response, request
from quart.utils import run_sync
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as StarletteRequest
from starlette.routing import Route

from benchmarks.apps import THREADS, Params, job

_encode = msgspec.json.encode
_END = object()  # the queue's end sentinel


def _progress(step: str, details: Any) -> str:
    return _encode({"step": step, "details": details}).decode()


@asynccontextmanager
async def _anyio_threads(app: Any) -> AsyncIterator[None]:
    if THREADS:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    yield


# -- 1. the common FastAPI queue pattern, as written in the wild ------------------------

queue_pattern = FastAPI(lifespan=_anyio_threads)


@queue_pattern.get("/")
async def _queue_pattern(request: StarletteRequest) -> StreamingResponse:
    params = Params.parse(request.url.query)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_progress(step: str, details: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (step, details))

    async def events() -> AsyncIterator[str]:
        task = asyncio.create_task(run_in_threadpool(job, params, on_progress))
        event_id = 0
        last = loop.time()
        while True:
            try:
                step, details = await asyncio.wait_for(queue.get(), timeout=0.1)
            except asyncio.TimeoutError:
                if task.done():
                    break
                if params.hb and loop.time() - last >= params.hb:
                    last = loop.time()
                    yield ": ping\n\n"
                continue
            event_id += 1
            yield f"event: progress\nid: {event_id}\ndata: {_progress(step, details)}\n\n"
            last = loop.time()
        abandoned = queue.qsize()
        result = await task
        yield f": abandoned {abandoned}\n\n"
        yield f"event: completed\nid: {event_id + 1}\ndata: {_encode(result).decode()}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# -- 2. sse-starlette over an anyio memory object stream ----------------------------------


async def _sse_starlette(request: StarletteRequest) -> EventSourceResponse:
    params = Params.parse(request.url.query)
    send, receive = anyio.create_memory_object_stream[tuple[str, Any]](max_buffer_size=1024)

    def on_progress(step: str, details: Any) -> None:
        anyio.from_thread.run(send.send, ("progress", {"step": step, "details": details}))

    async def run_job() -> None:
        async with send:
            result = await anyio.to_thread.run_sync(job, params, on_progress)
            await send.send(("completed", result))

    async def events() -> AsyncIterator[dict[str, str]]:
        event_id = 0
        async with receive:
            async for event, payload in receive:
                event_id += 1
                yield {"event": event, "id": str(event_id), "data": _encode(payload).decode()}

    return EventSourceResponse(
        events(), sep="\n", ping=params.hb or None, data_sender_callable=run_job
    )


sse_starlette = Starlette(routes=[Route("/", _sse_starlette)], lifespan=_anyio_threads)


# -- the careful queue bridge shared by Litestar and Quart ----------------------------


async def _bridge(params: Params, to_thread: Any) -> AsyncIterator[tuple[str | None, int, str]]:
    """``(event, id, data)`` per event, ``(None, 0, "")`` for a heartbeat."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def on_progress(step: str, details: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (step, details))

    async def run_job() -> Any:
        try:
            return await to_thread(job, params, on_progress)
        finally:
            queue.put_nowait(_END)  # after every event: they were scheduled first

    task = asyncio.create_task(run_job())
    event_id = 0
    while True:
        if params.hb:
            try:
                item = await asyncio.wait_for(queue.get(), params.hb)
            except asyncio.TimeoutError:
                yield None, 0, ""
                continue
        else:
            item = await queue.get()
        if item is _END:
            break
        event_id += 1
        yield "progress", event_id, _progress(*item)
    yield "completed", event_id + 1, _encode(await task).decode()


# -- 3. Litestar's own ServerSentEvent ---------------------------------------------

if THREADS:
    set_asyncio_executor(ThreadPoolExecutor(THREADS))  # only allowed outside a running loop


@get("/")
async def _litestar_sse(request: Request[Any, Any, Any]) -> ServerSentEvent:
    params = Params.parse(request.scope["query_string"])

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        async for event, event_id, data in _bridge(params, sync_to_thread):
            if event is None:
                yield ServerSentEventMessage(data=None, comment="ping", sep="\n")
            else:
                yield ServerSentEventMessage(event=event, id=event_id, data=data, sep="\n")

    return ServerSentEvent(events())


litestar_sse = Litestar([_litestar_sse])


# -- 4. Quart streaming an async generator -----------------------------------------

quart_generator = Quart(__name__)


@quart_generator.before_serving
async def _quart_threads() -> None:
    if THREADS:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(THREADS))


@quart_generator.get("/")
async def _quart_sse() -> Any:
    params = Params.parse(request.query_string)

    async def events() -> AsyncIterator[bytes]:
        async for event, event_id, data in _bridge(params, lambda f, *a: run_sync(f)(*a)):
            if event is None:
                yield b": ping\n\n"
            else:
                yield f"event: {event}\nid: {event_id}\ndata: {data}\n\n".encode()

    response = await make_response(
        events(), {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    response.timeout = None  # stream past Quart's RESPONSE_TIMEOUT
    return response


IMPLEMENTATIONS = {
    "queue_pattern": queue_pattern,
    "sse_starlette": sse_starlette,
    "litestar_sse": litestar_sse,
    "quart_generator": quart_generator,
}
