"""uvicorn's sans-I/O WebSocket protocol with one ASGI extension: a synchronous message writer.

A push feed sends many small messages to many connections. Through ASGI each message is a
coroutine call down the middleware stack, a ``str`` round trip and a write of its own; with
1,000 sessions that is most of the event loop. ``DirectWebSocketProtocol`` is uvicorn's
``websockets-sansio`` protocol (chosen with uvicorn's ``ws`` option, its extension point) that
puts a ``MessageWriter`` in the connection's scope under ``extensions[WRITER]``. The writer
frames UTF-8 messages with the connection's own ``websockets`` protocol object (so its state and
extensions stay authoritative) and hands them to the transport in one write.

Everything else (accept, receive, close, pings) still goes through ASGI; an app run by another
server finds no writer in the scope and sends through ASGI as usual.

Frames made once, decided and written down: a server's frames are not masked, so without an
extension (permessage-deflate) a text frame's bytes are the same for every connection.
``text_frame`` makes them once (the feed keeps them on the hub's item, shared by the sessions
whose rows agree) and ``MessageWriter.write`` hands them to the transport as they are, after the
same checks as ``send`` (the connection is open, its ``websockets`` state too); with an extension
negotiated ``raw`` is false and messages go through ``send``.

Backpressure, decided and written down: the writer never buffers on its own. ``paused`` is true
while the transport's buffer is above its high-water mark (uvicorn's ``writable`` event, the
same one its ASGI ``send`` waits on); a caller waits for ``writable()`` before writing more, so
the caller's own bounded queue is what fills up when a client reads slowly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from streamgauge.core.hub import Flag

WRITER = "streamgauge.websocket.writer"
# What replaces a handshake once its response is sent (``DirectWebSocketProtocol.send``).
_SENT_REQUEST = Request("/", Headers())
_SENT_RESPONSE = Response(101, "Switching Protocols", Headers())


class MessageWriter:
    """Text messages straight to one connection (see the module docstring)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: DirectWebSocketProtocol) -> None:
        self._protocol = protocol

    @property
    def open(self) -> bool:
        p = self._protocol
        return not (p.close_sent or p.disconnected or p.transport.is_closing())

    @property
    def paused(self) -> bool:
        """The transport's buffer is over its high-water mark: wait for ``writable()``."""
        return not self._protocol.writable.is_set()

    async def writable(self) -> None:
        await self._protocol.writable.wait()

    @property
    def raw(self) -> bool:
        """Frames made by ``text_frame`` may be written as they are: no extension negotiated."""
        return not self._protocol.conn.extensions

    @property
    def ready(self) -> bool:
        """``raw``, open and not ``paused``: frames made by ``text_frame`` may be written now
        (``write_ready``). One look instead of four, a thousand connections a fan-out round."""
        p = self._protocol
        return (
            p.writable.is_set()
            and not (p.close_sent or p.disconnected or p.conn.extensions)
            and p.conn.state is State.OPEN
            and not p.transport.is_closing()
        )

    def write_ready(self, frames: bytes) -> None:
        """``write`` just after ``ready`` said True (nothing ran in between)."""
        self._protocol.transport.write(frames)

    def write(self, frames: bytes) -> bool:
        """Write frames made by ``text_frame`` (only when ``raw``) in one go; False if the
        connection is closing or closed (nothing is written then)."""
        p = self._protocol
        if p.close_sent or p.disconnected or p.conn.state is not State.OPEN:
            return False
        transport = p.transport
        if transport.is_closing():
            return False
        transport.write(frames)
        return True

    def detach(self, session: Coroutine[Any, Any, None]) -> None:
        """Run ``session`` (the rest of the connection's life) as the connection's own task,
        for the ASGI app to return at once: its call chain (middleware, router, endpoint
        frames) is freed instead of waiting for as long as the connection lives (about 5 KB
        of each idle feed session). The connection closes when ``session`` ends."""
        self._protocol.detach(session)

    def send(self, messages: Sequence[bytes]) -> bool:
        """Frame ``messages`` (UTF-8 JSON texts) and write them in one go; False if the
        connection is closing or closed (nothing is written then)."""
        p = self._protocol
        if not self.open:
            return False
        conn = p.conn
        try:
            for message in messages:
                conn.send_text(message)
        except InvalidState:
            return False
        p.transport.write(b"".join(conn.data_to_send()))
        return True


def _forget_handshake(conn: ServerProtocol) -> None:
    """Give ``conn`` a frame parser of its own once the handshake is done. The server's parser
    reads the request and then parses frames inside its own generator for the connection's
    whole life, keeping the request (its path with the query string) in that frame: about
    700 bytes of each idle connection. Replaced only between frames (nothing buffered), where
    a new frame parser is in the same state as the one it replaces."""
    reader = conn.reader
    if reader.buffer or reader.eof or conn.parser_exc is not None or conn.state is not State.OPEN:
        return
    parser = Protocol.parse(conn)
    next(parser)  # to its first wait for data, as the replaced parser is
    conn.parser = parser


class _Queue:
    """What uvicorn's protocol uses of its ``asyncio.Queue`` of received events (unbounded:
    ``put_nowait``, ``get``, ``empty``), without its three deques and event: an
    ``asyncio.Queue`` costs about 3 KB of each idle connection, this about 100 bytes."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[object] = []
        self._waiters: list[asyncio.Future[None]] = []

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: object) -> None:
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._waiters.remove(waiter)
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the item is another getter's
                raise
            self._waiters.remove(waiter)
        return self._items.pop(0)


# Every attribute uvicorn's protocol and this one set on a connection. uvicorn's class has no
# ``__slots__``, and CPython shares an instance dict's keys between the instances of a class
# for at most 30 attributes: its 36 gave each connection a dict of its own (about 1.9 KB of
# each idle feed session). As slots of the subclass they cost 8 bytes each and no dict is made.
_SLOTS = (
    "config",
    "app",
    "loop",
    "logger",
    "root_path",
    "asgi_version",
    "app_state",
    "connections",
    "tasks",
    "default_headers",
    "transport",
    "server",
    "client",
    "scheme",
    "queue",
    "handshake_initiated",
    "handshake_complete",
    "close_sent",
    "disconnected",
    "close_timer",
    "close_timeout",
    "initial_response",
    "conn",
    "read_paused",
    "writable",
    "ping_interval",
    "ping_timeout",
    "ping_timer",
    "pong_timer",
    "pending_ping_payload",
    "ping_sent_at",
    "last_ping_rtt",
    "frames",
    "curr_msg_data_type",
    "scope",
    "request",
    "response",
    "detached",
)


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, offering a ``MessageWriter`` to the app, with a
    leaner receive queue and ``writable`` event and its attributes in slots (a thousand idle
    feed sessions are a thousand of these)."""

    __slots__ = _SLOTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Queue()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()
        self.detached = False

    def detach(self, session: Coroutine[Any, Any, None]) -> None:
        """See ``MessageWriter.detach``."""
        self.detached = True
        # The ASGI call returns: what its scope said of the request (path, query string,
        # client and server addresses, the routing's and middleware's entries, an exit stack)
        # is read by nothing from here on; the writer stays under ``extensions``.
        scope: dict[str, object] = self.scope  # type: ignore[assignment]
        kept: dict[str, object] = {k: scope[k] for k in ("type", "extensions") if k in scope}
        scope.clear()
        scope.update(kept)
        task = self.loop.create_task(self._run_detached(session))
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)  # the server's graceful shutdown waits for it

    async def _run_detached(self, session: Coroutine[Any, Any, None]) -> None:
        try:
            await session
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application (a detached WebSocket)\n")
        if self.close_timer is None:
            self.transport.close()

    async def run_asgi(self) -> None:
        """uvicorn's, except that a detached connection stays open when the app returns."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not self.detached:
            self.transport.close()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The app's task was created but has not run yet: the scope can still be extended.
        if not self.close_sent and getattr(self, "scope", None) is not None:
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[WRITER] = MessageWriter(self)
        # The scope holds a copy of the request's headers; uvicorn keeps the parsed request
        # for nothing after this point (4 KB per connection of a thousand feed sessions).
        event.headers = Headers()

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (with its headers) are kept by uvicorn for
            # nothing once the response is sent: about 1.5 KB of each idle connection.
            self.request, self.response = _SENT_REQUEST, _SENT_RESPONSE
            _forget_handshake(self.conn)

    def start_keepalive(self) -> None:
        """uvicorn's keepalive pings, the first at a random point of the second half of the
        first interval (uvicorn's own comes after exactly one interval). Connections opened
        together (clients reconnecting after a restart, a bench opening a thousand sessions)
        would otherwise all be pinged in the same instant, every interval, and a thousand pings
        and pongs at once stall the fan-out (measured: p99 delivery 117 ms instead of 50)."""
        interval = self.ping_interval
        if interval is not None and interval > 0:
            first = interval * (0.5 + 0.5 * random.random())
            self.ping_timer = self.loop.call_later(first, self.send_keepalive_ping)
