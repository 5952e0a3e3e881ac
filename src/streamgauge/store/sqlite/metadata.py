"""Metadata in SQLite: the dialect of the metadata changes (``store/metadata.py`` holds them,
with their checks and events, for both stores: here ``?`` placeholders, an insert's
``lastrowid``, ``INSERT OR REPLACE``), the registry loader and the change feed ``meta_events``
(``store/metadata.py`` says what it is and how it is bounded).

``load`` and ``load_tables`` read the tables on open; ``write_events`` stores a transaction's
events in it, numbered by the table's AUTOINCREMENT (one writer: a transaction's events are
numbered in a row); ``read_events`` and ``events_head`` read the feed back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from streamgauge.domain import events as ev
from streamgauge.domain.model import Project
from streamgauge.domain.readmodel import Tables
from streamgauge.store.metadata import EVENT_KEEP_MAX as EVENT_KEEP_MAX
from streamgauge.store.metadata import EVENT_RETENTION_MS as EVENT_RETENTION_MS
from streamgauge.store.metadata import MetadataChanges, account_events

if TYPE_CHECKING:
    from streamgauge.store.sqlite.store import Tx


class SqliteMetadata(MetadataChanges["Tx", sqlite3.Connection]):
    """The metadata changes in SQLite's dialect."""

    PARAM = "?"

    def _insert_returning_pk(self, tx: Tx, sql: str, params: tuple[Any, ...]) -> int:
        return int(tx.execute(sql, params).lastrowid or 0)

    def _next_account_pk(self, tx: Tx) -> int:
        (pk,) = tx.execute(
            "SELECT max(coalesce((SELECT max(pk) FROM accounts), 0),"
            " coalesce((SELECT value FROM state WHERE key = 'account_seq'), 0)) + 1"
        ).fetchone()
        tx.execute("INSERT OR REPLACE INTO state VALUES ('account_seq', ?)", (pk,))
        return int(pk)


_changes = SqliteMetadata()
create_projects = _changes.create_projects
update_project = _changes.update_project
delete_project = _changes.delete_project
create_sites = _changes.create_sites
update_site = _changes.update_site
delete_site = _changes.delete_site
create_devices = _changes.create_devices
update_device = _changes.update_device
delete_device = _changes.delete_device
create_variables = _changes.create_variables
update_variable = _changes.update_variable
delete_variable = _changes.delete_variable
create_account = _changes.create_account
rename_account = _changes.rename_account
set_role = _changes.set_role
delete_account = _changes.delete_account
add_key = _changes.add_key
delete_key = _changes.delete_key
key_created = _changes.key_created


def load(conn: sqlite3.Connection) -> Iterator[ev.MetaEvent]:
    """What the tables hold, as the events that build it from nothing (on open: the store
    hands each to its registry's ``apply``)."""
    for pk, doc in conn.execute("SELECT pk, doc FROM projects"):
        yield ev.ProjectPut(pk, Project.model_validate_json(doc))
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM sites"):
        yield ev.SiteStored(pk, project_pk, doc)
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM devices"):
        yield ev.DeviceStored(pk, project_pk, doc)
    for pk, device_pk, doc in conn.execute("SELECT pk, device_pk, doc FROM variables"):
        yield ev.VariableStored(pk, device_pk, doc)
    for row in conn.execute(
        "SELECT s.pk, s.project_pk, s.device_pk, s.variable_pk, s.set_, d.id, v.id "
        "FROM series s JOIN devices d ON d.pk = s.device_pk "
        "JOIN variables v ON v.pk = s.variable_pk"
    ):
        yield ev.SeriesAdded(*row)
    yield from account_events(conn)


def load_tables(conn: sqlite3.Connection) -> Tables:
    """What the tables hold, in a few big reads, for ``ReadModel.load`` (on open: the same
    registry as ``load``'s events build, without an object per row on the way)."""
    t = Tables()
    t.projects = [
        ev.ProjectPut(pk, Project.model_validate_json(doc))
        for pk, doc in conn.execute("SELECT pk, doc FROM projects")
    ]
    t.sites = conn.execute("SELECT pk, project_pk, doc FROM sites").fetchall()
    t.devices = conn.execute("SELECT pk, project_pk, doc FROM devices").fetchall()
    t.accounts = list(account_events(conn))
    # Cursors: the registry reads them a chunk at a time (load them before another query).
    t.variables = conn.execute("SELECT pk, device_pk, doc FROM variables")
    t.series = conn.execute("SELECT pk, project_pk, device_pk, variable_pk, set_ FROM series")
    return t


def write_events(conn: sqlite3.Connection, events: Sequence[ev.MetaEvent], now_ms: int) -> int:
    """Store a transaction's events in it, in order (one statement: see the log's insert), and
    drop those past the retention. Returns the last event's sequence number (one writer: the
    transaction's events are numbered ``last - len(events) + 1 .. last``)."""
    cur = conn.execute(
        "INSERT INTO meta_events (time, kind, payload) "
        "SELECT ?1, value ->> 'type', value FROM json_each(?2) ORDER BY key",
        (now_ms, ev.encode_many(events)),
    )
    last = int(cur.lastrowid or 0)
    conn.execute(
        "DELETE FROM meta_events WHERE time < ? OR seq <= ?",
        (now_ms - EVENT_RETENTION_MS, last - EVENT_KEEP_MAX),
    )
    return last


def read_events(
    conn: sqlite3.Connection, after: int = 0, upto: int | None = None, limit: int = -1
) -> list[tuple[int, ev.MetaEvent]]:
    """(sequence number, event) of the stored events after ``after`` (up to ``upto``), in
    order, at most ``limit`` (all if negative)."""
    return [
        (seq, ev.decode(payload))
        for seq, payload in conn.execute(
            "SELECT seq, payload FROM meta_events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (after, upto if upto is not None else 2**62, limit),
        )
    ]


def events_head(conn: sqlite3.Connection) -> int:
    """The last event's sequence number (0: none yet)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'meta_events'").fetchone()
    return int(row[0]) if row else 0
