"""A test client for event streams that never end: events as they are sent.

httpx's ``ASGITransport`` reads the whole body before it returns, so a test of an
endless stream hangs. This client drives any ASGI app in process and hands each
message block over as the app sends it; leaving the block (or the ``with``)
sends ``http.disconnect``, as a browser that goes away would, and waits, within
the bound, for the app to return, so the job behind the stream is seen to stop.
Every wait is bounded by ``timeout``: a stream that goes quiet fails the test
with a message that says what came last, never hangs it.

Works for any SSE endpoint (asgi-sse's, sse-starlette's, Litestar's), on asyncio
and trio. ``aconnect`` is for async tests; ``connect`` runs the app on an event
loop in a thread of its own, for plain pytest with no plugin.
"""

from ._client import TestStream, aconnect
from ._messages import EventStreamClosed, ServerSentMessage, StreamTimeout, parse_block
from ._sync import SyncTestStream, connect

__all__ = [
    "EventStreamClosed",
    "ServerSentMessage",
    "StreamTimeout",
    "SyncTestStream",
    "TestStream",
    "aconnect",
    "connect",
    "parse_block",
]
