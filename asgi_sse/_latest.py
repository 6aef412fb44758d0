"""Coalescing, sans-IO: the places of a batch's keyed chunks, to keep the latest per key.

A superseded chunk is emptied in place rather than removed: removing would
shift every later place (a batch of a stalled client's events is long), and an
empty chunk sends nothing. Compacting drops the empty places now and then, so
a long stall holds one place per key, not one per superseded chunk.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Latest", "progress_step"]

_PROGRESS = b"event: progress\n"


class _Step(msgspec.Struct):
    step: Any = None


_step_of = msgspec.json.Decoder(_Step).decode


def progress_step(frame: bytes) -> str | None:
    """The key of an encoded ``progress`` event, its step; None for any other
    frame. A watch's events come from a log already encoded, so their steps are
    read back from their data (the only ``data:`` line: JSON has no newline)."""
    if not frame.startswith(_PROGRESS):
        return None
    start = frame.find(b"\ndata: ") + 7
    try:
        step = _step_of(frame[start : frame.index(b"\n", start)]).step
    except (ValueError, msgspec.DecodeError):  # not asgi-sse's own progress event
        return None
    return step if isinstance(step, str) else None  # not a str (as typed): kept, not keyed


class Latest:
    """Where each key's unsent chunk is in the batch, and how many places are empty."""

    __slots__ = ("holes", "places")

    def __init__(self) -> None:
        self.places: dict[str, int] = {}
        self.holes = 0

    def supersede(self, batch: list[bytes], key: str) -> int:
        """Empty ``key``'s unsent chunk, if any (its new one goes in at the end,
        so the order of the rest, and of the ids, stays); the bytes freed."""
        place = self.places.get(key)
        if place is None:
            return 0
        freed = len(batch[place])
        batch[place] = b""
        self.holes += 1
        if self.holes > 64 and 2 * self.holes > len(batch):
            self._compact(batch)
        return freed

    def _compact(self, batch: list[bytes]) -> None:
        moved: dict[int, int] = {}
        kept: list[bytes] = []
        for place, chunk in enumerate(batch):
            if chunk:
                moved[place] = len(kept)
                kept.append(chunk)
        batch[:] = kept
        self.places = {key: moved[p] for key, p in self.places.items() if p in moved}
        self.holes = 0

    def sent(self, batch: list[bytes]) -> list[bytes]:
        """The batch as it leaves: nothing in it can be superseded any more."""
        self.places = {}
        if not self.holes:
            return batch
        self.holes = 0
        return [chunk for chunk in batch if chunk]
