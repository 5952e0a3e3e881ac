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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import cast

from streamgauge.bus.api import BusMessage, Handler, Kind

log = logging.getLogger("streamgauge.workers")

HEADER = struct.Struct("!BqqI")
KINDS: tuple[Kind, Kind] = ("batch", "meta")
CODES: dict[Kind, int] = {"batch": 0, "meta": 1}
MAX_PAYLOAD = 1 << 30
MAX_BUFFER = 64 << 20  # unsent bytes to one worker beyond which runs are skipped (it reads them)
PARENT = "parent"  # the origin of every message a worker hears


def frame(kind: Kind, first: int, last: int, payload: bytes) -> bytes:
    return HEADER.pack(CODES[kind], first, last, len(payload)) + payload


class Relay:
    """The writer's side: sends every run to every connected worker, never waiting."""

    def __init__(self, max_buffer: int = MAX_BUFFER) -> None:
        self.max_buffer = max_buffer
        self._peers: dict[str, asyncio.WriteTransport] = {}
        self.sent = 0
        self.skipped = 0  # runs a slow worker missed (it read them from the store)

    async def add(self, name: str, sock: socket.socket) -> None:
        """Follow a worker over ``sock`` (our end of its socket pair)."""
        loop = asyncio.get_running_loop()
        made, _ = await loop.connect_accepted_socket(_Quiet, sock)
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

    def close(self) -> None:
        for transport in self._peers.values():
            transport.close()
        self._peers.clear()


class _Quiet(asyncio.Protocol):
    """The writer reads nothing from a worker's bus socket (EOF: the worker is gone)."""

    def data_received(self, data: bytes) -> None:
        pass


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

    async def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=1 << 20)
        self._connected = True
        self._task = asyncio.create_task(self._read(reader, handler))

    async def _read(self, reader: asyncio.StreamReader, handler: Handler) -> None:
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                code, first, last, size = HEADER.unpack(head)
                if code >= len(KINDS) or size > MAX_PAYLOAD:
                    raise ValueError(f"a malformed frame (kind {code}, {size} bytes)")
                payload = await reader.readexactly(size)
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
