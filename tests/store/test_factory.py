"""The factory: the engine's store comes from ``open_store``, and each backend of ``BACKENDS``
is a complete ``Backend`` (its store and table modules satisfy the protocols of
``store.api``: mypy checks the typed factory; here, that they are the ones in use)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.domain.batch import Batch
from streamgauge.store.api import Store
from streamgauge.store.factory import (
    BACKENDS,
    DB_NAME,
    POSTGRESQL,
    SQLITE,
    backend_for,
    open_store,
)
from streamgauge.store.postgres import alerts as pg_alerts
from streamgauge.store.postgres import deliveries as pg_deliveries
from streamgauge.store.postgres import metadata as pg_metadata
from streamgauge.store.postgres.store import PgStore
from streamgauge.store.sqlite import alerts, deliveries, metadata
from streamgauge.store.sqlite.feeds import FeedStore
from streamgauge.store.sqlite.store import SqliteStore, Tx


async def test_open_store_builds_the_embedded_store_of_the_settings(tmp_path: Path) -> None:
    settings = Settings(data=tmp_path / "data", durability="full", qc=False)
    store: Store[Tx, sqlite3.Connection] = open_store(settings)
    assert isinstance(store, SqliteStore)
    assert (store.path, store.durability, store.quality_control) == (
        settings.data / DB_NAME,
        "full",
        False,
    )
    assert not store.path.exists()  # built, not opened
    published: list[Batch] = []
    await store.open(published.append)
    try:
        assert store.path.exists() and store.head == 0
    finally:
        await store.close()


def test_the_sqlite_backend_bundles_its_table_modules() -> None:
    assert BACKENDS == {"sqlite": SQLITE, "postgresql": POSTGRESQL}
    assert (SQLITE.metadata, SQLITE.alerts, SQLITE.deliveries) == (metadata, alerts, deliveries)
    assert SQLITE.feed_sessions is FeedStore
    assert (POSTGRESQL.metadata, POSTGRESQL.alerts, POSTGRESQL.deliveries) == (
        pg_metadata,
        pg_alerts,
        pg_deliveries,
    )


def test_the_settings_pick_the_backend(tmp_path: Path) -> None:
    assert backend_for(Settings(data=tmp_path)) is SQLITE
    url = "postgresql://postgres@127.0.0.1:5432/nowhere"
    assert backend_for(Settings(data=tmp_path, store=url)) is POSTGRESQL
    store = open_store(Settings(data=tmp_path, store=url))  # built, not connected
    assert isinstance(store, PgStore) and store.url == url
    engine = Engine(Settings(data=tmp_path, store=url), "admin-token")
    assert engine.backend is POSTGRESQL and isinstance(engine.store, PgStore)


def test_the_engine_takes_its_store_from_the_factory(tmp_path: Path) -> None:
    engine = Engine(Settings(data=tmp_path), "admin-token")
    assert isinstance(engine.store, SqliteStore)
    assert engine.store.path == tmp_path / DB_NAME
    assert engine.registry is engine.store.registry
