"""Iterables as sources: a sync iterable drained in a worker thread, an async
iterable in the event loop. Items are :class:`ServerSentEvent` objects or plain
values (``str`` as text, anything else as JSON); a sync generator's return
value is the ``completed`` event's data."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, nullcontext
from typing import Any

from anyio import CapacityLimiter, get_cancelled_exc_class, to_thread

from ._bridge import Channel
from ._encoder import Encoder
from ._events import ServerSentEvent
from ._exceptions import JobCancelled
from ._run import BaseRun, RunOptions, Source, carried, describe

__all__ = ["as_source"]


def _encode_item(encoder: Encoder, item: Any) -> bytes:
    if isinstance(item, ServerSentEvent):
        return encoder.encode(item)
    if isinstance(item, str):
        return encoder.text(item) + b"\n"
    return b"data: %b\n\n" % encoder.json(item)


class _ItemsRun(BaseRun):
    """An iterable's items as events: a sync iterable in a worker thread, an
    async one in the event loop."""

    __slots__ = ("items",)

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        channel: Channel,
        options: RunOptions,
        what: str,
    ) -> None:
        super().__init__(channel, options, what)
        self.items = items

    async def _produce(self, limiter: CapacityLimiter) -> Any:
        if isinstance(self.items, AsyncIterable):
            await self._consume(self.items)
            return None
        return await to_thread.run_sync(self._drain, self.items, limiter=limiter)

    def _drain(self, items: Iterable[Any]) -> Any:
        """Return a generator's return value, for the ``completed`` event."""
        channel, encoder = self.channel, self.options.encoder
        with carried():
            iterator = iter(items)
            try:
                while not channel.cancelled:
                    try:
                        item = next(iterator)
                    except StopIteration as stop:
                        return stop.value
                    channel.put(_encode_item(encoder, item))
                raise JobCancelled("the client is gone")
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # run the generator's finally blocks here, not at GC

    async def _consume(self, items: AsyncIterable[Any]) -> None:
        """In the event loop, the loop's own cancellation and a signal's
        ``KeyboardInterrupt`` or ``SystemExit`` must go on; any other
        ``BaseException`` is the source's."""
        channel, encoder = self.channel, self.options.encoder
        with carried(KeyboardInterrupt, SystemExit, get_cancelled_exc_class()):
            async with _aclosing(items) as each:
                async for item in each:
                    await channel.aput(_encode_item(encoder, item))


class _Items:
    """An iterable as a :class:`Source`."""

    __slots__ = ("items", "uses")

    def __init__(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        self.items = items
        # An async iterable runs in the loop: no thread, so no limiter.
        threaded = not isinstance(items, AsyncIterable)
        self.uses = frozenset({"limiter", "on_error"} if threaded else {"on_error"})

    async def open(
        self, scope: Mapping[str, Any], channel: Channel, options: RunOptions
    ) -> BaseRun:
        return _ItemsRun(self.items, channel, options, describe(self.items, scope))


def as_source(source: Any) -> Source:
    """``source`` as the protocol: a source itself, or an iterable wrapped."""
    kind = type(source)
    if hasattr(kind, "open") and hasattr(source, "uses"):
        return source  # type: ignore[no-any-return]
    if not isinstance(source, (str, bytes, bytearray, Mapping)) and isinstance(
        source, (AsyncIterable, Iterable)
    ):
        return _Items(source)  # type: ignore[return-value]
    raise TypeError(
        "source must be a Job, a resumable job's watch, an iterable or an async iterable"
        f" of events, got {kind.__name__}"
    )


def _aclosing(source: AsyncIterable[Any]) -> AbstractAsyncContextManager[AsyncIterable[Any]]:
    """Close async generators as soon as the stream ends, not when collected."""
    if hasattr(source, "aclose"):
        return aclosing(source)  # type: ignore[type-var]
    return nullcontext(source)
