"""A fan-out worker's engine: the writer's engine, read-only, following the writer's log.

It is the engine every face calls (same streams, filters, handoff, framing), over the embedded
store's read-only view (``store.factory.SQLITE_REPLICA``) and linked to the writer process as a
cluster node is linked to the others (``core/cluster.py``), over ``bus/local.py``: committed
batches and metadata events come from the writer in commit order; what the bus skipped is read
from SQLite (a WAL reader sees every commit); the store's head is looked at every
``cluster_head_check_seconds``. A stream resuming from a cursor the writer handed out a moment
ago waits (at most ``cluster_resume_wait_seconds``) until this process has it.

Its per-process state is the server's (control frames, ``bus/local.py``): it answers the
writer's asks for its metrics, sends its status every ``STATUS_SECONDS``, and tells the writer
of every failed login it counts and counts every one the writer tells it of.

Nothing here writes: alert rules, deliveries, retention and ingest run in the writer process
only; with the push feed served in workers (``STREAMGAUGE_WORKERS_FEED``), the sessions of the
feed tokens this worker serves are written by it (``store/sqlite/replica_feeds.py``), nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence

from streamgauge.bus import local
from streamgauge.bus.local import LocalBus
from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.store.factory import SQLITE_REPLICA, replica_feeds
from streamgauge.store.files import private_dir

log = logging.getLogger("streamgauge.workers")

STATUS_SECONDS = 1.0  # how often a worker tells the writer its state (/healthz)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class WorkerEngine(Engine):
    """The engine of a fan-out worker process: streams only, fed by the writer's ``bus``.

    ``feed_owns``: the push feed is served by every process, each token by one
    (``routing.owner``); this says which tokens (by digest) are this worker's. Their sessions
    are written here (``store.factory.replica_feeds``), tokens follow the writer's events."""

    def __init__(
        self,
        settings: Settings,
        admin_token: str,
        bus: LocalBus,
        *,
        feed_owns: Callable[[bytes], bool] | None = None,
    ) -> None:
        super().__init__(settings, admin_token, backend=SQLITE_REPLICA)
        self.registry.keeps_qc_limits = False  # the writer runs QC, not a worker
        self._bus = bus
        self._close_feeds: Callable[[], None] | None = None
        if feed_owns is not None:
            feeds, self._close_feeds = replica_feeds(self.store, settings, feed_owns)
            self.feeds = feeds
            self.followers.append(feeds.follow)
            self.resyncs.append(feeds.reload_tokens)  # behind what the event feed keeps
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reporting: asyncio.Task[None] | None = None
        bus.on_control = self._control
        self.auth.limiter.on_failed = self._failed_here

    async def start(self) -> None:
        private_dir(self.settings.data)
        self._loop = asyncio.get_running_loop()
        await self.store.open(self._committed)
        loaded = getattr(self.store, "events_loaded", None)
        if self._close_feeds is not None:
            # Tokens read after the registry's snapshot: the token events after it, followed
            # next, apply in order on top (a put again is the same, a drop drops).
            await self.feeds.start()
        await self._join_cluster(self._bus, meta_after=loaded)
        self._start_clocks()
        self._reporting = asyncio.create_task(self._report())

    async def stop(self) -> None:
        if self._reporting is not None:
            self._reporting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporting
            self._reporting = None
        try:
            await super().stop()
        finally:
            if self._close_feeds is not None:
                self._close_feeds()

    def status(self) -> dict[str, object]:
        return {
            "head": self.head,
            "subscribers": self.hub.subscribers,
            "resident_memory_bytes": resident_bytes(),
        }

    async def _report(self) -> None:
        while True:
            self._bus.send_control(local.STATUS, 0, 0, json.dumps(self.status()).encode())
            await asyncio.sleep(STATUS_SECONDS)

    def _control(self, code: int, first: int, last: int, payload: bytes) -> None:
        if code == local.METRICS_ASK:
            self._bus.send_control(local.METRICS, first, 0, self.metrics.render())
        elif code == local.AUTH_FAILED:
            self.auth.limiter.count(local.decode_keys(payload))
        elif code == local.FEEDS_ASK:
            served = self.feeds.connected(last) if self._close_feeds is not None else []
            self._bus.send_control(local.FEEDS, first, 0, local.encode_sessions(served))

    def _failed_here(self, keys: Sequence[tuple[str, str]]) -> None:
        """A login failed here (maybe in a hashing thread): the writer and the other workers
        count it too."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        payload = local.encode_keys(keys)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._bus.send_control, local.AUTH_FAILED, 0, 0, payload)
