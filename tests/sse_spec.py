"""An event-stream parser transcribed from the WHATWG HTML spec, section 9.2.6.

The oracle for the encoder's tests: written from the spec, sharing no code with
asgi_sse. (httpx-sse keeps the last event id between events and so dispatches an
empty "message" after a comment; a browser does not.)
"""

from __future__ import annotations

import re

_LINE = re.compile(r"\r\n|\r|\n")


def parse_stream(raw: bytes) -> list[dict[str, str]]:
    """Events a browser's EventSource would dispatch for ``raw``."""
    text = raw.decode("utf-8", "replace").removeprefix("\ufeff")
    *lines, _unterminated = _LINE.split(text)  # a last line with no end is discarded
    events = []
    data, event_type, last_event_id = "", "", ""
    for line in lines:
        if line == "":
            if data == "":
                event_type = ""
                continue
            events.append(
                {
                    "event": event_type or "message",
                    "data": data.removesuffix("\n"),
                    "id": last_event_id,
                }
            )
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\0" not in value:
            last_event_id = value
    return events
