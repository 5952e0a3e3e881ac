"""Channels, the alert log, alert actions and the rules' progress in PostgreSQL (the twin of
``store/sqlite/alerts.py``). ``store/alerttables.py`` holds the SQL both backends share and says
what the tables hold; here are PostgreSQL's dialect (``PgAlertTables``), the alert insert and
the log replay. The module's functions are the ``store.api.AlertTables`` of the PostgreSQL
backend.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamgauge.store.alerttables import AlertTablesSQL
from streamgauge.store.postgres.conn import Conn, Tx


class PgAlertTables(AlertTablesSQL[Tx, Conn]):
    PARAM = "%s"
    GREATEST = "greatest"
    SET_CHANNEL_SEQ = (
        "INSERT INTO state VALUES ('channel_seq', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )
    PUT_STATE = (
        "INSERT INTO alert_states "
        "SELECT %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM channels WHERE pk = %s) "
        "ON CONFLICT (channel_pk, trigger) DO UPDATE SET state = excluded.state, "
        "since_ms = excluded.since_ms, last_alert_ms = excluded.last_alert_ms, "
        "last_seen_ms = excluded.last_seen_ms"
    )

    def _json(self, value: Any) -> str:
        return orjson.dumps(value).decode()


_tables = PgAlertTables()
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
        "INSERT INTO alerts (channel_pk, created_ms, record) VALUES (%s, %s, %s) RETURNING id",
        (channel_pk, created_ms, orjson.dumps(record).decode()),
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def log_after(
    conn: Conn, after: int, upto: int, limit: int
) -> list[tuple[int, int, int, Any, int, int]]:
    """Log rows (cursor, series, time, value, qc, received ms) after ``after`` up to ``upto``,
    in cursor order: what the rules replay on start."""
    return [
        (c, s, t, txt if txt is not None else num, q, r)
        for c, s, t, num, txt, q, r in conn.execute(
            "SELECT cursor, series, time, num, txt, qc, received FROM obs "
            "WHERE cursor > %s AND cursor <= %s ORDER BY cursor LIMIT %s",
            (after, upto, limit),
        )
    ]
