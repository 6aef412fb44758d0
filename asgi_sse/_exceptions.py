"""The one exception asgi-sse raises into user code."""

from __future__ import annotations

__all__ = ["JobCancelled"]


class JobCancelled(BaseException):
    """Raised inside a job by ``on_progress`` once nobody is listening.

    The client left, a send timed out or the server is shutting down. Like
    ``asyncio.CancelledError`` since Python 3.8, it is a ``BaseException``, so
    that the ``except Exception: log and retry`` loops that blocking code is full
    of do not swallow it; ``finally`` blocks run as usual. It is raised again on
    every later call, so a job that catches it anyway still stops at its next
    report.
    """
