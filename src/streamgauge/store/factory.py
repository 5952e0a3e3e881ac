"""Building a backend's store from the settings: the one place that names an implementation.

A ``Backend`` bundles what a storage backend provides behind the protocols of ``store.api`` and
``store.face_state``: how to build its store, the table modules that run in its transactions,
its services (feed sessions, consumer positions, face state) and the storage parts of core
operations (``StoreOps``). The engine takes its backend from ``backend_for(settings)`` and never
names the package behind it. ``backends()`` has the embedded one, ``"sqlite"``, and
``"postgresql"`` (``settings.store`` set to a PostgreSQL URL: ``store/postgres/backend.py``,
imported only when asked for: an embedded server never loads the PostgreSQL driver); each is
a parameter of the conformance suite's ``backend`` fixture.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from streamgauge.config import DB_NAME, INDEX_NAME, Settings
from streamgauge.domain.commit import CommitRules
from streamgauge.domain.readmodel import ReadModel
from streamgauge.store.api import (
    AlertTables,
    ConsumerPositions,
    DeliveryPositions,
    DeliveryTables,
    FeedSessions,
    MetadataTables,
    Store,
    StoreOps,
)
from streamgauge.store.face_state import DTAccountStore, DTConnectorStore
from streamgauge.store.sqlite import alerts, deliveries, metadata, ops
from streamgauge.store.sqlite.consumers import SqliteConsumerPositions
from streamgauge.store.sqlite.deliveries import SqliteDeliveryPositions
from streamgauge.store.sqlite.face_state import SqliteDTAccounts, SqliteDTConnectors
from streamgauge.store.sqlite.feeds import FeedStore
from streamgauge.store.sqlite.replica import ReplicaStore
from streamgauge.store.sqlite.replica_feeds import FeedTables
from streamgauge.store.sqlite.store import SqliteStore, Tx, prefetch_log_state

TxT = TypeVar("TxT")
ConnT = TypeVar("ConnT")

# The embedded backend's store: its write closures take a ``Tx``, its read closures a
# ``sqlite3.Connection`` (what the table modules of ``streamgauge.store`` are written against).
EmbeddedStore = Store[Tx, sqlite3.Connection]


# The engine's commit rules (duplicates, conflicts, QC) over the store's registry.
Rules = Callable[[ReadModel], CommitRules]


@dataclass(frozen=True, slots=True)
class Backend(Generic[TxT, ConnT]):
    """A storage backend: how to build its store, and its table modules and services.

    The core holds one as ``Backend[Any, Any]`` (``Engine.backend``): the transaction and read
    handle types are the backend's own, checked here where each bundle is built."""

    name: str
    # (settings, the engine's commit rules, the engine's registry) -> the store, not yet opened
    open_store: Callable[[Settings, Rules, ReadModel], Store[TxT, ConnT]]
    metadata: MetadataTables[TxT, ConnT]
    alerts: AlertTables[TxT, ConnT]
    deliveries: DeliveryTables[TxT, ConnT]
    # (store, session retention in seconds, sessions per token) -> feed tokens and sessions
    feed_sessions: Callable[[Store[TxT, ConnT], float, int], FeedSessions]
    consumer_positions: Callable[[Store[TxT, ConnT]], ConsumerPositions]  # core/consumers
    # deliveries' cursors and dead letters (core/deliveries.py)
    delivery_positions: Callable[[Store[TxT, ConnT]], DeliveryPositions]
    ops: StoreOps[TxT, ConnT]  # storage parts of core operations (device transfer, probe)
    # face state (store/face_state.py), each over the store
    dt_accounts: Callable[[Store[TxT, ConnT]], DTAccountStore[TxT]]
    dt_connectors: Callable[[Store[TxT, ConnT]], DTConnectorStore]


def prefetch_embedded(settings: Settings) -> None:
    """Begin reading the embedded store's log state (each series' latest time, the QC
    checkpoint) ahead of its open, in a thread: ``serve`` calls it before it imports the app
    (``store.sqlite.store.prefetch_log_state``). Nothing for the cluster mode, or a folder
    without its database and index file yet."""
    db = settings.data / DB_NAME
    if settings.store is None and db.exists() and (settings.data / INDEX_NAME).exists():
        prefetch_log_state(db, settings.durability)


def _sqlite_store(settings: Settings, rules: Rules, registry: ReadModel) -> EmbeddedStore:
    return SqliteStore(
        settings.data / DB_NAME,
        durability=settings.durability,
        index_chunk_rows=settings.index_chunk_rows,
        readers=settings.readers,
        rules=rules,
        registry=registry,
        # A node of a cluster (a bus): its registry follows the other nodes' changes too.
        snapshots=not settings.bus,
    )


SQLITE: Backend[Tx, sqlite3.Connection] = Backend(
    name="sqlite",
    open_store=_sqlite_store,
    metadata=metadata,
    alerts=alerts,
    deliveries=deliveries,
    feed_sessions=FeedStore,
    consumer_positions=SqliteConsumerPositions,
    delivery_positions=SqliteDeliveryPositions,
    ops=ops,
    dt_accounts=SqliteDTAccounts,
    dt_connectors=SqliteDTConnectors,
)


def _sqlite_replica(settings: Settings, rules: Rules, registry: ReadModel) -> EmbeddedStore:
    return ReplicaStore(
        settings.data / DB_NAME,
        durability=settings.durability,
        readers=settings.readers,
        rules=rules,
        registry=registry,
    )


# The embedded database read-only, for a fan-out worker process (``serve --workers N``): the
# writer process owns every write (``store/sqlite/replica.py``).
SQLITE_REPLICA: Backend[Tx, sqlite3.Connection] = dataclasses.replace(
    SQLITE, name="sqlite-replica", open_store=_sqlite_replica
)


def replica_feeds(
    store: object, settings: Settings, owns: Callable[[bytes], bool]
) -> tuple[FeedStore, Callable[[], None]]:
    """The push feed's store of a fan-out worker serving the feed tokens ``owns`` says are its
    own (``STREAMGAUGE_WORKERS_FEED``): sessions read from the worker's read-only view of the
    database (``store``, opened by ``SQLITE_REPLICA``) and written on a connection of its own
    (``store/sqlite/replica_feeds.py``); and what closes that connection."""
    if not isinstance(store, ReplicaStore):
        raise TypeError("a worker's feed store needs the embedded database's read-only view")
    tables = FeedTables(store)
    shaped: Any = tables  # what FeedStore needs of a store: registry, read, write
    feeds = FeedStore(
        shaped, settings.feed_session_retention_hours * 3600, settings.feed_sessions_per_token
    )
    feeds.owns = owns
    return feeds, tables.close


def postgresql() -> Backend[Any, Any]:
    """The PostgreSQL backend (``store/postgres/backend.py``), imported when first asked for:
    an embedded server does not load the PostgreSQL driver."""
    from streamgauge.store.postgres.backend import POSTGRESQL

    return POSTGRESQL


def backends() -> dict[str, Backend[Any, Any]]:
    """Every backend, by name."""
    return {SQLITE.name: SQLITE, "postgresql": postgresql()}


def backend_for(settings: Settings) -> Backend[Any, Any]:
    """The backend ``settings`` name: PostgreSQL when ``settings.store`` is set, else the
    embedded SQLite database in ``settings.data``."""
    return postgresql() if settings.store is not None else SQLITE


def open_store(settings: Settings, rules: Rules, *, registry: ReadModel) -> Store[Any, Any]:
    """The store of ``settings`` (the embedded SQLite database in ``settings.data``), built and
    not yet opened: the engine calls ``open`` with its publish callback. ``rules``: the core's
    duplicate/conflict rule and QC, built over the engine's registry (``core.dedupe.LogRules``);
    the store has no rules of its own. ``registry``: the engine's registry (its ``Registry``),
    which the store loads on open and hands every committed transaction's metadata events."""
    return backend_for(settings).open_store(settings, rules, registry)
