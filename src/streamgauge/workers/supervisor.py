"""The writer process's side of ``serve --workers N``: the fan-out worker processes.

The writer (this process) keeps everything it does alone: the SQLite writer, ingest, metadata,
alert rules, deliveries, retention, feed sessions; and it serves, on the shared port, every
connection the kernel gives it (streams included). ``Workers`` spawns ``N - 1`` worker
processes (``workers/process.py``) and, for each:

* relays every batch it hands on and every metadata run it commits over the worker's bus
  socket (``bus/local.Relay``), before its own hub has the batch;
* serves the connections the worker hands over (``SCM_RIGHTS`` on a ``SOCK_SEQPACKET`` pair):
  everything that is not a live stream (with the push feed in workers, a feed connection of
  another worker's token is passed on to that worker, ``Workers.pass_to``);
* restarts it when it exits (a kill -9 included), after a short, growing pause; a worker holds
  no data, so nothing acknowledged is lost (its clients resume, on any process);
* makes the per-process state the server's (control frames, ``bus/local.py``): ``/metrics``
  asks every worker for its metrics and merges them (``metrics.merge``), ``/healthz`` lists
  each worker's last status, and a failed login counted in any process is counted in every
  process (the auth-failure limit is one limit).

Workers get SIGTERM when the writer shuts down (their streams close with resume cursors), and
when it dies (``PR_SET_PDEATHSIG``, and their bus socket closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamgauge.bus import local
from streamgauge.bus.codec import encode_batch
from streamgauge.bus.local import Relay
from streamgauge.core.cluster import MetaRun, encode_meta
from streamgauge.core.engine import Engine
from streamgauge.domain.batch import Batch
from streamgauge.domain.events import MetaEvent
from streamgauge.domain.feeds import FeedSession, FeedToken
from streamgauge.metrics import Peer
from streamgauge.workers import spawn
from streamgauge.workers.server import GracefulServer

log = logging.getLogger("streamgauge.workers")

RESTART_FIRST = 0.2  # seconds before restarting a worker that exited; doubles while it keeps
RESTART_MAX = 5.0  # exiting within STABLE seconds of its start
STABLE = 10.0
STOP_GRACE = 8.0  # a worker asked to stop gets this long, then SIGKILL
METRICS_WAIT = 1.0  # /metrics waits this long for the workers' metrics (one missing: up 0)
STATUS_STALE = 5.0  # a worker whose last status is older is "unresponsive" in /healthz
STARTUP_FAILURE = 3  # uvicorn's exit status when the lifespan startup fails
READY_WAIT = 30.0  # the writer starts accepting after its workers are ready, or after this
PASS_WAITING = 10_000  # connections waiting to be passed to one worker (``Workers.pass_to``)


@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen[bytes]
    handoff: socket.socket
    started: float
    watch: asyncio.Task[None] | None = None
    adopting: set[asyncio.Task[None]] = field(default_factory=set)
    # Connections waiting to be passed to this worker: its handoff socket was full (a burst
    # of new connections, e.g. 1,000 subscribers opening at once; about 280 fit). Passed in
    # order as soon as the socket is writable again (``Workers._drain``).
    waiting: deque[socket.socket] = field(default_factory=deque)


class Workers:
    """``count - 1`` fan-out workers beside this writer process (``count`` processes serve)."""

    def __init__(
        self,
        count: int,
        *,
        host: str,
        port: int,
        data: Path,
        server: GracefulServer,
        engine: Engine,
        feed: bool = False,
        launched: dict[int, spawn.Launched] | None = None,
    ) -> None:
        self.count = count
        self._launched = dict(launched or {})  # started before the app (``cli._serve``)
        self.feed = feed  # the push feed served by every process (``routing.target``)
        self.host, self.port, self.data = host, port, data
        self.server = server
        self.engine = engine
        self.relay = Relay(on_control=self._control)
        self.restarts = 0
        self._restarts: dict[int, int] = {}  # per worker
        self._asks = 0
        self._asked: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._status: dict[str, tuple[float, dict[str, object]]] = {}  # name -> (when, status)
        self._heard = asyncio.Event()  # a status arrived
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: dict[int, _Worker] = {}
        self._delay: dict[int, float] = {}
        self._stopping = False
        self.handed = 0  # connections the workers handed to this process
        self.passed = 0  # connections this process passed to a worker

    @property
    def pids(self) -> dict[int, int]:
        """Worker number -> process id, of the workers running now."""
        return {n: w.proc.pid for n, w in self._workers.items() if w.proc.poll() is None}

    async def start(self) -> None:
        engine = self.engine
        engine.relays.append(self._batch)
        if engine.store.on_events is not None:
            raise RuntimeError("fan-out workers and the cluster mode do not mix (yet)")
        engine.store.on_events = self._meta
        self._loop = asyncio.get_running_loop()
        engine.metrics.peers = self.peers
        if self.feed:
            engine.peer_feeds = self.feed_sessions
        engine.process_health = self.health
        engine.auth.limiter.on_failed = self._failed_here
        launched, self._launched = self._launched, {}
        for n in range(1, self.count):
            if n in launched:
                await self._adopt(launched.pop(n))
            else:
                await self._spawn(n)

    # -- the per-process state made the server's ------------------------------------------------

    def _control(self, name: str, code: int, first: int, last: int, payload: bytes) -> None:
        """A control frame from worker ``name`` (``bus/local.py``)."""
        if code in (local.METRICS, local.FEEDS):  # a reply to ``_ask``
            fut = self._asked.pop((name, first), None)
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif code == local.STATUS:
            status = json.loads(payload)
            if isinstance(status, dict):
                self._status[name] = (asyncio.get_running_loop().time(), status)
                self._heard.set()
        elif code == local.AUTH_FAILED:
            keys = local.decode_keys(payload)
            self.engine.auth.limiter.count(keys)  # counted here, and in the other workers
            for other in self.relay.names:
                if other != name:
                    self.relay.send_control(local.AUTH_FAILED, 0, 0, payload, to=other)

    async def ready(self, timeout: float = READY_WAIT) -> bool:
        """Wait until every worker has reported (its engine follows the log; it binds the port
        right after), at most ``timeout`` seconds. Whether they all did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = [
                n
                for n, w in self._workers.items()
                if (seen := self._status.get(str(n))) is None or seen[0] < w.started
            ]
            if len(self._workers) == self.count - 1 and not missing:
                return True
            if self._stopping:  # a shutdown signal meanwhile
                return False
            left = deadline - loop.time()
            if left <= 0:
                log.warning("fan-out workers %s not ready after %.0f s: serving", missing, timeout)
                return False
            self._heard.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard.wait(), min(left, 0.5))

    def _failed_here(self, keys: Sequence[tuple[str, str]]) -> None:
        """A login failed in this process (maybe in a hashing thread): every worker counts it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        payload = local.encode_keys(keys)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.relay.send_control, local.AUTH_FAILED, 0, 0, payload)

    async def _ask(self, code: int, last: int = 0) -> dict[int, bytes]:
        """Ask every running worker (control frame ``code``, with ``last``) and wait at most
        ``METRICS_WAIT`` for their replies: each answering worker's payload, by number."""
        loop = asyncio.get_running_loop()
        asked: dict[int, asyncio.Future[bytes]] = {}
        running = set(self.relay.names)
        for n in range(1, self.count):
            name = str(n)
            if name not in running:
                continue
            self._asks += 1
            fut: asyncio.Future[bytes] = loop.create_future()
            self._asked[(name, self._asks)] = fut
            if self.relay.send_control(code, self._asks, last, b"", to=name):
                asked[n] = fut
            else:
                self._asked.pop((name, self._asks), None)
        if asked:
            await asyncio.wait(asked.values(), timeout=METRICS_WAIT)
        for key in [k for k, f in self._asked.items() if f in asked.values()]:
            del self._asked[key]  # unanswered asks (a late answer is dropped)
        return {n: f.result() for n, f in asked.items() if f.done()}

    async def peers(self) -> list[Peer]:
        """Every worker's metrics (Prometheus text), asked for now; None for one that is not
        running or did not answer within ``METRICS_WAIT``."""
        got = await self._ask(local.METRICS_ASK)
        return [Peer(str(n), got.get(n), self._restarts.get(n, 0)) for n in range(1, self.count)]

    async def feed_sessions(self, project_pk: int) -> list[tuple[FeedToken, FeedSession]]:
        """The push-feed sessions of the project the workers serve now (with the feed in
        workers), asked for now; a worker that does not answer within ``METRICS_WAIT`` (or
        whose answer does not parse) adds none."""
        out: list[tuple[FeedToken, FeedSession]] = []
        for n, payload in sorted((await self._ask(local.FEEDS_ASK, project_pk)).items()):
            try:
                out.extend(local.decode_sessions(payload))
            except ValueError:
                log.warning("worker %d's feed sessions cannot be read", n)
        return out

    def health(self) -> dict[str, object]:
        """The workers' state for ``/healthz``: each one's process id, state (``up``: its
        last status is recent; ``starting``: none yet; ``unresponsive``; ``restarting``: not
        running), restarts, and its last status (log head, subscribers, resident memory)."""
        now = asyncio.get_running_loop().time()
        listed: list[dict[str, object]] = []
        for n in range(1, self.count):
            w = self._workers.get(n)
            running = w is not None and w.proc.poll() is None
            seen = self._status.get(str(n))
            item: dict[str, object] = {"worker": n, "pid": w.proc.pid if running and w else None}
            if not running:
                item["state"] = "restarting"
            elif seen is None or (w is not None and seen[0] < w.started):
                item["state"] = "starting"
            elif now - seen[0] > STATUS_STALE:
                item["state"] = "unresponsive"
            else:
                item["state"] = "up"
            if running and seen is not None and w is not None and seen[0] >= w.started:
                item.update(seen[1])
            item["restarts"] = self._restarts.get(n, 0)
            listed.append(item)
        return {
            "processes": self.count,
            "up": sum(1 for item in listed if item["state"] == "up"),
            "workers": listed,
        }

    def _batch(self, batch: Batch) -> None:
        if len(batch):
            self.relay.send("batch", batch.first, batch.last, encode_batch(batch))

    def _meta(self, first: int, last: int, events: list[MetaEvent]) -> None:
        self.relay.send("meta", first, last, encode_meta(MetaRun(first, last, events)))

    async def _spawn(self, n: int) -> None:
        launched = spawn.launch(
            n, count=self.count, host=self.host, port=self.port, data=self.data, feed=self.feed
        )
        await self._adopt(launched)

    async def _adopt(self, launched: spawn.Launched) -> None:
        """Follow a worker just started: relay to it, serve what it hands over, watch it."""
        loop = asyncio.get_running_loop()
        n, proc, hand = launched.number, launched.proc, launched.handoff
        await self.relay.add(str(n), launched.bus)
        hand.setblocking(False)
        w = _Worker(n, proc, hand, loop.time())
        loop.add_reader(hand.fileno(), self._handed, w)
        self._workers[n] = w
        w.watch = asyncio.create_task(self._watch(w))

    def _handed(self, w: _Worker) -> None:
        """Connections the worker hands over: served here as if accepted here."""
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(w.handoff, 16, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            if not msg and not fds:  # the worker's end closed
                asyncio.get_running_loop().remove_reader(w.handoff.fileno())
                return
            to = msg[1] if len(msg) > 1 else 0  # the process serving it (``hand_message``)
            for fd in fds:
                conn = socket.socket(fileno=fd)
                conn.setblocking(False)
                self.handed += 1
                if self._stopping:
                    conn.close()
                    continue
                if to:
                    self.pass_to(to, conn)
                    continue
                task = asyncio.create_task(self.server.adopt(conn))
                w.adopting.add(task)
                task.add_done_callback(w.adopting.discard)

    def pass_to(self, n: int, conn: socket.socket) -> None:
        """Pass ``conn`` (nothing read from it) to worker ``n``, which serves it; a worker that
        is not running (restarting) cannot: the connection is closed and its client retries
        (no other process may serve what is worker ``n``'s). When the worker's handoff socket
        is full (a burst of connections: the ``SOCK_SEQPACKET`` pair's buffer holds a few hundred
        handoffs), the connection waits, in order, until it is writable again; at most
        ``PASS_WAITING`` connections wait per worker (beyond that they are closed, and their
        clients retry)."""
        w = self._workers.get(n)
        if w is None or w.proc.poll() is not None or self._stopping:
            conn.close()
            return
        if w.waiting:
            if len(w.waiting) >= PASS_WAITING:
                log.warning(
                    "worker %d: %d connections wait to be passed; closing one", n, PASS_WAITING
                )
                conn.close()
            else:
                w.waiting.append(conn)
            return
        if not self._pass(w, conn):
            w.waiting.append(conn)
            asyncio.get_running_loop().add_writer(w.handoff.fileno(), self._drain, w)

    def _pass(self, w: _Worker, conn: socket.socket) -> bool:
        """Pass ``conn`` to ``w`` now; False (``conn`` kept open) if its socket is full."""
        try:
            socket.send_fds(w.handoff, [b"c"], [conn.fileno()])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            log.warning("passing a connection to worker %d failed: %s", w.number, e)
        else:
            self.passed += 1
        conn.close()
        return True

    def _drain(self, w: _Worker) -> None:
        """The handoff socket of ``w`` is writable: pass what waits, in order."""
        while w.waiting:
            if w.proc.poll() is not None or self._stopping:
                self._drop_waiting(w)
                break
            if not self._pass(w, w.waiting[0]):
                return
            w.waiting.popleft()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_writer(w.handoff.fileno())

    def _drop_waiting(self, w: _Worker) -> None:
        while w.waiting:
            w.waiting.popleft().close()

    async def _watch(self, w: _Worker) -> None:
        code = await asyncio.to_thread(w.proc.wait)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(w.handoff.fileno())
        with contextlib.suppress(ValueError, OSError):
            loop.remove_writer(w.handoff.fileno())
        self._drop_waiting(w)
        w.handoff.close()
        self.relay.remove(str(w.number))
        if self._workers.get(w.number) is w:
            del self._workers[w.number]
        if self._stopping:
            return
        lived = loop.time() - w.started
        delay = RESTART_FIRST if lived >= STABLE else self._delay.get(w.number, RESTART_FIRST)
        self._delay[w.number] = min(RESTART_MAX, delay * 2)
        log.warning(
            "fan-out worker %d (pid %d) exited with %s; restarting it in %.1f s",
            w.number,
            w.proc.pid,
            code,
            delay,
        )
        self.restarts += 1
        self._restarts[w.number] = self._restarts.get(w.number, 0) + 1
        self._status.pop(str(w.number), None)
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(w.number)

    def begin_shutdown(self) -> None:
        """Ask every worker to stop (their streams end with resume cursors)."""
        self._stopping = True
        for w in self._workers.values():
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)

    async def stop(self) -> None:
        self.begin_shutdown()
        watches = [w.watch for w in self._workers.values() if w.watch is not None]
        if watches:
            _, late = await asyncio.wait(watches, timeout=STOP_GRACE)
            for w in list(self._workers.values()):
                if w.proc.poll() is None:
                    w.proc.kill()
            if late:
                await asyncio.wait(late, timeout=STOP_GRACE)
        self.relay.close()
        if self.engine.metrics.peers == self.peers:
            self.engine.metrics.peers = None
        if self.engine.process_health == self.health:
            self.engine.process_health = None
        if self.engine.auth.limiter.on_failed == self._failed_here:
            self.engine.auth.limiter.on_failed = None
        for fut in self._asked.values():
            fut.cancel()
        self._asked.clear()
        if self.engine.store.on_events == self._meta:
            self.engine.store.on_events = None
        if self._batch in self.engine.relays:
            self.engine.relays.remove(self._batch)


class WriterServer(GracefulServer):
    """The writer process's server with ``count - 1`` fan-out workers beside it.

    ``feed``: the push feed is served by every process, each token's connections by one
    (``routing.target``): this process then accepts its connections itself, looks at each
    one's first line (``MSG_PEEK``) and passes a feed connection of a worker's token to that
    worker (``Workers.pass_to``); its own feed store expires only its own tokens' sessions."""

    def __init__(
        self,
        config: object,
        *,
        count: int,
        host: str,
        port: int,
        data: Path,
        feed: bool = False,
        launched: dict[int, spawn.Launched] | None = None,
        writer: bool = True,
    ) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        self.count, self.host, self.port, self.data = count, host, port, data
        self.launched = launched or {}  # workers started before the app was imported
        self.feed = feed and count > 1
        # False: this process serves no subscriber; it passes each to a worker in turn.
        self.writer = writer or count < 2
        self._turn = 0
        self.workers: Workers | None = None
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """The engine (the app's lifespan) and the workers (at once if the database exists,
        else after the engine made it), and only once they are ready (or after
        ``READY_WAIT``) accepting: a server's first clients, which may be its long-lived
        streams, are spread over every process, not all taken by this one while the workers
        start. (Connections made meanwhile wait in the listen queue.)"""
        lifespan = self.lifespan
        engine = getattr(getattr(self.config.app, "state", None), "engine", None)
        assert isinstance(engine, Engine)
        self.workers = Workers(
            self.count,
            host=self.host,
            port=self.port,
            data=self.data,
            server=self,
            engine=engine,
            feed=self.feed,
            launched=self.launched,
        )
        if self.feed:
            from streamgauge.workers import routing

            count = self.count
            writer = self.writer
            engine.feeds.owns = lambda digest: routing.owner(digest, count, writer) == 0  # type: ignore[attr-defined]
        # A restart: the database is there, so the workers load their registries from it
        # while this process loads its own (on another core), instead of after it.
        path = getattr(engine.store, "path", None)
        early = bool(self.launched) or (isinstance(path, Path) and path.exists())
        if early:
            await self.workers.start()
        await lifespan.startup()
        if lifespan.should_exit:
            await self.workers.stop()
            sys.exit(STARTUP_FAILURE)  # as uvicorn's does; the lifespan logged why
        if not early:
            await self.workers.start()
        await self.workers.ready()

        async def started() -> None:
            return None

        lifespan.startup = started  # done above: not twice
        if (self.feed or not self.writer) and sockets:
            self._listener = sockets[0]
            sockets = []
        await super().startup(sockets)
        if not self.started:
            return
        if self._listener is not None:
            from streamgauge.workers.process import accept_loop

            self._listener.setblocking(False)
            self._accepting = asyncio.create_task(
                accept_loop(self._listener, self._route, "writer")
            )

    async def _route(self, conn: socket.socket) -> None:
        from streamgauge.workers import routing
        from streamgauge.workers.process import peek_head

        try:
            head = await peek_head(conn)
        except (TimeoutError, OSError):
            head = b""
        to = (
            routing.target(head, 0, self.count, feed=self.feed, writer=self.writer, turn=self._turn)
            if head
            else 0
        )
        if to and routing.serves_locally(head):
            self._turn += 1
            if self.workers is not None and to not in self.workers.pids:
                to = 0  # its worker is restarting: a live stream is served here meanwhile
        if to and self.workers is not None:
            self.workers.pass_to(to, conn)
        else:
            await self.adopt(conn)

    def _begin_shutdown(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        if self.workers is not None:
            self.workers.begin_shutdown()
        super()._begin_shutdown()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.workers is not None:
            await self.workers.stop()
        await super().shutdown(sockets)
