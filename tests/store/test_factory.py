"""The factory: the engine's store comes from ``open_store``, and each backend of ``BACKENDS``
is a complete ``Backend`` (its store and table modules satisfy the protocols of
``store.api``: mypy checks the typed factory; here, that they are the ones in use)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.store.api import Store
from streamgauge.store.factory import BACKENDS, DB_NAME, SQLITE, open_store
from streamgauge.store.sqlite import alerts, deliveries, metadata
from streamgauge.store.sqlite.feeds import FeedStore
from streamgauge.store.sqlite.store import SqliteStore, Tx


async def test_open_store_builds_the_embedded_store_of_the_settings(tmp_path: Path) -> None:
    settings = Settings(data=tmp_path / "data", durability="full", qc=False)
    store: Store[Tx, sqlite3.Connection] = open_store(settings, registry=Registry())
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
    assert BACKENDS == {"sqlite": SQLITE}
    assert (SQLITE.metadata, SQLITE.alerts, SQLITE.deliveries) == (metadata, alerts, deliveries)
    assert SQLITE.feed_sessions is FeedStore


def test_the_engine_takes_its_store_from_the_factory(tmp_path: Path) -> None:
    engine = Engine(Settings(data=tmp_path), "admin-token")
    assert isinstance(engine.store, SqliteStore)
    assert engine.store.path == tmp_path / DB_NAME
    assert engine.registry is engine.store.registry
