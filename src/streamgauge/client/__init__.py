"""The Python client of streamgauge: ``Client`` (blocking) and ``AsyncClient``.

::

    from streamgauge.client import Client
    c = Client(url, token=TOKEN)             # or key_id=..., secret=...; url and token default
                                             # to STREAMGAUGE_URL and STREAMGAUGE_TOKEN
    r = c.ingest("lab", rows)                # r.accepted, r.duplicates, r.first/last_cursor
    for o in c.history("lab", device="ws1", start="2026-01-01T00:00:00Z"): ...
    for o in c.stream("lab", checkpoint="lab.cursor"): ...   # resumes, never loses or repeats

It speaks only HTTP and WebSocket to a server, with the pure codecs of ``streamgauge.wire``;
nothing of the server is imported (an import contract checks it), so it works against any
streamgauge. See docs/client.md.
"""

from streamgauge.client._async import AsyncClient
from streamgauge.client._errors import (
    APIError,
    BadRequest,
    ClientError,
    Conflict,
    FeedError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    ServerError,
    TooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
)
from streamgauge.client._feed import AsyncFeedClient, FeedClient
from streamgauge.client._models import FeedMessage, IngestResult, Observation
from streamgauge.client._sync import Client

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncFeedClient",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "FeedClient",
    "FeedError",
    "FeedMessage",
    "Forbidden",
    "IngestResult",
    "Invalid",
    "NotFound",
    "Observation",
    "RateLimited",
    "ServerError",
    "TooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
]
