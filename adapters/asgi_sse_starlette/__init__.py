"""asgi-sse for Starlette and FastAPI: an event stream that is a Starlette ``Response``.

Needs only Starlette (``asgi-sse[starlette]``); FastAPI is built on it.
"""

from ._response import EventStreamResponse, StreamOptions

__all__ = ["EventStreamResponse", "StreamOptions"]
