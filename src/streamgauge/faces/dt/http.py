"""HTTP plumbing of the DT face: its error shapes, query parameters, paging.

Two error shapes, each asserted by ``tests/test_dt_errors.py``:

* every non-stream reply: ``{"error": "<summary>", "code": <status>, "help": "<url>"}`` (DT's
  documented shape; the SDK reads only the status);
* every stream error: one line ``{"error": {"code", "message", "details": [{"help"}]}}`` sent with
  the same status (the SDK reads the line, never the status).

``DTRoute`` turns every exception escaping a handler into the non-stream shape, so no handler of
this face answers in the native face's shape or with a bare 500 page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from streamgauge.domain.errors import BadRequest, StreamgaugeError
from streamgauge.faces.dt.events import dumps_ascii
from streamgauge.faces.http import parse_int, read_body

log = logging.getLogger("streamgauge.dt")
HELP = "https://developer.disruptive-technologies.com/docs/error-codes"
SUMMARIES = {
    400: "invalid argument",
    401: "unauthenticated",
    403: "permission denied",
    404: "not found",
    405: "method not allowed",
    409: "already exists",
    413: "payload too large",
    422: "invalid argument",
    429: "resource exhausted",
    500: "internal error",
    503: "unavailable",
}


def _message(exc: StreamgaugeError) -> str:
    reasons = [
        "; ".join(f"{k}: {v}" for k, v in d.items() if k != "reason") + f" ({d['reason']})"
        if len(d) > 1
        else str(d.get("reason", ""))
        for d in exc.details[:5]
        if "reason" in d
    ]
    return exc.message + (": " + "; ".join(reasons) if reasons else "")


def status_of(exc: StreamgaugeError) -> int:
    """DT has no 422: a well-formed but unacceptable request is its 400 (invalid argument)."""
    return 400 if exc.status == 422 else exc.status


def error_response(status: int, message: str, extra: dict[str, str] | None = None) -> Response:
    body = {"error": message, "code": status, "help": HELP}
    headers = {"WWW-Authenticate": 'Basic realm="streamgauge", Bearer'} if status == 401 else {}
    headers.update(extra or {})
    return Response(dumps_ascii(body), status, headers=headers, media_type="application/json")


def error_headers(exc: Exception) -> dict[str, str]:
    """Headers an error asks for (``Retry-After`` of a 429: DT sends 429 only with it)."""
    return exc.headers if isinstance(exc, StreamgaugeError) else {}


def stream_error_line(status: int, message: str) -> bytes:
    """One NDJSON error line. Never 200 or 429 (both crash the SDK's stream reader)."""
    code = 500 if status in (200, 429) or status < 100 else status
    obj = {"error": {"code": code, "message": message, "details": [{"help": HELP}]}}
    return dumps_ascii(obj) + b"\n"


def bad_request_response(exc: BadRequest, path: str) -> Response:
    """A refused request before routing, in DT's shape: a stream's error line on a stream path,
    else the non-stream shape (used by the shared query-string check)."""
    status, message = status_of(exc), _message(exc)
    if path.endswith(":stream"):
        return Response(stream_error_line(status, message), status, media_type="application/json")
    return error_response(status, message)


def to_dt_error(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, StreamgaugeError):
        return status_of(exc), _message(exc)
    if isinstance(exc, RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return 400, "the request does not validate: " + "; ".join(parts)
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    log.exception("unexpected error in the DT face", exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}"


class DTRoute(APIRoute):
    """Every error of a DT handler in DT's non-stream shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every error gets the DT shape
                status, message = to_dt_error(exc)
                return error_response(status, message, error_headers(exc))

        return run


def json_response(obj: Any) -> Response:
    """200 with compact JSON (DT answers 200 to creates and deletes too)."""
    return Response(dumps_ascii(obj), 200, media_type="application/json")


# -- query parameters -------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class Query:
    """The query string of a DT request: snake_case and camelCase spellings of each name,
    repeated keys, and nothing else (an unknown name is a 400 naming it)."""

    def __init__(self, request: Request, names: Iterable[str]) -> None:
        known = {}
        for n in names:
            known[n] = n
            known[_camel(n)] = n
        self.values: dict[str, list[str]] = {}
        unknown = []
        for key, value in request.query_params.multi_items():
            name = known.get(key)
            if name is None:
                unknown.append(key)
            else:
                self.values.setdefault(name, []).append(value)
        if unknown:
            allowed = ", ".join(sorted(set(known.values())))
            raise BadRequest(
                f"unknown query parameter(s) {', '.join(sorted(set(unknown)))}; "
                f"this endpoint takes {allowed or 'none'} (snake_case or camelCase)",
                [{"in": "query", "field": u, "reason": "not a parameter"} for u in unknown],
            )

    def all(self, name: str) -> list[str]:
        return self.values.get(name, [])

    def one(self, name: str) -> str | None:
        got = self.values.get(name)
        if not got:
            return None
        if len(got) > 1:
            raise BadRequest(f"query parameter {name} given {len(got)} times; give it once")
        return got[0]

    def fingerprint(self, exclude: Sequence[str] = ("page_token", "page_size")) -> str:
        """What a page token is bound to: the query without its paging."""
        items = sorted((k, v) for k, vs in self.values.items() if k not in exclude for v in vs)
        return hashlib.sha256(orjson.dumps(items)).hexdigest()[:16]


def page_size(q: Query, default: int, maximum: int) -> int:
    text = q.one("page_size")
    if text is None:
        return default
    return parse_int(text, "pageSize", lo=1, hi=maximum)


def encode_token(fingerprint: str, key: Any) -> str:
    raw = orjson.dumps({"q": fingerprint, "k": key})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(q: Query, fingerprint: str) -> Any:
    """The key a page token holds, or None without a token; 400 for a token of another query."""
    token = q.one("page_token")
    if not token:
        return None
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raw = None
    if not isinstance(raw, dict) or raw.get("q") != fingerprint or "k" not in raw:
        raise BadRequest(
            "bad pageToken: not a token this query returned",
            [{"in": "query", "field": "pageToken", "reason": "pass nextPageToken unchanged"}],
        )
    return raw["k"]


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not a {type(body).__name__}")
    return body
