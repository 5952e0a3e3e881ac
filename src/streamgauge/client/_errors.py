"""The client's exceptions, one tree::

    ClientError                      anything this package raises on purpose
    ├── APIError                     the server answered an error (the native error envelope)
    │   ├── BadRequest        400    ├── Conflict        409
    │   ├── Unauthorized      401    ├── TooLarge        413
    │   ├── Forbidden         403    ├── Invalid         422
    │   ├── NotFound          404    ├── RateLimited     429
    │   └── ServerError       5xx (Unavailable: 503)
    ├── TransportError               no answer: refused, reset, timed out (after the retries)
    └── FeedError                    the push feed refused the session (a failed ``auth``)

An ``APIError`` carries what the server said: ``status``, ``code``, ``message``, ``details``
(a list of ``{"in", "index", "field", "reason"}``) and any ``extra`` keys of the envelope.
"""

from __future__ import annotations

from typing import Any

from streamgauge.wire.errors import ErrorBody, parse_envelope


class ClientError(Exception):
    """Base of every error the client raises on purpose."""


class TransportError(ClientError):
    """The server could not be reached or the connection broke (after the retries)."""


class FeedError(ClientError):
    """The push feed refused the session: ``messages`` are the server's reasons."""

    def __init__(self, messages: list[str], code: int | None = None) -> None:
        super().__init__("; ".join(messages) or "the feed refused the session")
        self.messages = messages
        self.code = code


class APIError(ClientError):
    """An error answer of the server, with its envelope's fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details or [])
        self.extra = dict(extra or {})
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        for d in self.details[:5]:
            bits = [f"{k}={d[k]}" for k in ("in", "index", "field") if k in d]
            where.append(f"{' '.join(bits)}: {d.get('reason', '')}".strip(": "))
        more = f" [{'; '.join(where)}]" if where else ""
        return f"{self.status} {self.code}: {self.message}{more}"


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    pass


class Forbidden(APIError):
    pass


class NotFound(APIError):
    pass


class Conflict(APIError):
    pass


class TooLarge(APIError):
    pass


class Invalid(APIError):
    pass


class RateLimited(APIError):
    pass


class ServerError(APIError):
    pass


class Unavailable(ServerError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Invalid,
    429: RateLimited,
    503: Unavailable,
}


def error_for(status: int, body: ErrorBody) -> APIError:
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, body.code, body.message, body.details, body.extra)


def from_response(status: int, content: bytes) -> APIError:
    """The typed error of an answer with ``status`` and body ``content`` (any body: a non-JSON
    one becomes the message)."""
    import orjson

    try:
        obj: Any = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        obj = content.decode(errors="replace")
    if obj is None:
        obj = f"HTTP {status}"
    return error_for(status, parse_envelope(obj, status))
