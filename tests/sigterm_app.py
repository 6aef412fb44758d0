"""An app for the SIGTERM test, served by hypercorn's own command line.

Its job reports until it is stopped and records how it ended in the file named
by ``ASGI_SSE_JOB_LOG``, since the test cannot look into the server process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from asgi_sse import EventStreamMiddleware, JobCancelled, Reporter, progress_app

LOG = Path(os.environ.get("ASGI_SSE_JOB_LOG", os.devnull))
_never = threading.Event()


def endless(on_progress: Reporter, name: str = "job") -> None:
    try:
        tick = 0
        while not _never.wait(0.01):  # the job's own pace, not a synchronisation
            tick += 1
            on_progress("tick", {"n": tick})
    except JobCancelled:
        with LOG.open("a") as log:
            log.write(f"{name} cancelled\n")
        raise


app = EventStreamMiddleware(progress_app(endless), shutdown_grace=5.0)
