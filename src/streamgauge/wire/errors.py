"""The native error envelope, and the error malformed wire input raises.

Every error of the native face is::

    {"error": {"status": 422, "code": "invalid", "message": "...",
               "details": [{"in"?, "index"?, "field"?, "reason": "..."}]}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal",
    503: "unavailable",
}
"""The ``code`` of each status (``error`` for any other)."""


class WireError(ValueError):
    """Input that is not what the wire format allows; ``field`` names where, if known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def code_for(status: int) -> str:
    return CODES.get(status, "error")


def envelope(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The error body as a JSON-ready dict (``extra``: more keys, e.g. a 410's ``earliest``)."""
    err = {"status": status, "code": code, "message": message, "details": details}
    return {"error": {**err, **(extra or {})}}


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """An error envelope read back (by a client)."""

    status: int
    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, e.g. ``earliest``


def parse_envelope(obj: Any, status: int) -> ErrorBody:
    """The envelope in a decoded JSON body; anything else becomes an envelope of ``status``
    whose message is the body's text."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return ErrorBody(status, code_for(status), str(obj)[:500])
    details = err.get("details")
    known = {"status", "code", "message", "details"}
    return ErrorBody(
        int(err.get("status", status)) if isinstance(err.get("status"), int) else status,
        str(err.get("code", code_for(status))),
        str(err.get("message", "")),
        [d for d in details if isinstance(d, dict)] if isinstance(details, list) else [],
        {k: v for k, v in err.items() if k not in known},
    )
