"""Schema migrations: a fresh database, an upgrade from an older schema, a too-new database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streamgauge.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, migrate


def test_fresh_database_reaches_the_current_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    assert migrate(conn) == SCHEMA_VERSION
    assert migrate(conn) == SCHEMA_VERSION  # idempotent
    versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_upgrade_keeps_data_and_applies_new_steps(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn, MIGRATIONS[:1])
    conn.execute("INSERT INTO projects (id, doc) VALUES ('p', '{}')")
    newer = [*MIGRATIONS, "ALTER TABLE projects ADD COLUMN note TEXT DEFAULT 'x';"]
    assert migrate(conn, newer) == len(newer)
    assert conn.execute("SELECT id, note FROM projects").fetchall() == [("p", "x")]


def test_failed_step_rolls_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn)
    broken = [*MIGRATIONS, "CREATE TABLE t (a); INSERT INTO nowhere VALUES (1);"]
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall() == []
    assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn)
    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew):
        migrate(conn)
