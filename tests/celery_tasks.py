"""The Celery app of the engine tests: ``engine_tasks``' functions as progress
tasks, for real ``celery worker`` processes (prefork and threads pools) and for
the web app that sends them (``engines_app``)."""

from __future__ import annotations

import os

import engine_tasks
from celery import Celery

from asgi_sse.resumable.celery import progress_task

URL = os.environ["ENGINE_TEST_REDIS"]

app = Celery("engine_tests", broker=URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_prefetch_multiplier = 1  # a worker takes one task at a time: queue places are real

steps = progress_task(app)(engine_tasks.steps)
fails = progress_task(app)(engine_tasks.fails)
until_cancelled = progress_task(app)(engine_tasks.until_cancelled)
polls = progress_task(app)(engine_tasks.polls)
unencodable = progress_task(app)(engine_tasks.unencodable)
flaky = progress_task(app, autoretry_for=(ValueError,), max_retries=1, default_retry_delay=0)(
    engine_tasks.flaky
)
# Retried by Celery for anything it raises, JobCancelled (a BaseException) too:
# a cancel still ends it.
until_cancelled_retried = progress_task(
    app, name="until_cancelled_retried", autoretry_for=(BaseException,), default_retry_delay=0
)(engine_tasks.until_cancelled)
# Its limit in retry_kwargs, below the task's max_retries (3): retried once, then failed.
fails_retried = progress_task(
    app,
    name="fails_retried",
    autoretry_for=(ValueError,),
    retry_kwargs={"max_retries": 1},
    default_retry_delay=0,
)(engine_tasks.fails)
# Killed mid-job: lost to its watchers; or, acknowledged late and rejected when its
# worker process is lost, delivered again.
hangs = progress_task(app)(engine_tasks.hangs)
hangs_redelivered = progress_task(
    app, name="hangs_redelivered", acks_late=True, reject_on_worker_lost=True
)(engine_tasks.hangs)


@app.task
def no_progress(tag: str) -> None:
    """A Celery task, but not a progress task."""
