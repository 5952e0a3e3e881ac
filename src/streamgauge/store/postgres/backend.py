"""The PostgreSQL backend's bundle (``store.factory.Backend``): its store and its table modules
and services. Imported by ``store.factory.postgresql`` when a server or a test asks for it, so
that an embedded server never loads the PostgreSQL driver."""

from __future__ import annotations

from streamgauge.config import Settings
from streamgauge.domain.readmodel import ReadModel
from streamgauge.store.api import Store
from streamgauge.store.factory import Backend, Rules
from streamgauge.store.postgres import alerts as pg_alerts
from streamgauge.store.postgres import deliveries as pg_deliveries
from streamgauge.store.postgres import metadata as pg_metadata
from streamgauge.store.postgres import ops as pg_ops
from streamgauge.store.postgres.conn import Conn as PgConn
from streamgauge.store.postgres.conn import Tx as PgTx
from streamgauge.store.postgres.consumers import PgConsumerPositions
from streamgauge.store.postgres.deliveries import PgDeliveryPositions
from streamgauge.store.postgres.face_state import PgDTAccounts, PgDTConnectors
from streamgauge.store.postgres.feeds import FeedStore as PgFeedStore
from streamgauge.store.postgres.store import PgStore


def _pg_store(settings: Settings, rules: Rules, registry: ReadModel) -> Store[PgTx, PgConn]:
    if settings.store is None:
        raise ValueError("the postgresql backend needs settings.store (a PostgreSQL URL)")
    return PgStore(
        settings.store,
        readers=settings.readers,
        rules=rules,
        registry=registry,
        connect_timeout=settings.store_connect_timeout_seconds,
        statement_timeout=settings.store_statement_timeout_seconds,
    )


POSTGRESQL: Backend[PgTx, PgConn] = Backend(
    name="postgresql",
    open_store=_pg_store,
    metadata=pg_metadata,
    alerts=pg_alerts,
    deliveries=pg_deliveries,
    feed_sessions=PgFeedStore,
    consumer_positions=PgConsumerPositions,
    delivery_positions=PgDeliveryPositions,
    ops=pg_ops,
    dt_accounts=PgDTAccounts,
    dt_connectors=PgDTConnectors,
)
