"""Limits on every request and response, whatever the route or face.

* **Body size** (``BodyLimit``, an ASGI middleware): every request body is counted as it streams
  in. The ingest routes (``INGEST_ROUTES``) may send up to ``max_body_bytes``; every other route
  (metadata, channels, accounts, ...) up to ``max_metadata_body_bytes``. A declared
  ``Content-Length`` over the limit is refused before a byte is read; a chunked body is refused
  as soon as it passes it. Either way the reply is a 413 in the face's error shape and the
  handler never sees a byte past the limit (whatever it has read is thrown away: no partial
  write). The rest of the body is discarded by the server, so the client reads the 413.
* **Header size** (the HTTP protocol classes of ``http_protocol``): the request line and headers
  together may hold at most ``max_header_bytes``; a bigger head is answered 431 as soon as the
  limit is passed, before it is buffered whole (httptools would otherwise buffer a 32 MB header
  and h11 answer a bare 400). ``BodyLimit`` checks the same total for servers that do not use
  these classes.
* **Write timeout** (the same protocol classes): a response the client stops reading stalls its
  sender once the transport's buffer is full. If the buffer has not shrunk for
  ``write_timeout_seconds`` the connection is aborted, so the stream's task, its subscription
  and its buffered bytes go away; other connections are not affected. This covers every HTTP
  response: native NDJSON and SSE streams, the DT stream, large downloads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from fastapi import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from streamgauge.domain.errors import PayloadTooLarge
from streamgauge.faces import http

log = logging.getLogger("streamgauge.limits")
JSON = "application/json"

# (method, route path) of the routes that take observations; a test checks each still exists.
INGEST_ROUTES = frozenset(
    {
        ("POST", "/api/v1/projects/{project}/observations"),
        ("POST", "/v3/streams/measurements"),
        ("POST", "/v2/projects/{project}/devices/{device}:publish"),
        ("POST", "/write"),  # InfluxDB 1.x line protocol (faces/influx.py)
        ("POST", "/api/v2/write"),  # InfluxDB 2.x line protocol
    }
)


def face_of(path: str) -> str:
    """The face a path belongs to: ``dt`` (/v2), ``tapis`` (/v3) or ``native`` (the rest)."""
    if path == "/v2" or path.startswith("/v2/"):
        return "dt"
    if path == "/v3" or path.startswith("/v3/"):
        return "tapis"
    if path == "/write":
        return "influx1"
    if path == "/api/v2" or path.startswith("/api/v2/"):
        return "influx2"
    return "native"


def face_error(path: str, status: int, code: str, message: str) -> Response:
    """An error reply in the error shape of the face ``path`` belongs to."""
    face = face_of(path)
    if face == "dt":
        from streamgauge.faces.dt.http import error_response as dt_error
        from streamgauge.faces.dt.http import stream_error_line

        if path.endswith(":stream"):  # the DT SDK reads a stream's error line, not its status
            return Response(stream_error_line(status, message), status, media_type=JSON)
        return dt_error(status, message)
    if face == "tapis":
        from streamgauge.faces.tapis.wire import error_envelope

        return error_envelope(status, message, [])
    if face in ("influx1", "influx2"):
        from streamgauge.faces.influx import v1_error, v2_error

        return (v1_error if face == "influx1" else v2_error)(status, message)
    return http.error_response(status, code, message, [])


def _head_size(scope: Scope) -> int:
    target = scope.get("raw_path") or scope["path"].encode()
    line = len(target) + len(scope.get("query_string", b""))
    return line + sum(len(k) + len(v) + 4 for k, v in scope["headers"])


class BodyLimit:
    """ASGI middleware: the body limit of every route, and the header limit as a second line."""

    def __init__(
        self, app: ASGIApp, *, ingest_bytes: int, other_bytes: int, header_bytes: int
    ) -> None:
        self.app = app
        self.ingest_bytes = ingest_bytes
        self.other_bytes = other_bytes
        self.header_bytes = header_bytes
        self._ingest = [(m, compile_path(path)[0]) for m, path in sorted(INGEST_ROUTES)]

    def limit_for(self, method: str, path: str) -> int:
        for ingest_method, pattern in self._ingest:
            if method == ingest_method and pattern.match(path):
                return self.ingest_bytes
        return self.other_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if _head_size(scope) > self.header_bytes:
            reply = face_error(
                path,
                431,
                "headers_too_large",
                f"the request line and headers exceed the limit of {self.header_bytes} bytes",
            )
            await reply(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], path)

        def too_large(what: str) -> Response:
            return face_error(path, 413, "too_large", f"{what}; the limit is {limit} bytes")

        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await too_large(f"the body is {int(value)} bytes")(scope, receive, send)
                return
        size = 0
        started = False
        tripped = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if tripped:
                return  # the 413 is out; what the handler answers after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def counted_receive() -> Message:
            nonlocal size, tripped
            if not tripped:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                size += len(message.get("body", b""))
                if size <= limit:
                    return message
                tripped = True
                if not started:
                    await too_large("the body exceeds the limit")(scope, receive, send)
            # The handler never gets the bytes past the limit: it stops here, and what it
            # answers is dropped (the 413 is out).
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not tripped:
                raise


# -- the HTTP protocols: header limit and write timeout -------------------------------------------


class _HeadTooLarge(Exception):
    """Raised in a parser callback when the head passes the limit (answered 431)."""


class _Limits:
    """What both protocol classes add: a 431 for an oversized head, and the write timeout."""

    header_limit: int = 32 * 1024
    write_timeout: float = 30.0
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    url: bytes

    def _limits_init(self) -> None:
        self._head_too_large = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_size = 0

    def _send_431(self) -> None:
        self._head_too_large = True
        path = self.url.split(b"?", 1)[0].decode("latin-1") if getattr(self, "url", b"") else "/"
        reply = face_error(
            path,
            431,
            "headers_too_large",
            f"the request line and headers exceed the limit of {self.header_limit} bytes",
        )
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in reply.raw_headers:
            if name != b"content-length":
                head.append(name + b": " + value + b"\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(reply.body))
        self.transport.write(b"".join(head) + bytes(reply.body))
        self.transport.close()

    # The write timeout. The transport calls pause_writing when its buffer passes the high-water
    # mark (uvicorn's senders then wait) and resume_writing when it has drained.

    def _stall_arm(self) -> None:
        if self.write_timeout > 0 and self._stall_timer is None:
            self._stall_size = self.transport.get_write_buffer_size()
            self._stall_timer = self.loop.call_later(self.write_timeout, self._stall_check)

    def _stall_disarm(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stall_check(self) -> None:
        self._stall_timer = None
        if self.transport.is_closing():
            return
        size = self.transport.get_write_buffer_size()
        if size < self._stall_size:  # the client read something: it is slow, not stuck
            self._stall_arm()
            return
        log.info(
            "closing a connection whose client read nothing for %.1f s (%d bytes unsent)",
            self.write_timeout,
            size,
        )
        self.transport.abort()


CHUNK_WRITER = "streamgauge.http.chunk_writer"


class ChunkWriter:
    """The body of one streamed HTTP/1.1 response written straight to the connection, in the
    chunked framing uvicorn's httptools protocol writes (``RequestResponseCycle.send``): for a
    live stream's fan-out, which then costs a write per round instead of waking the stream's
    task and passing each chunk down the ASGI middleware stack. Put in the request's scope
    under ``extensions[CHUNK_WRITER]`` by the httptools protocol below (not by h11's: an app
    run without it sends through ASGI as usual).

    ``write`` works only once the response started with chunked framing and until it is
    complete (the last chunk always goes through ASGI); False, having written nothing,
    otherwise, or while the connection is closing. ``paused``: the transport's buffer is over
    its high-water mark (the same flow control uvicorn's ``send`` waits on): the caller then
    sends through ASGI, which waits (and the write timeout applies). No middleware of this
    app changes a response body, so the bytes are the ones ASGI would have written."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    @property
    def paused(self) -> bool:
        return bool(self._cycle.flow.write_paused)

    @property
    def _open(self) -> bool:
        """The response's chunked body is open and the connection not closing."""
        c = self._cycle
        return not (
            not c.response_started
            or c.response_complete
            or c.disconnected
            or c.chunked_encoding is not True
            or c.scope["method"] == "HEAD"
            or c.transport.is_closing()
        )

    @property
    def ready(self) -> bool:
        """``write`` would write now, and the buffer is not ``paused``."""
        return not self._cycle.flow.write_paused and self._open

    def write(self, body: bytes) -> bool:
        if not self._open:
            return False
        c = self._cycle
        if body:
            c.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        return True

    def write_chunk(self, chunk: bytes) -> None:
        """A whole chunk (its size line, data and CRLF: ``wsframes.joined_frames`` with
        ``chunked``), just after ``ready`` said True (nothing ran in between)."""
        self._cycle.transport.write(chunk)


def _httptools_protocol() -> type[Any] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed: h11 only
        return None

    class LimitedHttpToolsProtocol(_Limits, HttpToolsProtocol):
        """uvicorn's httptools protocol with the head limit (431) and the write timeout."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._limits_init()
            self._in_head = True  # between requests, or inside a request's head
            self._head_seen = 0  # bytes received while in a head (a bound on its size)
            self._head_exact = 0  # the head's size as parsed so far

        def data_received(self, data: bytes) -> None:
            if self._head_too_large:
                return
            if self._in_head:
                self._head_seen += len(data)
            super().data_received(data)
            if (
                self._in_head
                and self._head_seen > self.header_limit + 4
                and not self._head_too_large
                and not self.transport.is_closing()
            ):
                self._send_431()  # the head is not complete yet and already too large

        def on_message_begin(self) -> None:
            self._in_head = True
            self._head_exact = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_exact += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_exact += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            if self._head_exact > self.header_limit:
                self._head_too_large = True
                raise _HeadTooLarge  # the parser stops; uvicorn calls send_400_response
            before = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not before and cycle is not None:  # a request (not an upgrade)
                scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
                scope.setdefault("extensions", {})[CHUNK_WRITER] = ChunkWriter(cycle)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True
            self._head_seen = 0

        def send_400_response(self, msg: str) -> None:
            if self._head_too_large:
                self._send_431()
                return
            super().send_400_response(msg)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._stall_arm()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._stall_disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stall_disarm()
            super().connection_lost(exc)

    return LimitedHttpToolsProtocol


class LimitedH11Protocol(_Limits, H11Protocol):
    """uvicorn's h11 protocol with the head limit (h11's ``max_incomplete_event_size``, answered
    431 instead of 400) and the write timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits_init()
        self.url = b""

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > self.header_limit:
            self._send_431()
            return
        super().send_400_response(msg)

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE:  # the request line's target, for the 431's shape
            line = self.conn.trailing_data[0][:4096].split(b"\r\n", 1)[0].split(b" ")
            self.url = line[1] if len(line) > 1 else b""
        super().handle_events()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stall_arm()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stall_disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stall_disarm()
        super().connection_lost(exc)


def http_protocol(header_bytes: int, write_timeout: float, *, h11_only: bool = False) -> type[Any]:
    """The uvicorn ``http`` protocol class with these limits: httptools when it is installed
    (uvicorn's own choice for ``http="auto"``), h11 otherwise."""
    base = None if h11_only else _httptools_protocol()
    base = base or LimitedH11Protocol
    return type(
        base.__name__,
        (base,),
        {"header_limit": header_bytes, "write_timeout": write_timeout, "__module__": __name__},
    )
