"""Building a backend's store from the settings: the one place that names an implementation.

A ``Backend`` bundles what a storage backend provides behind the protocols of ``store.api``:
its store and the table modules and services that run in its transactions. ``BACKENDS`` has
the embedded one, ``"sqlite"``; a ``"postgresql"`` backend is one more entry (and one more
parameter of the conformance suite's ``backend`` fixture).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from streamgauge.config import Settings
from streamgauge.domain.commit import CommitRules
from streamgauge.domain.readmodel import ReadModel
from streamgauge.store.api import (
    AlertTables,
    ConsumerPositions,
    DeliveryTables,
    FeedSessions,
    MetadataTables,
    Store,
)
from streamgauge.store.sqlite import alerts, deliveries, metadata
from streamgauge.store.sqlite.consumers import SqliteConsumerPositions
from streamgauge.store.sqlite.feeds import FeedStore
from streamgauge.store.sqlite.store import SqliteStore, Tx

TxT = TypeVar("TxT")
ConnT = TypeVar("ConnT")

# The embedded backend's store: its write closures take a ``Tx``, its read closures a
# ``sqlite3.Connection`` (what the table modules of ``streamgauge.store`` are written against).
EmbeddedStore = Store[Tx, sqlite3.Connection]

DB_NAME = "streamgauge.db"  # the embedded database, in the data directory

# The engine's commit rules (duplicates, conflicts, QC) over the store's registry.
Rules = Callable[[ReadModel], CommitRules]


@dataclass(frozen=True, slots=True)
class Backend(Generic[TxT, ConnT]):
    """A storage backend: how to build its store, and its table modules and services."""

    name: str
    # (settings, the engine's commit rules or None for the default, the engine's registry) ->
    # the store, not yet opened
    open_store: Callable[[Settings, Rules | None, ReadModel], Store[TxT, ConnT]]
    metadata: MetadataTables[TxT, ConnT]
    alerts: AlertTables[TxT, ConnT]
    deliveries: DeliveryTables[TxT, ConnT]
    # (store, session retention in seconds, sessions per token) -> feed tokens and sessions
    feed_sessions: Callable[[Store[TxT, ConnT], float, int], FeedSessions]
    consumer_positions: Callable[[Store[TxT, ConnT]], ConsumerPositions]  # core/consumers


def _sqlite_store(settings: Settings, rules: Rules | None, registry: ReadModel) -> EmbeddedStore:
    return SqliteStore(
        settings.data / DB_NAME,
        durability=settings.durability,
        index_chunk_rows=settings.index_chunk_rows,
        readers=settings.readers,
        quality_control=settings.qc,
        rules=rules,
        registry=registry,
    )


SQLITE: Backend[Tx, sqlite3.Connection] = Backend(
    name="sqlite",
    open_store=_sqlite_store,
    metadata=metadata,
    alerts=alerts,
    deliveries=deliveries,
    feed_sessions=FeedStore,
    consumer_positions=SqliteConsumerPositions,
)

BACKENDS: dict[str, Backend[Tx, sqlite3.Connection]] = {SQLITE.name: SQLITE}


def open_store(
    settings: Settings, rules: Rules | None = None, *, registry: ReadModel
) -> EmbeddedStore:
    """The store of ``settings`` (the embedded SQLite database in ``settings.data``), built and
    not yet opened: the engine calls ``open`` with its publish callback. ``rules``: the core's
    duplicate/conflict rule and QC, built over the store's registry (``core.dedupe.LogRules``
    when omitted). ``registry``: the engine's registry (its ``Registry``), which the store
    loads on open and hands every committed transaction's metadata events."""
    return SQLITE.open_store(settings, rules, registry)
