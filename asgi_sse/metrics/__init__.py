"""What operators see of an app's event streams: ``EventStreamMiddleware(app,
observers=[...])`` reports every stream and job to each observer.

Two come with asgi-sse, each with its extra: :mod:`asgi_sse.metrics.prometheus`
(``pip install 'asgi-sse[prometheus]'``) and :mod:`asgi_sse.metrics.otel`
(``pip install 'asgi-sse[otel]'``). Your own subclasses :class:`Observer`.
"""

from .._observe import JobRecord, Observer, Outcome, StreamRecord

__all__ = ["JobRecord", "Observer", "Outcome", "StreamRecord"]
