"""Channels, the alert log, alert actions and the rules' progress in SQLite (tables of
migrations 6 and 7). ``store/alerttables.py`` holds the SQL both backends share and says what
the tables hold; here are SQLite's dialect (``SqliteAlertTables``), the alert insert and the log
replay. The module's functions are the ``store.api.AlertTables`` of the SQLite backend.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from streamgauge.store.alerttables import AlertTablesSQL
from streamgauge.store.sqlite.store import Tx


class SqliteAlertTables(AlertTablesSQL[Tx, sqlite3.Connection]):
    GREATEST = "max"
    SET_CHANNEL_SEQ = "INSERT OR REPLACE INTO state VALUES ('channel_seq', ?)"
    PUT_STATE = (
        "INSERT OR REPLACE INTO alert_states "
        "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM channels WHERE pk = ?)"
    )

    def _json(self, value: Any) -> bytes:
        return orjson.dumps(value)


_tables = SqliteAlertTables()
load_channels = _tables.load_channels
insert_channel = _tables.insert_channel
update_channel = _tables.update_channel
delete_channel = _tables.delete_channel
insert_action = _tables.insert_action
slot_items = _tables.slot_items
slots = _tables.slots
last_alert = _tables.last_alert
record_outcome = _tables.record_outcome
actor_todo = _tables.actor_todo
actor_projects = _tables.actor_projects
list_alerts = _tables.list_alerts
alert_project = _tables.alert_project
load_progress = _tables.load_progress
save_progress = _tables.save_progress
channel_exists = _tables.channel_exists
forget_states = _tables.forget_states


def insert_alert(tx: Tx, channel_pk: int, created_ms: int, record: dict[str, Any]) -> int:
    cur = tx.execute(
        "INSERT INTO alerts (channel_pk, created_ms, record) VALUES (?, ?, ?)",
        (channel_pk, created_ms, orjson.dumps(record)),
    )
    return int(cur.lastrowid or 0)


def log_after(
    conn: sqlite3.Connection, after: int, upto: int, limit: int
) -> list[tuple[int, int, int, Any, int, int]]:
    """Log rows (cursor, series, time, value, qc, received ms) after ``after`` up to ``upto``,
    in cursor order: what the rules replay on start."""
    return conn.execute(
        "SELECT cursor, series, time, value, qc, received FROM obs "
        "WHERE cursor > ? AND cursor <= ? ORDER BY cursor LIMIT ?",
        (after, upto, limit),
    ).fetchall()
