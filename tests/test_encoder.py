"""The wire format: framing per the WHATWG spec, JSON through msgspec, and its fallbacks."""

from __future__ import annotations

import datetime
import decimal
import sys
import uuid

import msgspec
import pytest
from conftest import parse
from hypothesis import given
from hypothesis import strategies as st

from asgi_sse import Encoder, ServerSentEvent
from asgi_sse._encoder import HEARTBEAT

encoder = Encoder()


def frame(**fields: object) -> bytes:
    return encoder.encode(ServerSentEvent(**fields))  # type: ignore[arg-type]


def test_text_data_is_split_on_crlf_lf_and_cr_only() -> None:
    text = "a\r\nb\nc\rd\u2028e\u2029f\x85g\x0bh\x0ci"
    assert frame(data=text) == (
        b"data: a\ndata: b\ndata: c\ndata: d\xe2\x80\xa8e\xe2\x80\xa9f\xc2\x85g\x0bh\x0ci\n\n"
    )


def test_empty_string_still_sends_one_data_line() -> None:
    assert frame(data="") == b"data: \n\n"
    assert parse(frame(data="")) == [{"event": "message", "data": "", "id": ""}]


def test_leading_spaces_survive_because_data_lines_keep_their_space() -> None:
    assert parse(frame(data="  two\n three")) == [
        {"event": "message", "data": "  two\n three", "id": ""}
    ]


def test_all_fields_in_order_with_a_blank_line_after() -> None:
    assert frame(data="x", event="update", id=3, retry=2500, comment="note") == (
        b": note\nevent: update\nid: 3\nretry: 2500\ndata: x\n\n"
    )


def test_no_data_sends_no_data_line() -> None:
    assert frame(retry=10) == b"retry: 10\n\n"
    assert parse(frame(comment="only a comment")) == []


def test_json_data_is_one_line_of_raw_utf8() -> None:
    assert frame(data={"name": "café", "text": "a\nb\r\0"}) == (
        b'data: {"name":"caf\xc3\xa9","text":"a\\nb\\r\\u0000"}\n\n'
    )


def test_message_is_the_hot_path_for_our_own_events() -> None:
    assert encoder.message("progress", 12, {"step": "é"}) == (
        b'event: progress\nid: 12\ndata: {"step":"\xc3\xa9"}\n\n'
    )
    assert encoder.message("completed", None, None) == b"event: completed\ndata: null\n\n"


def test_heartbeat_is_a_comment_that_dispatches_nothing() -> None:
    assert parse(HEARTBEAT) == []


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_unknown_values_fall_back_to_str_and_known_ones_keep_their_format() -> None:
    value = {
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "id": uuid.UUID(int=1),
        "price": decimal.Decimal("1.10"),
        "tags": {"a"},
        "obj": Opaque(),
        "exc": ValueError("bad thing"),
        Opaque(): "custom key",
        (1, 2): "tuple key",
    }
    assert msgspec.json.decode(encoder.json(value)) == {
        "when": "2026-01-02T03:04:05Z",
        "id": "00000000-0000-0000-0000-000000000001",
        "price": "1.10",
        "tags": ["a"],
        "obj": "opaque!",
        "exc": "bad thing",
        "opaque!": "custom key",
        "(1, 2)": "tuple key",
    }


def test_enc_hook_comes_before_the_str_fallback() -> None:
    def hook(value: object) -> object:
        if isinstance(value, Opaque):
            return {"opaque": True}
        raise NotImplementedError

    hooked = Encoder(enc_hook=hook)
    assert hooked.json([Opaque(), ValueError("x")]) == b'[{"opaque":true},"x"]'


def test_a_hook_that_hands_back_what_it_got_falls_back_to_str() -> None:
    assert Encoder(enc_hook=lambda value: value).json([Opaque()]) == b'["opaque!"]'


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_a_value_that_cannot_even_be_str_gets_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="Cannot encode a Unprintable"):
        encoder.json({"x": Unprintable()})


def test_nan_and_infinities_become_null() -> None:
    assert encoder.json([float("nan"), float("inf"), -float("inf")]) == b"[null,null,null]"


def test_lone_surrogates_become_replacement_characters() -> None:
    assert encoder.json({"k\ud800": "a\udfffb"}) == '{"k\ufffd":"a\ufffdb"}'.encode()
    assert frame(data="x\ud800") == "data: x\ufffd\n\n".encode()
    assert frame(event="e\ud800", data="") == "event: e\ufffd\ndata: \n\n".encode()


def test_a_surrogate_pair_becomes_the_character_it_stands_for() -> None:
    assert frame(data="\ud83d\ude00") == "data: \U0001f600\n\n".encode()


translit = Encoder(transliterate=True)


class Point(msgspec.Struct):
    label: str


def test_transliteration_reaches_every_string_keys_included() -> None:
    value = {"café": ["naïve", {"Ærø": ("Straße",)}], "p": Point("北京"), "o": OpaqueAccent()}
    assert msgspec.json.decode(translit.json(value)) == {
        "cafe": ["naive", {"AEro": ["Strasse"]}],
        "p": {"label": "Bei Jing "},
        "o": "resume",
    }


class OpaqueAccent:
    def __str__(self) -> str:
        return "résumé"


def test_transliteration_keeps_json_valid_when_it_makes_quotes() -> None:
    encoded = translit.json({"“quoted”": "«x» \\ ”"})
    assert encoded.isascii()
    assert msgspec.json.decode(encoded) == {'"quoted"': '<<x>> \\ "'}


def test_transliteration_applies_to_text_data_but_not_to_names_clients_match_on() -> None:
    assert translit.encode(ServerSentEvent(data="Crème\nbrûlée", event="étape")) == (
        "event: étape\n".encode() + b"data: Creme\ndata: brulee\n\n"
    )


def test_transliteration_without_unidecode_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "unidecode", None)
    with pytest.raises(ImportError, match=r"pip install 'asgi-sse\[unidecode\]'"):
        Encoder(transliterate=True)


def normalise(text: str) -> str:
    """What a conforming parser gives back: line endings as LF, scalar values only."""
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


@given(st.text())
def test_any_text_round_trips_through_an_independent_parser(text: str) -> None:
    assert parse(frame(data=text)) == [{"event": "message", "data": normalise(text), "id": ""}]


scalar_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | scalar_text,
    lambda inner: st.lists(inner) | st.dictionaries(scalar_text, inner),
    max_leaves=20,
)


@given(
    json_values.filter(lambda v: not isinstance(v, (str, type(None)))),
    st.text().filter(lambda s: "\r" not in s and "\n" not in s),
)
def test_any_json_value_round_trips_as_one_event(value: object, name: str) -> None:
    """Top-level str goes as text and None as no data line: both tested above."""
    events = parse(frame(data=value, event=name or None))
    assert len(events) == 1
    assert events[0]["event"] == normalise(name or "message")
    assert msgspec.json.decode(events[0]["data"]) == value
