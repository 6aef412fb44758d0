"""Server-Sent Events of blocking work's progress from Quart handlers.

Return :class:`EventStreamResponse` from a handler::

    @app.get("/progress")
    async def progress() -> EventStreamResponse:
        return EventStreamResponse(Job(pipeline, request.args["text"]), heartbeat=10)
"""

from ._response import EventStreamResponse

__all__ = ["EventStreamResponse"]
