"""Events to bytes: JSON through one reused msgspec encoder, then SSE framing.

Sans-IO: standard library and msgspec only. The wire format is defined here and
nowhere else, so every transport (ASGI, a test, a benchmark) emits the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from ._events import ServerSentEvent

__all__ = ["HEARTBEAT", "Encoder"]

#: A comment line: browsers ignore it, proxies see traffic and keep the connection.
HEARTBEAT = b": ping\n\n"

# WHATWG: lines end with CRLF, LF or CR, and nothing else. str.splitlines would
# also split on U+2028, U+0085, form feed and friends, which browsers keep.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _to_scalar_values(value: str) -> str:
    """Replace lone surrogates with U+FFFD, as a browser's TextEncoder does.

    UTF-8 cannot carry them; a valid pair (two code points) becomes the one
    character it stands for.
    """
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _to_scalar_values(text).encode()


def _map_strings(value: Any, convert: Callable[[str], str]) -> Any:
    """Apply ``convert`` to every string in builtins-only data, keys included."""
    if isinstance(value, str):
        return convert(value)
    if isinstance(value, dict):
        return {
            convert(k) if isinstance(k, str) else k: _map_strings(v, convert)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, convert) for v in value]
    return value


def _load_unidecode() -> Callable[[str], str]:
    try:
        from unidecode import unidecode  # noqa: PLC0415 (optional, GPL: only on request)
    except ImportError:
        raise ImportError(
            "transliterate=True needs the unidecode package (GPL-licensed, so it is"
            " optional): pip install 'asgi-sse[unidecode]'"
        ) from None
    return unidecode


class Encoder:
    """Turns events into spec-correct SSE bytes; create one and reuse it.

    Values msgspec cannot encode go to ``enc_hook`` first (if given) and then fall
    back to ``str(value)``, so a ``Decimal`` or a custom object in a progress
    payload never kills a stream. Output is raw UTF-8 (``café`` stays ``café``);
    NaN and infinities become ``null``, the only JSON for them; lone surrogates
    become U+FFFD. ``transliterate=True`` turns every string of the data, keys
    included, into ASCII with unidecode, for consumers that cannot take anything
    else; event names, ids and comments are left alone, since clients match on them.
    """

    __slots__ = ("_enc_hook", "_json", "_transliterate", "fast_json")

    def __init__(
        self,
        *,
        transliterate: bool = False,
        enc_hook: Callable[[Any], Any] | None = None,
    ) -> None:
        self._enc_hook = enc_hook
        self._transliterate = _load_unidecode() if transliterate else None
        self._json = msgspec.json.Encoder(enc_hook=self._fallback)
        #: For the hot path: msgspec's own ``encode`` when there is nothing to
        #: transliterate. It may raise where :meth:`json` takes its slow path
        #: (a lone surrogate), so a caller falls back to :meth:`json` on error.
        self.fast_json: Callable[[Any], bytes] = (
            self._json.encode if self._transliterate is None else self.json
        )

    def _fallback(self, value: Any) -> Any:
        if self._enc_hook is not None:
            try:
                encoded = self._enc_hook(value)
            except (NotImplementedError, TypeError):
                pass  # the hook does not know it either
            else:
                if type(encoded) is not type(value):  # same type back: it did not know
                    return encoded
        kind: Any = type(value)
        if kind.__str__ is object.__str__ and kind.__repr__ is object.__repr__:
            # Its str() would be "<Foo object at 0x7f...>": no text, and an
            # address that helps an attacker.
            raise TypeError(
                f"Cannot encode a {kind.__name__}: it is not JSON-serializable and has"
                " no str() of its own (give it one, or an enc_hook)"
            )
        try:
            text = str(value)
        except Exception as exc:
            raise TypeError(
                f"Cannot encode a {kind.__name__}: it is not JSON-serializable"
                f" and str() raised {type(exc).__name__}"
            ) from exc
        return text

    def json(self, value: Any) -> bytes:
        """Encode ``value`` as compact JSON (always a single line).

        Raises ``TypeError`` for a value with no JSON form and no ``str()`` of
        its own, ``ValueError`` for one that contains itself or nests deeper
        than the interpreter's recursion limit."""
        try:
            return self._encode(value)
        except RecursionError:
            raise ValueError(
                "Cannot encode a value that contains itself, or nests deeper than"
                " the recursion limit"
            ) from None

    def _encode(self, value: Any) -> bytes:
        if self._transliterate is None:
            try:
                return self._json.encode(value)
            except UnicodeEncodeError:
                pass  # a lone surrogate somewhere: take the slow path
        # Builtins first, so that every string (struct fields, str() fallbacks,
        # keys) is reached.
        builtins = msgspec.to_builtins(value, enc_hook=self._fallback, str_keys=True)
        return self._json.encode(_map_strings(builtins, self._clean))

    def _clean(self, text: str) -> str:
        text = _to_scalar_values(text)
        return text if self._transliterate is None else self._transliterate(text)

    def text(self, value: str) -> bytes:
        """Encode text data as ``data:`` lines, one per line of ``value``."""
        if self._transliterate is not None:
            value = self._transliterate(value)
        if "\r" in value or "\n" in value:
            return b"".join(b"data: %b\n" % _utf8(line) for line in _LINE_BREAK.split(value))
        return b"data: %b\n" % _utf8(value)

    def encode(self, event: ServerSentEvent) -> bytes:
        """Frame one event; validation already happened when it was built."""
        parts = []
        if event.comment is not None:
            parts.append(b": %b\n" % _utf8(event.comment))
        if event.event is not None:
            parts.append(b"event: %b\n" % _utf8(event.event))
        if event.id is not None:
            parts.append(b"id: %b\n" % _utf8(str(event.id)))
        if event.retry is not None:
            parts.append(b"retry: %d\n" % event.retry)
        if isinstance(event.data, str):
            parts.append(self.text(event.data))
        elif event.data is not None:
            parts.append(b"data: %b\n" % self.json(event.data))
        parts.append(b"\n")
        return b"".join(parts)

    def message(self, event: str, id: int | None, data: Any) -> bytes:
        """An event asgi-sse makes itself: one of its own names, JSON data."""
        if id is None:
            return b"event: %b\ndata: %b\n\n" % (event.encode(), self.json(data))
        return self.numbered(event) % (id, self.json(data))

    @staticmethod
    def numbered(event: str) -> bytes:
        """The frame of an asgi-sse event as a template: ``template % (id, json)``.

        For the hot path, which numbers events where their order is decided.
        """
        return b"event: %b\nid: %%d\ndata: %%b\n\n" % event.encode()
