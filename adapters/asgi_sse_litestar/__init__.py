"""Stream a blocking job's progress from a Litestar handler, as a Litestar response.

``EventStreamResponse(Job(func, ...))`` is an ordinary Litestar ``Response``:
headers, cookies, background tasks and ``after_request`` hooks work as usual,
and the app's ``type_encoders`` reach the events' JSON.
"""

from ._response import EVENT_STREAM, EventStreamResponse, StreamOptions

__all__ = ["EVENT_STREAM", "EventStreamResponse", "StreamOptions"]
