"""Stream framing without I/O: NDJSON lines and Server-Sent Events, shared by every face.

Each frame is bytes ready for the socket. An observation frame carries its cursor (SSE ``id:``, so
``Last-Event-ID`` resumes); keepalives carry none; the closing frame says why and where to resume;
the opening ``units`` frame (no cursor) says which unit each quantity kind is given in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from streamgauge.core.batch import Batch
    from streamgauge.core.units import UnitSystem
    from streamgauge.store.registry import Registry


@dataclass(frozen=True, slots=True)
class Framing:
    """How a stream writes rows. ``row`` wraps each row's native JSON object; a face with its own
    row shape gives ``encode`` instead (all rows of a batch at once, cached per batch and units).
    ``max_rows`` bounds the rows of one queued item (a face's message size); ``wrap`` turns an
    item's joined rows into its message (given the first and last cursor), once per item, shared
    by the subscribers whose masks agree; ``with_series`` keeps the picked rows' series pks on each
    item (for per-connection metadata)."""

    name: str
    media_type: str
    row: Callable[[int, bytes], bytes]
    keepalive: Callable[[str], bytes]
    closed: Callable[[str, int], bytes]
    opened: Callable[[int], bytes]
    units: Callable[[dict[str, str]], bytes]
    encode: Callable[[Batch, Registry, UnitSystem], list[bytes]] | None = None
    max_rows: int = 0  # 0: unbounded
    wrap: Callable[[bytes, int, int], bytes] | None = None
    with_series: bool = False

    def rows(self, batch: Batch, registry: Registry, units: UnitSystem) -> list[bytes]:
        """The framed rows of ``batch`` (cached on the batch per form and units)."""
        if self.encode is None:
            return batch.framed(self.name, registry, self.row, units)
        return batch.encoded(self.name, registry, self.encode, units)


def _ndjson_row(cursor: int, obj: bytes) -> bytes:
    return obj + b"\n"


def _ndjson_keepalive(now: str) -> bytes:
    return b'{"keepalive":"%s"}\n' % now.encode()


def _ndjson_closed(reason: str, resume: int) -> bytes:
    return orjson.dumps({"closed": {"reason": reason, "resume": resume}}) + b"\n"


def _sse_row(cursor: int, obj: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (cursor, obj)


def _sse_keepalive(now: str) -> bytes:
    return b": keepalive %s\n\n" % now.encode()


def _sse_closed(reason: str, resume: int) -> bytes:
    body = orjson.dumps({"reason": reason, "resume": resume})
    return b"event: closed\nid: %d\ndata: %s\n\n" % (resume, body)


def _sse_opened(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def _ndjson_units(units: dict[str, str]) -> bytes:
    return orjson.dumps({"units": units}) + b"\n"


def _sse_units(units: dict[str, str]) -> bytes:
    return b"event: units\ndata: %s\n\n" % orjson.dumps(units)


NDJSON = Framing(
    "ndjson",
    "application/x-ndjson",
    _ndjson_row,
    _ndjson_keepalive,
    _ndjson_closed,
    lambda _: b"",
    _ndjson_units,
)
SSE = Framing(
    "sse", "text/event-stream", _sse_row, _sse_keepalive, _sse_closed, _sse_opened, _sse_units
)


class LineDecoder:
    """Incremental NDJSON line splitter with a bounded buffer (for clients of our streams)."""

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *lines, rest = self._buf.split(b"\n")
        if len(rest) > self._max:
            raise ValueError(f"line longer than {self._max} bytes")
        self._buf = bytearray(rest)
        return [bytes(line.rstrip(b"\r")) for line in lines if line.strip()]
