"""The Redis log's stream entries, sans-IO: one entry per batch of events, so the
cost of a fast job is per batch, not per event.

A batch is entry ``L-0`` for a batch whose last event is ``L``, with fields ``f``
(its first id), ``d`` (the frames, joined) and ``n`` (their lengths, little-endian
uint32s). ``MINID`` keeps whole the batch that holds the first event to keep, so
each entry also says which that was when it was added (``k``), and readers skip
what is older. So trimming is by the batch: a trim by age alone (a silent job)
leaves a batch that straddles the limit whole until the next; an attempt's
retention counts its own events (an earlier attempt's go once its own fill it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["Events", "pack", "unpack"]

Events = list[tuple[int, bytes]]


def pack(events: Sequence[tuple[int, bytes]]) -> list[int | bytes]:
    """APPEND's arguments for a batch: its first id, its frames' lengths, the frames."""
    frames = [frame for _, frame in events]
    return [events[0][0], struct.pack(f"<{len(frames)}I", *map(len, frames)), b"".join(frames)]


def unpack(entries: Sequence[tuple[bytes, list[bytes]]], after: int) -> tuple[Events, int | None]:
    """The events after id ``after`` in stream entries read from the log (as
    RESP2 has them: an id, then fields and values in turn), and the terminal
    id if an end marker is among them."""
    batches = [
        (entry_id, dict(zip(pairs[::2], pairs[1::2], strict=True))) for entry_id, pairs in entries
    ]
    # The newest batch knows best what trimming keeps (a batch that trimming
    # cut into stays whole in the stream).
    for _, fields in reversed(batches):
        if b"k" in fields:
            after = max(after, int(fields[b"k"]) - 1)
            break
    events: Events = []
    end_id = None
    for entry_id, fields in batches:
        number, _, sub = entry_id.partition(b"-")
        if sub == b"1":  # the end marker
            end_id = int(number)
            continue
        event_id, data, start = int(fields[b"f"]), fields[b"d"], 0
        for size in struct.unpack(f"<{len(fields[b'n']) // 4}I", fields[b"n"]):
            if event_id > after:  # a batch may start before the cursor
                events.append((event_id, data[start : start + size]))
            event_id += 1
            start += size
    return events, end_id
