"""The event model refuses anything that could inject a field."""

from __future__ import annotations

import dataclasses

import pytest

from asgi_sse import ServerSentEvent


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n", "x\ndata: injected"])
@pytest.mark.parametrize("field", ["event", "id", "comment"])
def test_line_breaks_in_single_line_fields_are_rejected(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match=rf"The {field} field of a server-sent event must not"):
        ServerSentEvent(**{field: bad})


def test_nul_in_id_is_rejected_because_browsers_would_ignore_the_id() -> None:
    with pytest.raises(
        ValueError, match="id field of a server-sent event must not contain '\\\\x00'"
    ):
        ServerSentEvent(id="a\0b")


def test_nul_is_allowed_where_the_spec_keeps_it() -> None:
    event = ServerSentEvent(data="a\0b", event="x\0y", comment="c\0")
    assert event.event == "x\0y"


@pytest.mark.parametrize("retry", [-1, 1.5, "100", True, False])
def test_retry_must_be_a_non_negative_int(retry: object) -> None:
    with pytest.raises(ValueError, match="retry must be a non-negative int"):
        ServerSentEvent(retry=retry)  # type: ignore[arg-type]


def test_valid_fields_are_kept() -> None:
    event = ServerSentEvent(data={"a": 1}, event="update", id=7, retry=0, comment="hi")
    assert (event.data, event.event, event.id, event.retry, event.comment) == (
        {"a": 1},
        "update",
        7,
        0,
        "hi",
    )


@pytest.mark.parametrize(
    ("field", "value"), [("event", 3), ("id", 1.5), ("id", True), ("comment", b"x")]
)
def test_wrong_types_are_rejected(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        ServerSentEvent(**{field: value})


def test_events_are_immutable() -> None:
    event = ServerSentEvent(data="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "y"  # type: ignore[misc]
