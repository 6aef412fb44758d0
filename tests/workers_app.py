"""``examples.resumable:app``, each response saying which worker process sent it.

For test_workers: a client that reconnects cannot otherwise tell which of a
server's worker processes took the new connection.
"""

from __future__ import annotations

import os
from typing import Any

from examples.resumable import app as resumable

PID = str(os.getpid()).encode()


async def app(scope: Any, receive: Any, send: Any) -> None:
    async def send_with_pid(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], (b"x-worker-pid", PID)]}
        await send(message)

    await resumable(scope, receive, send_with_pid if scope["type"] == "http" else send)
