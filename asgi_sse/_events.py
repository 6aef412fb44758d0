"""The event model: one Server-Sent Event, validated so it can never inject fields.

Sans-IO: standard library only. Field rules follow the WHATWG "event stream
interpretation": a CR or LF in a single-line field would start a new field, and
a NUL in an id makes browsers ignore the id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ServerSentEvent"]


def _check_line(name: str, value: str, forbidden: str) -> None:
    for char in forbidden:
        if char in value:
            raise ValueError(
                f"The {name} field of a server-sent event must not contain {char!r},"
                f" got {value!r}: it would start a new field on the wire"
            )


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event, for full control over what goes on the wire.

    ``data`` that is a ``str`` is sent as text (split into one ``data:`` line per
    line); any other value is sent as JSON. ``None`` sends no ``data`` line, so an
    event that only sets ``retry`` or carries a ``comment`` dispatches nothing.
    """

    data: Any = None
    event: str | None = None
    id: str | int | None = None
    retry: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        if self.event is not None:
            if not isinstance(self.event, str):
                raise TypeError(f"event must be a str, got {type(self.event).__name__}")
            _check_line("event", self.event, "\r\n")
        if self.id is not None:
            if isinstance(self.id, bool) or not isinstance(self.id, (str, int)):
                raise TypeError(f"id must be a str or int, got {type(self.id).__name__}")
            _check_line("id", str(self.id), "\r\n\0")
        if self.comment is not None:
            if not isinstance(self.comment, str):
                raise TypeError(f"comment must be a str, got {type(self.comment).__name__}")
            _check_line("comment", self.comment, "\r\n")
        if self.retry is not None and (
            isinstance(self.retry, bool) or not isinstance(self.retry, int) or self.retry < 0
        ):
            raise ValueError(
                f"retry must be a non-negative int of milliseconds, got {self.retry!r}"
            )
