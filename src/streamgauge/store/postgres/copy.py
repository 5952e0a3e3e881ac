"""``streamgauge migrate``: copy an embedded deployment into an empty PostgreSQL database.

Everything the embedded database holds is copied row for row, with its keys: metadata, service
accounts, keys and roles, the observation log with its cursors, QC checkpoints, channels, the
alert log and its actions, the rules' progress, delivery positions and dead letters, feed tokens
and sessions, DT face state, consumer positions. The two schemas have the same tables (see
``schema.py``); the log's value is split into ``num``/``txt``. It is one transaction: the target
holds all of it or nothing. The target must be empty (no project and no log row), so a copy is
never merged into a live cluster by mistake.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from streamgauge.store.postgres.conn import Conn, connect, one
from streamgauge.store.postgres.schema import migrate as pg_migrate
from streamgauge.store.postgres.schema import restart_identities
from streamgauge.store.sqlite.schema import migrate as sqlite_migrate

CHUNK = 50_000  # rows read from SQLite per step

# In dependency order (referenced tables first).
TABLES = [
    "projects",
    "sites",
    "devices",
    "variables",
    "series",
    "accounts",
    "account_keys",
    "roles",
    "qc_state",
    "obs_summary",  # the hour summaries, as kept (meta_events is not copied: see docs/cluster.md)
    "delivery_cursors",
    "delivery_dead_letters",
    "dt_accounts",
    "dt_connectors",
    "feed_tokens",
    "feed_sessions",
    "channels",
    "alerts",
    "alert_actions",
    "alert_states",
]
SKIPPED_STATE = {"sealed", "log", "meta_edits"}  # the index's progress, the log's identity, the
# count of metadata edits (the registry snapshot's: store/sqlite/snapshot.py)


class NotEmpty(RuntimeError):
    """The target database already holds a deployment."""


def copy_embedded(
    source: Path, url: str, *, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy the embedded database ``source`` (a ``streamgauge.db``) into the PostgreSQL
    database ``url``; returns the rows copied per table (``obs``: the log)."""
    if not source.is_file():
        raise FileNotFoundError(f"no embedded database at {source}")
    lite = sqlite3.connect(source, isolation_level=None)
    try:
        sqlite_migrate(lite)  # what the embedded node does on start: the current schema
        pg = connect(url, connect_timeout=10, statement_timeout=3600)
        try:
            pg_migrate(pg)
            return _copy(lite, pg, progress or (lambda table, rows: None))
        finally:
            pg.close()
    finally:
        lite.close()


def _copy(
    lite: sqlite3.Connection, pg: Conn, progress: Callable[[str, int], None]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    with pg.transaction():
        used = one(
            pg.execute(
                "SELECT (SELECT count(*) FROM projects) + (SELECT count(*) FROM obs)"
                " + (SELECT value FROM state WHERE key = 'head')"
            )
        )[0]
        if used:
            raise NotEmpty("the target database is not empty (it has projects or observations)")
        for table in TABLES:
            counts[table] = _copy_table(lite, pg, table)
            progress(table, counts[table])
        counts["obs"] = _copy_log(lite, pg)
        progress("obs", counts["obs"])
        counts["state"] = _copy_state(lite, pg)
        restart_identities(pg)
    return counts


def _chunks(lite: sqlite3.Connection, sql: str) -> Iterator[list[tuple[Any, ...]]]:
    cur = lite.execute(sql)
    while True:
        rows = cur.fetchmany(CHUNK)
        if not rows:
            return
        yield rows


def _copy_table(lite: sqlite3.Connection, pg: Conn, table: str) -> int:
    columns = [str(r[1]) for r in lite.execute(f"PRAGMA table_info({table})")]
    kinds = {
        str(name): str(kind)
        for name, kind in pg.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
            (table,),
        )
    }
    convert = [_converter(kinds[c]) for c in columns]
    names = ", ".join(columns)
    n = 0
    with pg.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN".encode()) as copy:
        for rows in _chunks(lite, f"SELECT {names} FROM {table}"):
            for row in rows:
                copy.write_row([f(v) for f, v in zip(convert, row, strict=True)])
            n += len(rows)
    return n


def _converter(kind: str) -> Callable[[Any], Any]:
    """SQLite stores JSON documents as text or blob and flags as integers: each value as the
    PostgreSQL column wants it."""
    if kind == "text":
        return lambda v: v.decode() if isinstance(v, bytes) else v
    if kind == "bytea":
        return lambda v: v.encode() if isinstance(v, str) else v
    if kind == "bigint":
        return lambda v: None if v is None else int(v)
    return lambda v: v


def _copy_log(lite: sqlite3.Connection, pg: Conn) -> int:
    n = 0
    sql = "COPY obs (cursor, series, time, num, txt, qc, received) FROM STDIN (FORMAT BINARY)"
    with pg.cursor() as cur, cur.copy(sql.encode()) as copy:
        copy.set_types(["int8", "int8", "int8", "float8", "text", "int8", "int8"])
        for rows in _chunks(
            lite, "SELECT cursor, series, time, value, qc, received FROM obs ORDER BY cursor"
        ):
            for c, s, t, v, q, r in rows:
                num = float(v) if isinstance(v, int | float) else None
                txt = v if isinstance(v, str) else None
                copy.write_row((c, s, t, num, txt, q, r))
            n += len(rows)
    return n


def _copy_state(lite: sqlite3.Connection, pg: Conn) -> int:
    """The embedded ``state`` keys (positions, sequences), then the log's head and the next
    series pk."""
    n = 0
    for key, value in lite.execute("SELECT key, value FROM state"):
        if key in SKIPPED_STATE:
            continue
        pg.execute(
            "INSERT INTO state VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, int(value)),
        )
        n += 1
    (head,) = lite.execute("SELECT coalesce(max(cursor), 0) FROM obs").fetchone()
    (end,) = lite.execute(
        "SELECT max(coalesce((SELECT max(pk) FROM series), 0),"
        " coalesce((SELECT max(series) FROM obs), 0)) + 1"
    ).fetchone()
    pg.execute("UPDATE state SET value = %s WHERE key = 'head'", (int(head),))
    pg.execute("UPDATE state SET value = %s WHERE key = 'series_end'", (int(end),))
    return n
