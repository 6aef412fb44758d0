"""The messages of an event stream, as a test reads them (sans-IO): one block's
fields by the WHATWG rules, and the errors a test fails with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["EventStreamClosed", "ServerSentMessage", "StreamTimeout", "parse_block"]


class StreamTimeout(AssertionError):
    """Nothing came within the bound (an ``AssertionError``: a test fails on it)."""


class EventStreamClosed(AssertionError):
    """The response ended before the message the test waited for."""


@dataclass(frozen=True)
class ServerSentMessage:
    """One message block, as the app sent it. ``event`` is None for a block that a
    browser would not dispatch (comments only, a heartbeat; or only ``retry``)."""

    event: str | None
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()

    def json(self) -> Any:
        return json.loads(self.data)


def parse_block(block: str) -> ServerSentMessage:
    """One block's fields, by the WHATWG rules (a field without a colon is its
    name with an empty value; one space after the colon is dropped)."""
    event, data, last_id, retry, comments = "", [], None, None, []
    for line in block.split("\n"):  # (not splitlines: U+2028 and friends are data)
        if line.startswith(":"):
            comments.append(line[1:].removeprefix(" "))
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    dispatched = (event or "message") if data else None
    return ServerSentMessage(dispatched, "\n".join(data), last_id, retry, tuple(comments))
