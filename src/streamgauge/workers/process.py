"""A fan-out worker process (``python -m streamgauge.workers``, spawned by the writer process).

It binds the serving port with ``SO_REUSEPORT`` (the kernel spreads new connections over the
writer and the workers), accepts, peeks at each connection's first request line
(``routing.target``) and either serves the connection itself (a live stream, or with the push
feed in workers a feed connection of a token it owns: uvicorn's protocol over the accepted
socket, the app over a ``WorkerEngine``) or hands the socket to the writer process over the
hand-off socket (``SCM_RIGHTS``; nothing was read from it), which then serves it as its own or,
for a feed token another worker owns, passes it on. With the push feed in workers the writer
also passes connections to this worker over the same socket.

Its engine follows the writer over the bus socket; if the writer's end closes, the worker shuts
down (every stream gets its closing frame and resume cursor). On SIGTERM the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn

from streamgauge.app import create_app, server_options
from streamgauge.bus.local import LocalBus
from streamgauge.config import Settings
from streamgauge.core.engine import load_admin_token
from streamgauge.store.memory import tune_allocator
from streamgauge.workers import routing
from streamgauge.workers.asgi import Tagged
from streamgauge.workers.engine import WorkerEngine
from streamgauge.workers.server import GracefulServer

log = logging.getLogger("streamgauge.workers")

PEEK_WAIT = 0.002  # between two looks at a first line that has not fully arrived
PEEK_TIMEOUT = 10.0  # a connection that sends no first line by then goes to the writer


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on the shared port (``SO_REUSEPORT``: the writer's group)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def peek_head(sock: socket.socket, timeout: float = PEEK_TIMEOUT) -> bytes:
    """The first bytes the client sent, up to its first line, left unread in the socket."""
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.wait_for(_readable(sock), max(0.0, deadline - time.monotonic()))
        try:
            head = sock.recv(routing.MAX_LINE, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not head or routing.complete(head):
            return head
        if time.monotonic() >= deadline:
            return head
        await asyncio.sleep(PEEK_WAIT)  # more is coming: the socket stays readable meanwhile


async def accept_loop(
    listener: socket.socket, route: Callable[[socket.socket], Coroutine[Any, Any, None]], name: str
) -> None:
    """Accept connections on ``listener`` and ``route`` each (a task of its own) until the
    listener closes."""
    loop = asyncio.get_running_loop()
    routing_tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            conn, _ = await loop.sock_accept(listener)
        except (ConnectionAbortedError, BlockingIOError, InterruptedError):
            continue
        except OSError as e:  # the listener closed (shutdown)
            log.debug("%s: accept: %s", name, e)
            return
        conn.setblocking(False)
        task = asyncio.create_task(route(conn))
        routing_tasks.add(task)
        task.add_done_callback(routing_tasks.discard)


def hand_message(to: int) -> bytes:
    """The message a passed connection goes with: ``c``, then the process that serves it
    when that is not the writer (the writer passes it on)."""
    return b"c" if to == 0 else b"c" + bytes([to])


class WorkerServer(GracefulServer):
    """uvicorn over connections this worker accepts and chooses to serve, and those the writer
    passes to it (push-feed connections of the tokens it serves, ``routing.target``)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        worker: int,
        bind: tuple[str, int],
        handoff: socket.socket,
        count: int = 2,
        feed: bool = False,
        writer: bool = True,
    ) -> None:
        super().__init__(config)
        self.worker = worker
        self.count = count
        self.feed = feed
        self.writer = writer  # the writer serves subscribers too (``routing.target``)
        self._bind = bind
        self._listener: socket.socket | None = None
        self._handoff = handoff
        self._accepting: asyncio.Task[None] | None = None
        self._adopting: set[asyncio.Task[None]] = set()
        self.served = 0
        self.handed = 0
        self.passed = 0  # connections the writer passed to this worker

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])
        if self.started:  # bound once serving: no connection waits for this worker to start
            if self.feed or not self.writer:
                asyncio.get_running_loop().add_reader(self._handoff.fileno(), self._passed)
            self._listener = listen(*self._bind)
            self._accepting = asyncio.create_task(
                accept_loop(self._listener, self._route, f"worker {self.worker}")
            )

    def _passed(self) -> None:
        """A connection the writer passed (``SCM_RIGHTS``): served here as if accepted here."""
        try:
            msg, fds, _, _ = socket.recv_fds(self._handoff, 16, 16)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            msg, fds = b"", []
        if not msg and not fds:  # the writer's end closed (the bus tells the shutdown)
            asyncio.get_running_loop().remove_reader(self._handoff.fileno())
            return
        for fd in fds:
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            if self.should_exit:
                conn.close()
                continue
            self.passed += 1
            task = asyncio.create_task(self.adopt(conn))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    def _begin_shutdown(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        if self.feed or not self.writer:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._handoff.fileno())
        super()._begin_shutdown()

    async def _route(self, conn: socket.socket) -> None:
        try:
            head = await peek_head(conn)
        except (TimeoutError, OSError):
            head = b""
        to = (
            routing.target(head, self.worker, self.count, feed=self.feed, writer=self.writer)
            if head
            else 0
        )
        if to == self.worker:
            if not self.should_exit:
                self.served += 1
                await self.adopt(conn)
                return
            if not routing.serves_locally(head):  # its own feed token's, while it stops:
                conn.close()  # no other process may serve it (the client retries)
                return
            to = 0  # a live stream while this worker stops: the writer serves it
        self.handed += 1
        message = hand_message(to)
        try:
            await asyncio.to_thread(socket.send_fds, self._handoff, [message], [conn.fileno()])
        except OSError as e:  # the writer is gone: the client retries
            log.warning("worker %d: handing a connection to the writer failed: %s", self.worker, e)
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streamgauge.workers")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--bus-fd", type=int, required=True)
    parser.add_argument("--handoff-fd", type=int, required=True)
    parser.add_argument("--count", type=int, default=2)  # processes serving the port
    parser.add_argument("--feed", action="store_true")  # the push feed served in workers
    args = parser.parse_args(argv)
    tune_allocator()  # as the writer process does (``cli._serve``)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(data=args.data, workers=1, mqtt=None)
    token = load_admin_token(settings)[0]  # the writer made it (or the environment has it)
    bus_sock = socket.socket(fileno=args.bus_fd)
    handoff = socket.socket(fileno=args.handoff_fd)
    handoff.setblocking(True)
    handoff.settimeout(5.0)
    server: WorkerServer | None = None

    def lost() -> None:
        if server is not None and not server.should_exit:
            server.handle_exit(0, None)

    bus = LocalBus(bus_sock, f"worker-{args.worker}", lost)
    feed_owns = None
    if args.feed:
        me, count = args.worker, args.count
        writer = settings.writer_subscribers
        feed_owns = lambda digest: routing.owner(digest, count, writer) == me  # noqa: E731
    engine = WorkerEngine(settings, token, bus, feed_owns=feed_owns)
    app: Any = Tagged(create_app(settings, engine=engine), args.worker, close=True)
    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=5,
        **server_options(settings),
    )
    server = WorkerServer(
        config,
        worker=args.worker,
        bind=(args.host, args.port),
        handoff=handoff,
        count=args.count,
        feed=args.feed,
        writer=settings.writer_subscribers,
    )
    server.run(sockets=[])
    raise SystemExit(0 if server.started else 1)
