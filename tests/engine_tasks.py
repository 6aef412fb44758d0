"""The blocking functions the engine tests hand to real Celery and RQ workers.

Imported by those workers (and by the web app that enqueues them), so standard
library and redis-py only. What a job does that the test must know (that it
ran, that it saw JobCancelled) it writes to the test's Redis, at ``NOTES``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from redis import Redis

from asgi_sse import JobCancelled, Reporter

PACE = 0.01  # seconds between a looping job's reports: its pace, not a synchronisation


def _redis() -> Redis:
    return Redis.from_url(os.environ["ENGINE_TEST_REDIS"])


def note(tag: str, what: str) -> None:
    _redis().rpush(f"notes:{tag}", what)


def steps(tag: str, n: int, on_progress: Reporter) -> dict[str, Any]:
    note(tag, "ran")
    for i in range(1, n + 1):
        on_progress("step", {"i": i, "of": n})
    return {"steps": n, "pid": os.getpid()}


def fails(tag: str, on_progress: Reporter) -> None:
    on_progress("step", {"i": 1})
    raise ValueError("a secret the client must not see")


def until_cancelled(tag: str, on_progress: Reporter) -> None:
    """Reports until the report raises JobCancelled."""
    note(tag, "ran")
    i = 0
    try:
        while True:
            i += 1
            on_progress("tick", {"i": i, "pid": os.getpid()})
            threading.Event().wait(PACE)
    except JobCancelled:
        note(tag, "cancelled")
        raise


def polls(tag: str, on_progress: Reporter) -> str:
    """Reports once, then only polls ``on_progress.cancelled``."""
    note(tag, "ran")
    on_progress("started", {})
    while not on_progress.cancelled:
        threading.Event().wait(PACE)
    note(tag, "saw cancelled")
    return "stopped"


def flaky(tag: str, on_progress: Reporter) -> dict[str, int]:
    """Fails on its first attempt, succeeds on the next."""
    attempt = int(_redis().incr(f"attempts:{tag}"))
    on_progress("attempt", {"n": attempt})
    if attempt == 1:
        raise ValueError("first attempt")
    return {"attempts": attempt}


def hangs(tag: str, on_progress: Reporter) -> dict[str, int]:
    """Reports its pid, then waits (for a SIGKILL from the test) on its first
    attempt only; the next attempt succeeds."""
    attempt = int(_redis().incr(f"attempts:{tag}"))
    on_progress("attempt", {"n": attempt, "pid": os.getpid()})
    if attempt == 1:
        threading.Event().wait(60)  # the test kills this process long before
    return {"attempts": attempt}


def unencodable(tag: str, on_progress: Reporter) -> object:
    return {"value": object()}


def no_progress(tag: str) -> None:
    """Not a progress job: it takes no on_progress."""
