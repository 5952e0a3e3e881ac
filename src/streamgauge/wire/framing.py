"""Stream frames without I/O: NDJSON lines and Server-Sent Events, both ways.

The server writes each frame as bytes ready for the socket. An observation frame carries its
cursor (SSE ``id:``, so ``Last-Event-ID`` resumes); keepalives carry none; the closing frame
says why and where to resume; the opening ``units`` frame (no cursor) says which unit each
quantity kind is given in. A client reads them back with :class:`LineDecoder` (NDJSON) or
:class:`SseDecoder`, fed chunks split anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

# -- writing -------------------------------------------------------------------------------------


def ndjson_row(cursor: int, obj: bytes) -> bytes:
    return obj + b"\n"


def ndjson_keepalive(now: str) -> bytes:
    return b'{"keepalive":"%s"}\n' % now.encode()


def ndjson_closed(reason: str, resume: int) -> bytes:
    return orjson.dumps({"closed": {"reason": reason, "resume": resume}}) + b"\n"


def ndjson_opened(retry_ms: int) -> bytes:
    return b""


def ndjson_units(units: dict[str, str]) -> bytes:
    return orjson.dumps({"units": units}) + b"\n"


def sse_row(cursor: int, obj: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (cursor, obj)


def sse_keepalive(now: str) -> bytes:
    return b": keepalive %s\n\n" % now.encode()


def sse_closed(reason: str, resume: int) -> bytes:
    body = orjson.dumps({"reason": reason, "resume": resume})
    return b"event: closed\nid: %d\ndata: %s\n\n" % (resume, body)


def sse_opened(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def sse_units(units: dict[str, str]) -> bytes:
    return b"event: units\ndata: %s\n\n" % orjson.dumps(units)


# -- reading -------------------------------------------------------------------------------------


class LineDecoder:
    """Incremental NDJSON line splitter with a bounded buffer."""

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


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event: ``event`` (``message`` by default), ``data``, ``id`` if any."""

    event: str
    data: bytes
    id: str | None


class SseDecoder:
    """Incremental Server-Sent Events parser (the subset the server writes: ``event``, ``id``,
    ``data``, ``retry``, comments) with a bounded buffer. Comments (keepalives) yield nothing."""

    def __init__(self, max_event: int = 1 << 20) -> None:
        self._lines = LineDecoder(max_event)
        self._event = "message"
        self._data: list[bytes] = []
        self._id: str | None = None
        self._max = max_event
        self._size = 0
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest)
        if len(rest) > self._max:
            raise ValueError(f"event longer than {self._max} bytes")
        for raw in lines:
            line = bytes(raw.rstrip(b"\r"))
            if not line:
                if self._data or self._event != "message":
                    events.append(SseEvent(self._event, b"\n".join(self._data), self._id))
                self._event, self._data, self._id, self._size = "message", [], None, 0
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                self._size += len(value)
                if self._size > self._max:
                    raise ValueError(f"event longer than {self._max} bytes")
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode()
            elif name == b"id":
                self._id = value.decode()
        return events
