"""A fan-out worker's engine: the writer's engine, read-only, following the writer's log.

It is the engine every face calls (same streams, filters, handoff, framing), over the embedded
store's read-only view (``store.factory.SQLITE_REPLICA``) and linked to the writer process as a
cluster node is linked to the others (``core/cluster.py``), over ``bus/local.py``: committed
batches and metadata events come from the writer in commit order; what the bus skipped is read
from SQLite (a WAL reader sees every commit); the store's head is looked at every
``cluster_head_check_seconds``. A stream resuming from a cursor the writer handed out a moment
ago waits (at most ``cluster_resume_wait_seconds``) until this process has it.

Nothing here writes: alert rules, deliveries, retention and ingest run in the writer process
only; with the push feed served in workers (``STREAMGAUGE_WORKERS_FEED``), the sessions of the
feed tokens this worker serves are written by it (``workers/feeds.py``), nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamgauge.bus.local import LocalBus
from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.store.factory import SQLITE_REPLICA
from streamgauge.store.files import private_dir
from streamgauge.store.sqlite.feeds import FeedStore
from streamgauge.store.sqlite.replica import ReplicaStore
from streamgauge.workers.feeds import FeedTables


class WorkerEngine(Engine):
    """The engine of a fan-out worker process: streams only, fed by the writer's ``bus``.

    ``feed_owns``: the push feed is served by every process, each token by one
    (``routing.owner``); this says which tokens (by digest) are this worker's. Their sessions
    are written here (``workers/feeds.FeedTables``), tokens follow the writer's events."""

    def __init__(
        self,
        settings: Settings,
        admin_token: str,
        bus: LocalBus,
        *,
        feed_owns: Callable[[bytes], bool] | None = None,
    ) -> None:
        super().__init__(settings, admin_token, backend=SQLITE_REPLICA)
        self._bus = bus
        self._tables: FeedTables | None = None
        if feed_owns is not None:
            assert isinstance(self.store, ReplicaStore)
            self._tables = FeedTables(self.store)
            tables: Any = self._tables  # the FeedStore's store: registry, read, write
            feeds = FeedStore(
                tables,
                settings.feed_session_retention_hours * 3600,
                settings.feed_sessions_per_token,
            )
            feeds.owns = feed_owns
            self.feeds = feeds
            self.followers.append(feeds.follow)
            self.resyncs.append(feeds.reload_tokens)  # behind what the event feed keeps

    async def start(self) -> None:
        private_dir(self.settings.data)
        await self.store.open(self._committed)
        loaded = getattr(self.store, "events_loaded", None)
        if self._tables is not None:
            # Tokens read after the registry's snapshot: the token events after it, followed
            # next, apply in order on top (a put again is the same, a drop drops).
            await self.feeds.start()
        await self._join_cluster(self._bus, meta_after=loaded)
        self._start_clocks()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if self._tables is not None:
                self._tables.close()
