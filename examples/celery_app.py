"""The Celery side of the distributed example: one blocking function, made a
progress task. Both sides import this module: the worker runs the task, the web
app (``examples/distributed.py``) sends it.

    REDIS_URL=redis://127.0.0.1:6379/0 celery -A examples.celery_app worker
"""

from __future__ import annotations

import os
import time

from celery import Celery

from asgi_sse import Reporter
from asgi_sse.resumable.celery import progress_task

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("reports", broker=REDIS_URL, backend=REDIS_URL)
# One task at a time per worker process, so the line waiting in Redis is real (``queued``).
app.conf.worker_prefetch_multiplier = 1
PAGE_SECONDS = float(os.environ.get("PAGE_SECONDS", "0.3"))


# Acknowledged when done, and sent again if its worker process dies: the job goes on,
# and its watchers see a ``retrying`` event, then the next attempt's pages.
@progress_task(app, acks_late=True, reject_on_worker_lost=True)
def build_report(pages: int, on_progress: Reporter) -> dict[str, int]:
    for page in range(1, pages + 1):
        time.sleep(PAGE_SECONDS)  # stands in for real, blocking work
        on_progress("page", {"page": page, "of": pages, "pid": os.getpid()})
    return {"pages": pages}
