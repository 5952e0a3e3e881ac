"""The bus between one writer process and its fan-out worker processes on one machine.

The writer (``streamgauge serve --workers N``) commits every batch and every metadata change;
each worker follows over a Unix stream socket (a socket pair made when the worker is spawned)
carrying the same runs the cluster mode's bus carries: committed batches (cursors
``first..last``) and metadata event runs (sequence numbers ``first..last``), in commit order.

Frames: ``!BqqI`` (kind: 0 batch, 1 meta; first; last; payload length) then the payload
(``bus/codec.py`` for a batch, ``core.cluster.encode_meta`` for a metadata run).

Like every ``Bus`` it may skip: the writer never waits for a worker. A worker whose socket has
more than ``max_buffer`` bytes unsent misses the runs that do not fit, and finds them in the
store (its ``core.cluster.Channel`` sees the gap, or the store's head, and reads the rows from
SQLite): a slow worker costs reads, never a lost or repeated row, and never stalls the writer.

Control frames (same header, kinds from ``CONTROL``; never skipped, they are small) go both
ways and carry the state that must be the server's, not one process's (docs/workers.md,
"Per-process state"):

* ``METRICS_ASK`` (writer -> worker, ``first``: a request number) and ``METRICS`` (the reply:
  the worker's Prometheus exposition): the writer's ``/metrics`` covers every process;
* ``STATUS`` (worker -> writer, every ``STATUS_SECONDS``: JSON of its head, subscribers,
  resident memory): the writer's ``/healthz`` says each worker's state;
* ``AUTH_FAILED`` (both ways, JSON ``[[kind, value], ...]``): a failed login counted in one
  process is counted in every other (the writer passes a worker's on to the other workers);
* ``FEEDS_ASK`` (writer -> worker, ``first``: a request number, ``last``: a project's pk) and
  ``FEEDS`` (the reply: JSON of the push-feed sessions the worker serves for that project,
  ``encode_sessions``): the writer's list of connected feed sessions covers every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import cast

import msgspec

from streamgauge.bus.api import BusMessage, Handler, Kind
from streamgauge.domain.feeds import FeedSession, FeedToken

log = logging.getLogger("streamgauge.workers")

HEADER = struct.Struct("!BqqI")
KINDS: tuple[Kind, Kind] = ("batch", "meta")
CODES: dict[Kind, int] = {"batch": 0, "meta": 1}
MAX_PAYLOAD = 1 << 30
MAX_BUFFER = 64 << 20  # unsent bytes to one worker beyond which runs are skipped (it reads them)
PARENT = "parent"  # the origin of every message a worker hears

METRICS_ASK, METRICS, STATUS, AUTH_FAILED, FEEDS_ASK, FEEDS = 16, 17, 18, 19, 20, 21
CONTROL = frozenset({METRICS_ASK, METRICS, STATUS, AUTH_FAILED, FEEDS_ASK, FEEDS})
# A control frame heard: (kind, first, last, payload). Called in the event loop; quick.
ControlHandler = Callable[[int, int, int, bytes], None]


def frame(kind: Kind, first: int, last: int, payload: bytes) -> bytes:
    return HEADER.pack(CODES[kind], first, last, len(payload)) + payload


_KEYS = msgspec.json.Decoder(list[tuple[str, str]])
# a session as ``FEEDS`` carries it: its token's pk, id, project pk, name and creation, then the
# session's id, arguments and position
_SESSIONS = msgspec.json.Decoder(list[tuple[int, str, int, str, str, str, str, int]])


def encode_keys(keys: Sequence[tuple[str, str]]) -> bytes:
    """An ``AUTH_FAILED`` payload: the rate-limit keys of one failed login."""
    return msgspec.json.encode(keys)


def decode_keys(payload: bytes) -> list[tuple[str, str]]:
    """The keys of an ``AUTH_FAILED`` payload (``ValueError`` if it is not one)."""
    return _KEYS.decode(payload)


def encode_sessions(sessions: Sequence[tuple[FeedToken, FeedSession]]) -> bytes:
    """A ``FEEDS`` payload: push-feed sessions served by one process, with their tokens."""
    return msgspec.json.encode(
        [
            (t.pk, t.id, t.project_pk, t.name, t.created_at, s.id, s.args, s.position)
            for t, s in sessions
        ]
    )


def decode_sessions(payload: bytes) -> list[tuple[FeedToken, FeedSession]]:
    """The sessions of a ``FEEDS`` payload (``ValueError`` if it is not one)."""
    return [
        (FeedToken(tpk, tid, project, name, created), FeedSession(sid, tpk, args, position))
        for tpk, tid, project, name, created, sid, args, position in _SESSIONS.decode(payload)
    ]


def control_frame(code: int, first: int, last: int, payload: bytes) -> bytes:
    if code not in CONTROL:
        raise ValueError(f"not a control frame kind: {code}")
    return HEADER.pack(code, first, last, len(payload)) + payload


class Relay:
    """The writer's side: sends every run to every connected worker, never waiting."""

    def __init__(
        self,
        max_buffer: int = MAX_BUFFER,
        on_control: Callable[[str, int, int, int, bytes], None] | None = None,
    ) -> None:
        self.max_buffer = max_buffer
        self._peers: dict[str, asyncio.WriteTransport] = {}
        self.sent = 0
        self.skipped = 0  # runs a slow worker missed (it read them from the store)
        # A worker's control frame: (worker name, kind, first, last, payload).
        self.on_control = on_control

    async def add(self, name: str, sock: socket.socket) -> None:
        """Follow a worker over ``sock`` (our end of its socket pair)."""
        loop = asyncio.get_running_loop()
        made, _ = await loop.connect_accepted_socket(lambda: _FromWorker(self, name), sock)
        transport = cast(asyncio.WriteTransport, made)  # uvloop's are not asyncio's classes
        old = self._peers.pop(name, None)
        if old is not None:
            old.close()
        self._peers[name] = transport

    def remove(self, name: str) -> None:
        transport = self._peers.pop(name, None)
        if transport is not None:
            transport.close()

    def send(self, kind: Kind, first: int, last: int, payload: bytes) -> None:
        if not self._peers:
            return
        data = frame(kind, first, last, payload)
        for name, transport in list(self._peers.items()):
            if transport.is_closing():
                self._peers.pop(name, None)
                continue
            if transport.get_write_buffer_size() > self.max_buffer:
                self.skipped += 1
                continue
            transport.write(data)
            self.sent += 1

    def send_control(
        self, code: int, first: int, last: int, payload: bytes, *, to: str | None = None
    ) -> int:
        """A control frame to worker ``to`` (None: every worker); never skipped. Returns how
        many workers it was written to."""
        data = control_frame(code, first, last, payload)
        written = 0
        for name, transport in list(self._peers.items()):
            if to is not None and name != to:
                continue
            if transport.is_closing():
                self._peers.pop(name, None)
                continue
            transport.write(data)
            written += 1
        return written

    @property
    def names(self) -> list[str]:
        return [name for name, t in self._peers.items() if not t.is_closing()]

    def close(self) -> None:
        for transport in self._peers.values():
            transport.close()
        self._peers.clear()


class _FromWorker(asyncio.Protocol):
    """The writer's reading end of a worker's bus socket: control frames only (EOF: the worker
    is gone). A malformed frame closes the socket (the worker then stops and is restarted)."""

    def __init__(self, relay: Relay, name: str) -> None:
        self._relay = relay
        self._name = name
        self._buf = bytearray()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            code, first, last, size = HEADER.unpack_from(self._buf)
            if code not in CONTROL or size > MAX_PAYLOAD:
                log.error("worker %s sent a malformed frame (kind %d)", self._name, code)
                self._buf.clear()
                if self._transport is not None:
                    self._transport.close()
                return
            end = HEADER.size + size
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            handler = self._relay.on_control
            if handler is not None:
                try:
                    handler(self._name, code, first, last, payload)
                except Exception:
                    log.exception("a control frame from worker %s failed", self._name)


class LocalBus:
    """A worker's side (``bus.api.Bus``): hears the writer's runs; publishes nothing (a worker
    commits nothing). ``on_lost`` is called once if the writer's end closes (it died or
    stopped): the worker then stops too."""

    def __init__(self, sock: socket.socket, node_id: str, on_lost: Callable[[], None]) -> None:
        self.node_id = node_id
        self._sock = sock
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected = False
        self.on_control: ControlHandler | None = None  # control frames from the writer

    async def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=1 << 20)
        self._connected = True
        self._task = asyncio.create_task(self._read(reader, handler))

    async def _read(self, reader: asyncio.StreamReader, handler: Handler) -> None:
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                code, first, last, size = HEADER.unpack(head)
                if (code >= len(KINDS) and code not in CONTROL) or size > MAX_PAYLOAD:
                    raise ValueError(f"a malformed frame (kind {code}, {size} bytes)")
                payload = await reader.readexactly(size)
                if code in CONTROL:
                    if self.on_control is not None:
                        try:
                            self.on_control(code, first, last, payload)
                        except Exception:
                            log.exception("worker %s: a control frame failed", self.node_id)
                    continue
                await handler(BusMessage(KINDS[code], first, last, payload, PARENT))
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            log.warning("worker %s: the writer process closed the bus (%s)", self.node_id, e)
        except Exception:
            log.exception("worker %s: the bus from the writer process failed", self.node_id)
        self._connected = False
        self._on_lost()

    async def publish(self, kind: Kind, first: int, last: int, payload: bytes) -> bool:
        return False  # never called: a worker commits nothing

    def send_control(self, code: int, first: int, last: int, payload: bytes) -> bool:
        """A control frame to the writer (False if the bus is not connected)."""
        if not self._connected or self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(control_frame(code, first, last, payload))
        return True

    @property
    def connected(self) -> bool:
        return self._connected

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._connected = False
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()
