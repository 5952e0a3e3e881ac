"""HTTP plumbing shared by the faces: the JSON error shape, strict query parameters, body limits,
and the parsers of query values every face uses (integers, cursors, times, page tokens), so that
a bad value is the same clear 400 on every face, whatever its error shape.

Error shape of the native face, asserted by ``tests/faces/test_error_shape.py``::

    {"error": {"status": 422, "code": "invalid", "message": "...",
               "details": [{"index": 3, "field": "time", "reason": "..."}]}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from streamgauge.core.ingest import MAX_TIME, MIN_TIME, to_ms
from streamgauge.domain.errors import BadRequest, PayloadTooLarge, StreamgaugeError
from streamgauge.wire import pages
from streamgauge.wire.errors import WireError, code_for, envelope

log = logging.getLogger("streamgauge.http")


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[Any],
    extra_headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body = envelope(status, code, message, details, extra)
    headers = {"WWW-Authenticate": 'Basic realm="streamgauge", Bearer'} if status == 401 else {}
    headers.update(extra_headers or {})
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


async def on_streamgauge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StreamgaugeError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers, exc.extra)


def validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Each validation error as ``{"in"?, "index"?, "field"?, "reason"}`` (every face's shape)."""
    details = []
    for err in exc.errors():
        loc = [p for p in err.get("loc", ()) if p not in ("body",)]
        detail: dict[str, Any] = {"reason": err.get("msg", "invalid")}
        if loc and loc[0] in ("query", "path", "header"):
            detail["in"] = loc[0]
            loc = loc[1:]
        index = next((p for p in loc if isinstance(p, int)), None)
        if index is not None:
            detail["index"] = index
        fields = [str(p) for p in loc if not isinstance(p, int)]
        # Union bodies (one object or a list) prefix the model name; keep the field path only.
        fields = [f for f in fields if not f[:1].isupper() and not f.startswith("list[")]
        if fields:
            detail["field"] = ".".join(fields)
        details.append(detail)
    return details


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc)
    message = "the request does not validate"
    media = request.headers.get("content-type", "")
    if request.method in ("POST", "PUT", "PATCH") and "json" not in media:
        message += f" (the body was sent as {media or 'no content type'}; send application/json)"
    return error_response(422, "invalid", message, details)


def http_error_parts(exc: HTTPException) -> tuple[str, list[dict[str, Any]]]:
    """The message and details of an HTTPException; FastAPI's "There was an error parsing the
    body" gets its cause (nested too deeply, an integer of too many digits, ...)."""
    message = str(exc.detail)
    cause = exc.__cause__
    if cause is None or exc.status_code != 400:
        return message, []
    if isinstance(cause, RecursionError):
        reason = "JSON nested too deeply"
    elif isinstance(cause, ValueError):
        reason = str(cause).splitlines()[0][:200]
    else:
        reason = type(cause).__name__
    return f"{message}: {reason}", [{"in": "body", "reason": reason}]


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = code_for(exc.status_code)
    message, details = http_error_parts(exc)
    return error_response(exc.status_code, code, message, details)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A 500 in the error shape of the face the path belongs to (a Tapis client gets the Tapis
    envelope, not this face's shape)."""
    from streamgauge.faces.limits import face_error  # limits builds on this module

    return face_error(request.url.path, 500, "internal", f"internal error: {type(exc).__name__}")


def query_names(dependant: Dependant) -> set[str]:
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return names


class StrictRoute(APIRoute):
    """A route that rejects query parameters it does not declare (typos fail loudly)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        allowed = query_names(self.dependant) | getattr(self.endpoint, "extra_query", set())

        async def strict(request: Request) -> Response:
            unknown = sorted(set(request.query_params.keys()) - allowed)
            if unknown:
                raise BadRequest(
                    f"unknown query parameter(s): {', '.join(unknown)}",
                    [
                        {"in": "query", "field": u, "reason": "not a parameter of this endpoint"}
                        for u in unknown
                    ]
                    + [
                        {
                            "in": "query",
                            "reason": f"allowed: {', '.join(sorted(allowed)) or 'none'}",
                        }
                    ],
                )
            return await handler(request)

        return strict


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it exceeds ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the body is {length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(obj), status, headers=headers, media_type="application/json")


def dumps(obj: Any) -> bytes:
    """``obj`` as compact JSON; a value orjson cannot encode does not fail the whole reply.

    Input is validated before it is stored (``streamgauge.domain.model.check_metadata``), but a row
    stored before that check (an integer of 65 bits in ``metadata``) must not take down every
    listing that includes it: such a value is written as a string (an integer's digits), or
    null, and the rest of the reply is unchanged."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        log.warning("a reply held a value JSON cannot encode; it is sent as a string or null")
        return orjson.dumps(_encodable(obj, 0))


def _encodable(value: Any, depth: int) -> Any:
    if depth > 200:  # orjson refuses 255 levels; nothing this deep is stored any more
        return None
    if isinstance(value, dict):
        return {_encodable(k, depth) if isinstance(k, str) else str(k): _encodable(v, depth + 1)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list | tuple):
        return [_encodable(v, depth + 1) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return value
        try:
            return str(value)
        except ValueError:  # more digits than Python converts
            return None
    try:
        orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return None
    return value


def one_of(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


# -- query values, parsed the same way on every face --------------------------------------------

MAX_INT_DIGITS = 19
"""Digits of the longest integer a query value may hold (every 64-bit value fits). Longer digit
strings are refused before ``int()`` sees them: Python refuses to convert more than 4,300 digits
(a ``ValueError``), and converting long ones costs quadratic time."""


def shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters (a 5,000-digit value is
    not echoed back whole)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def parse_int(
    text: str, field: str, *, lo: int, hi: int, where: str = "query", what: str = "an integer"
) -> int:
    """An integer from ``lo`` to ``hi`` written in ASCII digits (an optional sign, at most
    ``MAX_INT_DIGITS`` digits), else a 400 naming ``field``. ``str.isdigit`` is not enough:
    ``"²"`` is a digit to it and ``int("²")`` raises."""
    body = text[1:] if text[:1] in ("-", "+") else text
    if not (0 < len(body) <= MAX_INT_DIGITS and body.isascii() and body.isdigit()):
        raise BadRequest(
            f"bad {field} {shown(text)}: expected {what} from {lo} to {hi}",
            [{"in": where, "field": field, "reason": f"expected {what} from {lo} to {hi}"}],
        )
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(
            f"{field} {value} is out of range: expected {what} from {lo} to {hi}",
            [{"in": where, "field": field, "reason": f"expected {what} from {lo} to {hi}"}],
        )
    return value


MAX_CURSOR = 2**63 - 1


def parse_cursor(text: str, field: str = "since", where: str = "query") -> int:
    """A resume cursor: a non-negative 64-bit integer."""
    return parse_int(text, field, lo=0, hi=MAX_CURSOR, where=where, what="a cursor")


def parse_time(text: str | None, field: str) -> int | None:
    """Epoch milliseconds of an RFC 3339 time (with ``Z`` or an offset) or of an integer of epoch
    milliseconds, within years 1-9999; ``None`` stays ``None``; anything else is a 400."""
    if text is None:
        return None
    body = text[1:] if text[:1] == "-" else text
    if body.isascii() and body.isdigit():
        return parse_int(text, field, lo=MIN_TIME, hi=MAX_TIME, what="epoch milliseconds")
    bad = [{"in": "query", "field": field, "reason": "expected RFC 3339 or epoch ms"}]
    if len(text) > 64 or not text.isascii():
        raise BadRequest(f"bad time {shown(text)}", bad)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"bad time {shown(text)}", bad) from exc
    if dt.tzinfo is None:
        raise BadRequest(
            f"time {shown(text)} has no timezone",
            [{"in": "query", "field": field, "reason": "add Z or an offset"}],
        )
    ms = to_ms(dt)
    if not MIN_TIME <= ms <= MAX_TIME:
        raise BadRequest(
            f"time {shown(text)} is out of range",
            [{"in": "query", "field": field, "reason": "within years 1-9999"}],
        )
    return ms


def decode_page(token: str | None, field: str = "page") -> str | None:
    """The key of a page token made by ``wire.pages.encode_page``; ``None`` stays ``None``.
    Anything that is not such a token (not base64url, not UTF-8 inside, too long) is a 400
    naming ``field``."""
    if token is None:
        return None
    try:
        return pages.decode_page(token)
    except WireError as exc:
        raise BadRequest(
            f"bad page token {shown(token)}: pass the `next` token of the previous page unchanged",
            [{"in": "query", "field": field, "reason": "not a token this server gave"}],
        ) from exc


# -- the query string itself ---------------------------------------------------------------------


def query_string_problem(raw: bytes) -> BadRequest | None:
    """Why a raw query string cannot be read as UTF-8 ``name=value`` pairs, or None if it can.

    Starlette decodes query strings leniently (an invalid byte becomes U+FFFD), so a value such
    as ``page=9r5%ED%9F%B5`` reached the handlers as other text; every face refuses it here."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest(
            "the query string is not valid UTF-8",
            [{"in": "query", "reason": "percent-encode the UTF-8 bytes of each value"}],
        )
    for part in text.replace(";", "&").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        for what, piece in (("name", name), ("value", value)):
            try:
                unquote_to_bytes(piece.replace("+", " ")).decode("utf-8")
            except UnicodeDecodeError:
                field = unquote_to_bytes(name).decode("utf-8", "replace")
                return BadRequest(
                    f"query parameter {shown(field)}: the {what} is not valid UTF-8 once "
                    "percent-decoded",
                    [
                        {
                            "in": "query",
                            "field": field,
                            "reason": f"the {what} is not valid UTF-8 once percent-decoded",
                        }
                    ],
                )
    return None


ErrorResponder = Callable[[BadRequest, str], Response]
"""Builds a face's error reply to a request (the path tells a stream from other routes)."""


def native_error(exc: BadRequest, path: str = "") -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details)


class QueryStringGuard:
    """ASGI middleware: an HTTP request whose query string is not valid UTF-8 is answered with a
    400 at once, in the error shape of the face its path belongs to (``responders``: path prefix
    and responder, first match wins; the native shape otherwise). WebSocket handshakes pass
    through: the feed reads its raw query string strictly itself."""

    def __init__(self, app: ASGIApp, responders: Sequence[tuple[str, ErrorResponder]] = ()) -> None:
        self.app = app
        self.responders = tuple(responders)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = query_string_problem(scope.get("query_string", b""))
            if problem is not None:
                path: str = scope.get("path", "")
                respond = next(
                    (r for prefix, r in self.responders if path.startswith(prefix)), native_error
                )
                await respond(problem, path)(scope, receive, send)
                return
        await self.app(scope, receive, send)
