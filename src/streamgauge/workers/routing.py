"""Which process serves a new connection, from its first request line (pure; no I/O).

A worker process accepts connections on the shared port and looks at the first line of the
first request (``GET /api/v1/projects/demo/stream?since=12 HTTP/1.1``) without reading it
from the socket (``MSG_PEEK``). A live stream (the native face's, the DT face's
``devices:stream``) it serves itself: its engine is a read-only follower of the writer's log.
Everything else (ingest, metadata, history, accounts, the dashboard, the push feed) goes,
socket and all, to the writer process, which then reads the request itself as if it had
accepted the connection: nothing is proxied, so status, headers, bodies and errors are exactly
the writer's.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse

MAX_LINE = 8192  # a request line longer than this goes to the writer (it answers the error)

# The live streams a worker serves (NDJSON or SSE): the native face's
# ``GET /api/v1/projects/{project}/stream`` and the DT face's
# ``GET /v2/projects/{project}/devices:stream`` (its colon sent as is, or as ``%3A``).
_LOCAL = re.compile(
    rb"/api/v1/projects/[^/?#\s]+/stream|/v2/projects/[^/?#\s]+/devices(?::|%3[aA])stream"
)


def request_target(head: bytes) -> tuple[bytes, bytes] | None:
    """(method, path) of the first request line in ``head``, or None if it holds no whole,
    well-formed line."""
    end = head.find(b"\r\n")
    if end < 0:
        end = head.find(b"\n")  # h11 accepts a bare LF too
    if end < 0:
        return None
    parts = head[:end].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    method, target = parts[0], parts[1]
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    return method, path


def serves_locally(head: bytes) -> bool:
    """Whether a worker serves the connection whose first bytes are ``head`` (else the writer
    process does). Only a GET of a route that writes nothing."""
    found = request_target(head)
    if found is None:
        return False
    method, path = found
    return method == b"GET" and _LOCAL.fullmatch(path) is not None


# The push feed (``/feed/{token}/``, ``/feed/{token}``, ``/feed/{token}/{session}``).
_FEED = re.compile(rb"/feed/([^/?#\s]+)(?:/[^/?#\s]*)?")


def owner(digest: bytes, count: int, writer: bool = True) -> int:
    """The process (``0..count-1``) serving every connection of the feed token whose SHA-256
    digest is ``digest`` (token affinity: a token's sessions, take-overs, session count and
    revocation are one process's state). Stable for a given ``count``. ``writer`` false (the
    writer serves no subscriber, ``STREAMGAUGE_WRITER_SUBSCRIBERS``): one of the workers
    ``1..count-1``."""
    h = int.from_bytes(digest[:8], "big")
    if not writer and count > 1:
        return 1 + h % (count - 1)
    return h % count


def target(
    head: bytes, me: int, count: int, *, feed: bool, writer: bool = True, turn: int = 0
) -> int:
    """Which process serves the connection whose first bytes are ``head``, when process
    ``me`` accepted it: ``me`` for a live stream; with ``feed`` (the push feed served by every
    process), the feed token's owner for a push-feed connection; else the writer (0).
    ``writer`` false (the writer serves no subscriber): a live stream the writer accepted goes
    to worker ``1 + turn % (count - 1)`` (the caller counts ``turn``), and feed tokens are
    the workers' only (``owner``)."""
    found = request_target(head)
    if found is None:
        return 0
    method, path = found
    if method != b"GET":
        return 0
    if _LOCAL.fullmatch(path) is not None:
        if me == 0 and not writer and count > 1:
            return 1 + turn % (count - 1)
        return me
    if feed and count > 1:
        m = _FEED.fullmatch(path)
        if m is not None:  # decoded as the app decodes the path (the digest of that)
            token = urllib.parse.unquote_to_bytes(m.group(1))
            return owner(hashlib.sha256(token).digest(), count, writer)
    return 0


def complete(head: bytes) -> bool:
    """Whether ``head`` is enough to decide: it holds the first line, or it is as long as a
    request line may be."""
    return b"\n" in head or len(head) >= MAX_LINE
