"""A worker process: plain Python, no web framework. It takes jobs from a Redis
list and runs each one, publishing its progress to Redis, where any web process
of ``examples/resumable.py`` streams it to clients.

    ASGI_SSE_REDIS_URL=redis://127.0.0.1:6379/0 python -m examples.resumable_worker
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from typing import Any

import anyio
from redis.asyncio import Redis

from asgi_sse import Job
from asgi_sse.resumable import Jobs
from asgi_sse.resumable.redis import RedisBackend
from examples.resumable import QUEUE, crunch, socket_timeout


async def next_task(client: Redis) -> dict[str, Any]:
    """The next task, however long the queue stays empty."""
    while True:
        popped = await client.blpop([QUEUE], timeout=socket_timeout(client) / 2)  # type: ignore[misc]
        if popped is not None:
            return dict(json.loads(popped[1]))


async def main() -> None:
    client = Redis.from_url(os.environ["ASGI_SSE_REDIS_URL"])
    lease = float(os.environ.get("ASGI_SSE_LEASE", "3"))
    block = min(1.0, lease, socket_timeout(client) / 2)  # its reads block likewise
    jobs = Jobs(RedisBackend(client, lease=lease, block=block))
    async with anyio.create_task_group() as tg:
        while True:
            task = await next_task(client)
            job = Job(crunch, task["steps"], task["interval"])
            tg.start_soon(partial(jobs.run, job, id=task["id"]))
            print(f"worker: started {task['id']}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    anyio.run(main)
