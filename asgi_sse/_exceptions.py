"""The one exception asgi-sse raises into user code."""

from __future__ import annotations

__all__ = ["JobCancelled"]


class JobCancelled(Exception):
    """Raised inside a job by ``on_progress`` once nobody is listening.

    The client left, a send timed out or the server is shutting down. It is an
    ``Exception`` so that a job's ``finally`` and ``except`` clauses run as usual;
    it is raised again on every later call, so a job that swallows it once still
    stops at its next report.
    """
