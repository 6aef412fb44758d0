"""An app for the SIGTERM tests, served by hypercorn's own command line.

Its job reports until it is stopped and records how it ended in the file named
by ``ASGI_SSE_JOB_LOG``, since the test cannot look into the server process.
``?pad=N`` makes each report N bytes larger (to fill a stalled client's socket
buffers); ``ASGI_SSE_THREADS`` sizes the thread pool for many streams.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from asgi_sse import EventStreamMiddleware, JobCancelled, Reporter, progress_app

LOG = Path(os.environ.get("ASGI_SSE_JOB_LOG", os.devnull))
THREADS = int(os.environ.get("ASGI_SSE_THREADS", "40"))
_never = threading.Event()
_log_lock = threading.Lock()


def endless(on_progress: Reporter, name: str = "job", pad: int = 0) -> None:
    padding = "x" * pad
    try:
        tick = 0
        while not _never.wait(0.01):  # the job's own pace, not a synchronisation
            tick += 1
            on_progress("tick", {"n": tick, "pad": padding} if pad else {"n": tick})
    except JobCancelled:
        with _log_lock, LOG.open("a") as log:
            log.write(f"{name} cancelled\n")
        raise


app = EventStreamMiddleware(progress_app(endless), shutdown_grace=5.0, threads=THREADS)
