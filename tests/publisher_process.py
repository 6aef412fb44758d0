"""A job's publisher in a process of its own, for the takeover tests: it claims
the job, says so, then (``append``) appends an event every few milliseconds,
or (``wait``) waits to be cancelled, until it is shut out, and says that too.

Usage: ``python publisher_process.py REDIS_URL PREFIX JOB_ID LEASE append|wait``.
"""

from __future__ import annotations

import sys

import anyio
from redis.asyncio import Redis

from asgi_sse.resumable._store import JobLost
from asgi_sse.resumable.redis import RedisBackend


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(url: str, prefix: str, job_id: str, lease: str, mode: str) -> None:
    backend = RedisBackend(Redis.from_url(url), prefix=prefix, lease=float(lease), block=0.1)
    async with backend.publishing(job_id) as claim:
        say("claimed")
        try:
            if mode == "wait":
                await backend.wait_cancelled(job_id)
                say("cancelled")
                return
            event_id = claim.last_id
            while True:
                event_id += 1
                await backend.append(job_id, [(event_id, b"data: %d\n\n" % event_id)], 1)
                await anyio.sleep(0.01)  # a job's pace, not a wait for anything
        except JobLost:
            say("shut out")


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
