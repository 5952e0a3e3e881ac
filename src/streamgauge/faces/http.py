"""HTTP plumbing shared by the faces: the JSON error shape, strict query parameters, body limits.

Error shape of the native face, asserted by ``tests/faces/test_error_shape.py``::

    {"error": {"status": 422, "code": "invalid", "message": "...",
               "details": [{"index": 3, "field": "time", "reason": "..."}]}}
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from streamgauge.errors import BadRequest, PayloadTooLarge, StreamgaugeError

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, details: list[Any]) -> Response:
    body = {"error": {"status": status, "code": code, "message": message, "details": details}}
    headers = {"WWW-Authenticate": 'Basic realm="streamgauge", Bearer'} if status == 401 else None
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


async def on_streamgauge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StreamgaugeError)
    return error_response(exc.status, exc.code, exc.message, exc.details)


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


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), [])


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
    return Response(orjson.dumps(obj), status, headers=headers, media_type="application/json")


def one_of(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))
