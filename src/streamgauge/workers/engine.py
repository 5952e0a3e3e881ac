"""A fan-out worker's engine: the writer's engine, read-only, following the writer's log.

It is the engine every face calls (same streams, filters, handoff, framing), over the embedded
store's read-only view (``store.factory.SQLITE_REPLICA``) and linked to the writer process as a
cluster node is linked to the others (``core/cluster.py``), over ``bus/local.py``: committed
batches and metadata events come from the writer in commit order; what the bus skipped is read
from SQLite (a WAL reader sees every commit); the store's head is looked at every
``cluster_head_check_seconds``. A stream resuming from a cursor the writer handed out a moment
ago waits (at most ``cluster_resume_wait_seconds``) until this process has it.

Nothing here writes: alert rules, deliveries, retention, feed sessions and ingest run in the
writer process only.
"""

from __future__ import annotations

from streamgauge.bus.local import LocalBus
from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.store.factory import SQLITE_REPLICA
from streamgauge.store.files import private_dir


class WorkerEngine(Engine):
    """The engine of a fan-out worker process: streams only, fed by the writer's ``bus``."""

    def __init__(self, settings: Settings, admin_token: str, bus: LocalBus) -> None:
        super().__init__(settings, admin_token, backend=SQLITE_REPLICA)
        self._bus = bus

    async def start(self) -> None:
        private_dir(self.settings.data)
        await self.store.open(self._committed)
        loaded = getattr(self.store, "events_loaded", None)
        await self._join_cluster(self._bus, meta_after=loaded)
        self._start_clocks()
