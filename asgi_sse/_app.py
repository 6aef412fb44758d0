"""One call from a blocking function to a complete ASGI app.

The request's arguments are checked against the function's signature, with
msgspec, before any stream starts: a bad request gets a 4xx with a JSON body
that says what is wrong, never a 200 stream that ends in an ``error`` event.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from ._http import ASGIApp, Receive, Refusal, Scope, Send, answer_lifespan, error_response
from ._jobs import Job
from ._response import EventStream

__all__ = ["progress_app"]

#: Largest JSON body accepted, in bytes: arguments, not uploads.
MAX_BODY = 64 * 1024


def _arguments_type(func: Callable[..., Any]) -> tuple[type[msgspec.Struct], frozenset[str]]:
    """A msgspec Struct of ``func``'s parameters but ``on_progress``, and the names
    that take a list (repeated in a query string)."""
    hints = typing.get_type_hints(func)
    fields: list[tuple[str, Any, Any]] = []
    many = set()
    parameters = inspect.signature(func).parameters
    if "on_progress" not in parameters:
        raise TypeError(f"{func.__qualname__} must take an on_progress keyword argument")
    for name, param in parameters.items():
        if name == "on_progress" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"progress_app passes arguments by name; {name!r} is positional-only")
        hint = hints.get(name, Any)
        if _takes_many(hint):
            many.add(name)
        default = msgspec.NODEFAULT if param.default is param.empty else param.default
        fields.append((name, hint, default))
    struct = msgspec.defstruct(
        f"{getattr(func, '__name__', 'job')}_arguments",
        fields,
        kw_only=True,
        forbid_unknown_fields=True,
    )
    return struct, frozenset(many)


def _takes_many(hint: Any) -> bool:
    """Whether repeated query keys fill a parameter: a sequence, or an optional one."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for arm in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(arm) or arm
        if isinstance(origin, type) and issubclass(origin, (list, tuple, set, frozenset)):
            return True
    return False


def progress_app(
    func: Callable[..., Any],
    /,
    **stream_options: Any,
) -> ASGIApp:
    """An ASGI app that streams ``func``'s progress for each request.

    Arguments come from the query string of a ``GET`` or from the JSON object
    body of a ``POST``, by parameter name, converted to the parameters' type
    annotations. Unknown, missing or ill-typed arguments get a 422, a malformed
    body a 400, before any stream starts. ``stream_options`` go to
    :class:`EventStream` (``heartbeat=``, ``encoder=``...). Mount the app under
    any framework's mount point, or serve it alone: it answers lifespan too.
    """
    arguments, many = _arguments_type(func)
    if inspect.iscoroutinefunction(func):
        raise TypeError(f"{func.__qualname__} is async: progress_app runs blocking functions")
    # Check the options once, too, for a job (as every request streams one);
    # HEAD gets these headers and no job.
    stream_headers = EventStream(Job(_nothing), **stream_options).headers
    json_decoder = msgspec.json.Decoder(arguments)

    def from_query(query: bytes) -> msgspec.Struct:
        # Strictly UTF-8, raw or percent-encoded, as a JSON body must be: no
        # job gets mojibake or U+FFFD for what the client meant.
        try:
            pairs = parse_qsl(query.decode(), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise msgspec.DecodeError("the query string is not valid UTF-8") from None
        values: dict[str, Any] = {}
        for name, value in pairs:
            if name in many:
                values.setdefault(name, []).append(value)
            elif name in values:
                raise msgspec.ValidationError(f"`{name}` is given more than once")
            else:
                values[name] = value
        return msgspec.convert(values, arguments, strict=False)

    def from_body(body: bytes) -> msgspec.Struct:
        try:
            return json_decoder.decode(body)
        except msgspec.ValidationError:
            raise
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            # msgspec raises the last two for invalid UTF-8 in a string and for
            # nesting deeper than the interpreter allows: malformed all the same.
            raise msgspec.DecodeError(f"malformed JSON body: {exc}") from exc

    async def request_arguments(scope: Scope, receive: Receive) -> msgspec.Struct | Refusal | None:
        """The job's arguments, or the 4xx to answer, or None if the client left."""
        method = scope["method"]
        if method not in ("GET", "HEAD", "POST"):
            return error_response(
                405, "MethodNotAllowed", [("allow", "GET, POST")], detail=f"{method} is not allowed"
            )
        try:
            if method != "POST":
                return from_query(scope.get("query_string", b""))
            body = await _read_json_body(scope, receive)
            return body if body is None or isinstance(body, Refusal) else from_body(body)
        except msgspec.ValidationError as exc:
            return error_response(422, "InvalidArguments", detail=str(exc))
        except msgspec.DecodeError as exc:
            return error_response(400, "MalformedRequest", detail=str(exc))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"progress_app serves HTTP requests, not {scope['type']!r}")
        args = await request_arguments(scope, receive)
        if args is None:
            return  # the client left
        if isinstance(args, Refusal):
            await args(scope, receive, send)
        elif scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": 200, "headers": stream_headers})
            await send({"type": "http.response.body", "body": b""})
        else:
            kwargs = {name: getattr(args, name) for name in args.__struct_fields__}
            await EventStream(Job(func, **kwargs), **stream_options)(scope, receive, send)

    return app


async def _read_json_body(scope: Scope, receive: Receive) -> bytes | Refusal | None:
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
    if content_type.split(b";")[0].strip().lower() != b"application/json":
        return error_response(
            415,
            "UnsupportedMediaType",
            detail="send the arguments as a JSON object (content-type: application/json)",
        )
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            return error_response(
                413, "BodyTooLarge", detail=f"the body is larger than {MAX_BODY} bytes"
            )
        if not message.get("more_body", False):
            return bytes(body)


def _nothing(on_progress: object) -> None:
    """A job to check ``progress_app``'s stream options against."""
