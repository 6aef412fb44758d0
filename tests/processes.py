"""Servers the tests run in processes of their own (hypercorn, the example worker).

Standard library only: ``test_load`` is also the module its server process
imports, so this must not pull the test harness in with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BOUND = 10.0  # seconds, as conftest's: how long a healthy process takes to stop


@contextmanager
def stopped_at_exit(process: subprocess.Popen[bytes], stderr: Path) -> Iterator[None]:
    """SIGTERM a server's process group at the end, kill it if it hangs, and fail on
    any traceback it printed (an error the client never saw is still an error)."""
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(BOUND)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    log = stderr.read_text()
    assert "Traceback" not in log, log
