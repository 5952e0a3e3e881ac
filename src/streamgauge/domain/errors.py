"""One exception tree for the engine; faces translate it into their own error shape.

    StreamgaugeError                 status  code
     +-- BadRequest                   400     bad_request      malformed body, bad query
     |    +-- Invalid                 422     invalid          well-formed but not acceptable
     +-- Unauthorized                 401     unauthorized     missing or bad credential
     +-- Forbidden                    403     forbidden        role does not allow it
     +-- NotFound                     404     not_found
     +-- Conflict                     409     conflict         id taken, conflicting duplicate
     +-- Gone                         410     gone             resume cursor older than kept
     +-- PayloadTooLarge              413     too_large
     +-- TooManyRequests              429     too_many_requests  (with Retry-After)
     +-- Unavailable                  503     unavailable      shutting down, store unreachable
                                                                (Retry-After when given)

Each error carries ``details``: a list of ``{"index"?, "field"?, "reason"}`` dicts saying what and
where, so a client can point at the bad row, field or parameter.
"""

from __future__ import annotations

from typing import Any

Detail = dict[str, Any]


class StreamgaugeError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, details: list[Detail] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[Detail] = details or []

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers every face sends with this error (``Retry-After`` of a 429)."""
        return {}

    @property
    def extra(self) -> dict[str, Any]:
        """More keys of the error object (``earliest`` of a 410)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }


class BadRequest(StreamgaugeError):
    status = 400
    code = "bad_request"


class Invalid(BadRequest):
    status = 422
    code = "invalid"


class Unauthorized(StreamgaugeError):
    status = 401
    code = "unauthorized"


class Forbidden(StreamgaugeError):
    status = 403
    code = "forbidden"


class NotFound(StreamgaugeError):
    status = 404
    code = "not_found"


class Conflict(StreamgaugeError):
    status = 409
    code = "conflict"


class Gone(StreamgaugeError):
    """A resume cursor older than what retention keeps: rows after it were removed. ``earliest``
    is the cursor of the earliest kept observation (resume with ``since=earliest - 1``, or ask
    ``on_gap=earliest``)."""

    status = 410
    code = "gone"

    def __init__(self, message: str, earliest: int, details: list[Detail] | None = None) -> None:
        super().__init__(message, details)
        self.earliest = earliest

    @property
    def extra(self) -> dict[str, Any]:
        return {"earliest": self.earliest}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "earliest": self.earliest}


class PayloadTooLarge(StreamgaugeError):
    status = 413
    code = "too_large"


class TooManyRequests(StreamgaugeError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int, details: list[Detail] | None = None) -> None:
        super().__init__(message, details)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(StreamgaugeError):
    status = 503
    code = "unavailable"

    def __init__(
        self,
        message: str,
        details: list[Detail] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, details)
        self.retry_after = None if retry_after is None else max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        """``Retry-After`` when the condition is expected to pass (the store is unreachable)."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
