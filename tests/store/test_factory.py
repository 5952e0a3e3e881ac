"""The factory: the engine's backend comes from ``backend_for`` and its store from the backend,
and each backend of ``backends()`` is a complete ``Backend`` (its store, table modules, services
and operations satisfy the protocols of ``store.api`` and ``store.face_state``: mypy checks the
typed factory; here, that they are the ones in use)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from streamgauge.config import DB_NAME, Settings
from streamgauge.core.dedupe import LogRules
from streamgauge.core.engine import Engine
from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.commit import CommitRules
from streamgauge.store.api import Store
from streamgauge.store.factory import SQLITE, backend_for, backends, open_store
from streamgauge.store.postgres import alerts as pg_alerts
from streamgauge.store.postgres import deliveries as pg_deliveries
from streamgauge.store.postgres import metadata as pg_metadata
from streamgauge.store.postgres import ops as pg_ops
from streamgauge.store.postgres.backend import POSTGRESQL
from streamgauge.store.postgres.store import PgStore
from streamgauge.store.sqlite import alerts, deliveries, metadata, ops
from streamgauge.store.sqlite.consumers import SqliteConsumerPositions
from streamgauge.store.sqlite.face_state import SqliteDTAccounts, SqliteDTConnectors
from streamgauge.store.sqlite.feeds import FeedStore
from streamgauge.store.sqlite.store import SqliteStore, Tx


async def test_open_store_builds_the_embedded_store_of_the_settings(tmp_path: Path) -> None:
    settings = Settings(data=tmp_path / "data", durability="full", qc=False)
    given: list[tuple[Registry, CommitRules]] = []

    def rules(registry: Registry) -> CommitRules:
        given.append((registry, LogRules(registry, quality_control=False)))
        return given[-1][1]

    store: Store[Tx, sqlite3.Connection] = open_store(settings, rules, registry=Registry())
    assert isinstance(store, SqliteStore)
    assert (store.path, store.durability) == (settings.data / DB_NAME, "full")
    # the store runs the rules its caller built over its registry; it has none of its own
    assert given == [(store.registry, store.rules)]
    assert not store.path.exists()  # built, not opened
    published: list[Batch] = []
    await store.open(published.append)
    try:
        assert store.path.exists() and store.head == 0
    finally:
        await store.close()


def test_the_sqlite_backend_bundles_its_modules_and_services() -> None:
    assert backends() == {"sqlite": SQLITE, "postgresql": POSTGRESQL}
    assert (SQLITE.metadata, SQLITE.alerts, SQLITE.deliveries) == (metadata, alerts, deliveries)
    assert SQLITE.feed_sessions is FeedStore
    assert SQLITE.consumer_positions is SqliteConsumerPositions
    assert SQLITE.ops is ops
    assert (SQLITE.dt_accounts, SQLITE.dt_connectors) == (SqliteDTAccounts, SqliteDTConnectors)
    assert backend_for(Settings()) is SQLITE
    assert (POSTGRESQL.metadata, POSTGRESQL.alerts, POSTGRESQL.deliveries) == (
        pg_metadata,
        pg_alerts,
        pg_deliveries,
    )
    assert POSTGRESQL.ops is pg_ops


def test_the_settings_pick_the_backend(tmp_path: Path) -> None:
    assert backend_for(Settings(data=tmp_path)) is SQLITE
    url = "postgresql://postgres@127.0.0.1:5432/nowhere"
    assert backend_for(Settings(data=tmp_path, store=url)) is POSTGRESQL
    store = open_store(  # built, not connected
        Settings(data=tmp_path, store=url),
        lambda reg: LogRules(reg, quality_control=True),
        registry=Registry(),
    )
    assert isinstance(store, PgStore) and store.url == url
    engine = Engine(Settings(data=tmp_path, store=url), "admin-token")
    assert engine.backend is POSTGRESQL and isinstance(engine.store, PgStore)
    assert engine.registry is engine.store.registry


def test_the_engine_takes_its_store_and_services_from_the_backend(tmp_path: Path) -> None:
    engine = Engine(Settings(data=tmp_path, qc=False), "admin-token")
    assert engine.backend is SQLITE
    assert isinstance(engine.store, SqliteStore)
    assert engine.store.path == tmp_path / DB_NAME
    assert engine.registry is engine.store.registry
    # the engine's commit rules: the core's, with QC as the settings say
    assert isinstance(engine.store.rules, LogRules)
    assert engine.store.rules.quality_control is False
    assert isinstance(engine.feeds, FeedStore)
    assert isinstance(engine.consumer_positions, SqliteConsumerPositions)
    assert isinstance(engine.dt_accounts, SqliteDTAccounts)
    assert isinstance(engine.dt_connectors, SqliteDTConnectors)


def test_an_embedded_server_does_not_load_the_postgresql_driver(tmp_path: Path) -> None:
    """The PostgreSQL backend is imported when asked for (``store.factory.postgresql``): a
    fresh interpreter serving the embedded store never imports psycopg (nor pint, until a unit
    needs parsing)."""
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from streamgauge.app import create_app\n"
        "from streamgauge.config import Settings\n"
        f"app = create_app(Settings(data=Path({str(tmp_path / 'data')!r})), admin_token='t')\n"
        "async def main():\n"
        "    await app.state.engine.start()\n"
        "    await app.state.engine.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('psycopg', 'pint') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
