"""Metadata in PostgreSQL (the twin of ``store/sqlite/metadata.py``): the dialect of the metadata
changes (``store/metadata.py`` holds them, with their checks and events, for both stores: here
``%s`` placeholders, ``RETURNING pk``, ``ON CONFLICT``), the registry loader and the change feed
``meta_events`` (``store/metadata.py`` says what it is and how it is bounded).

``load`` and ``load_tables`` read the tables on open; ``write_events`` stores a transaction's
events in it; ``read_events`` and ``events_head`` read the feed back. Sequence numbers are
gapless and commit-ordered across the nodes: every write transaction holds the store's log
lock, and ``write_events`` numbers from ``state.events_head`` (a counter row, not a sequence: a
sequence leaves gaps when a transaction rolls back).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from streamgauge.domain import events as ev
from streamgauge.domain.model import Device, Project, Site, Variable
from streamgauge.domain.readmodel import Tables
from streamgauge.store.metadata import EVENT_KEEP_MAX as EVENT_KEEP_MAX
from streamgauge.store.metadata import EVENT_RETENTION_MS as EVENT_RETENTION_MS
from streamgauge.store.metadata import MetadataChanges, account_events
from streamgauge.store.postgres.conn import Conn, Tx, one


class PgMetadata(MetadataChanges[Tx, Conn]):
    """The metadata changes in PostgreSQL's dialect."""

    PARAM = "%s"

    def _insert_returning_pk(self, tx: Tx, sql: str, params: tuple[Any, ...]) -> int:
        return int(one(tx.execute(sql + " RETURNING pk", params))[0])

    def _next_account_pk(self, tx: Tx) -> int:
        (pk,) = one(
            tx.execute(
                "SELECT greatest(coalesce((SELECT max(pk) FROM accounts), 0),"
                " coalesce((SELECT value FROM state WHERE key = 'account_seq'), 0)) + 1"
            )
        )
        tx.execute(
            "INSERT INTO state VALUES ('account_seq', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (pk,),
        )
        return int(pk)


_changes = PgMetadata()
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


def load(conn: Conn) -> Iterator[ev.MetaEvent]:
    """What the tables hold, as the events that build it from nothing (on open: the store
    hands each to its registry's ``apply``)."""
    for pk, doc in conn.execute("SELECT pk, doc FROM projects"):
        yield ev.ProjectPut(pk, Project.model_validate_json(doc))
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM sites"):
        yield ev.SitePut(pk, project_pk, Site.model_validate_json(doc))
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM devices"):
        yield ev.DevicePut(pk, project_pk, Device.model_validate_json(doc))
    for pk, device_pk, doc in conn.execute("SELECT pk, device_pk, doc FROM variables"):
        yield ev.VariablePut(pk, device_pk, Variable.model_validate_json(doc))
    for row in conn.execute(
        "SELECT s.pk, s.project_pk, s.device_pk, s.variable_pk, s.set_, d.id, v.id "
        "FROM series s JOIN devices d ON d.pk = s.device_pk "
        "JOIN variables v ON v.pk = s.variable_pk"
    ):
        yield ev.SeriesAdded(*row)
    yield from account_events(conn)


def load_tables(conn: Conn) -> Tables:
    """What the tables hold, in a few big reads, for ``ReadModel.load`` (on open: the same
    registry as ``load``'s events build, without an object per row on the way)."""
    t = Tables()
    t.projects = [
        ev.ProjectPut(pk, Project.model_validate_json(doc))
        for pk, doc in conn.execute("SELECT pk, doc FROM projects")
    ]
    t.sites = [tuple(r) for r in conn.execute("SELECT pk, project_pk, doc FROM sites")]
    t.devices = [tuple(r) for r in conn.execute("SELECT pk, project_pk, doc FROM devices")]
    t.variables = [tuple(r) for r in conn.execute("SELECT pk, device_pk, doc FROM variables")]
    t.series = [
        tuple(r)
        for r in conn.execute("SELECT pk, project_pk, device_pk, variable_pk, set_ FROM series")
    ]
    t.accounts = list(account_events(conn))
    return t


def write_events(tx: Tx, events: Sequence[ev.MetaEvent], now_ms: int) -> int:
    """Store a transaction's events in it, in order, numbered after ``state.events_head`` (the
    caller holds the log lock), and drop those past the retention. Returns the last event's
    sequence number (the events are ``last - len(events) + 1 .. last``)."""
    (head,) = one(tx.execute("SELECT value FROM state WHERE key = 'events_head' FOR UPDATE"))
    first = int(head) + 1
    tx.execute(
        "INSERT INTO meta_events (seq, time, kind, payload) "
        "SELECT %s + i - 1, %s, k, p FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY"
        " AS e(k, p, i)",
        (first, now_ms, [ev.kind(e) for e in events], [ev.encode(e).decode() for e in events]),
    )
    last = first + len(events) - 1
    tx.execute("UPDATE state SET value = %s WHERE key = 'events_head'", (last,))
    tx.execute(
        "DELETE FROM meta_events WHERE time < %s OR seq <= %s",
        (now_ms - EVENT_RETENTION_MS, last - EVENT_KEEP_MAX),
    )
    return last


def read_events(
    conn: Conn, after: int = 0, upto: int | None = None, limit: int = -1
) -> list[tuple[int, ev.MetaEvent]]:
    """(sequence number, event) of the stored events after ``after`` (up to ``upto``), in
    order, at most ``limit`` (all if negative)."""
    return [
        (int(seq), ev.decode(payload))
        for seq, payload in conn.execute(
            "SELECT seq, payload FROM meta_events WHERE seq > %s AND seq <= %s ORDER BY seq"
            " LIMIT %s",
            (after, upto if upto is not None else 2**62, None if limit < 0 else limit),
        )
    ]


def events_head(conn: Conn) -> int:
    """The last event's sequence number (0: none yet)."""
    row = conn.execute("SELECT value FROM state WHERE key = 'events_head'").fetchone()
    return int(row[0]) if row else 0
