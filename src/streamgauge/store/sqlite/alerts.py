"""Channels, the alert log, alert actions and the rules' progress in SQLite (tables of
migrations 6 and 7).

Functions taking a ``Tx`` run on the writer thread (``store.write``); the others take a reader
connection (``store.read``). The alert log's ids increase, so an action delivery is a consumer of
``alert_actions`` rows of one (channel, slot) after a cursor (the alert id).

The rules' progress (``alert_states`` and the ``state`` keys ``alert_cursor``, the last log cursor
judged, and ``alert_alive_ms``, when it was written) is saved in the same transactions as the
alerts it produced, so what is stored is always one consistent point of the evaluation.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import orjson

from streamgauge.domain import events as ev
from streamgauge.domain.alerts import State, StateKey, TriggerState
from streamgauge.domain.channels import ChannelDoc

if TYPE_CHECKING:
    from streamgauge.store.sqlite.store import Tx


def load_channels(conn: sqlite3.Connection) -> list[tuple[int, int, ChannelDoc]]:
    """(pk, project pk, document) of every channel."""
    return [
        (pk, project_pk, ChannelDoc.model_validate_json(doc))
        for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM channels")
    ]


def insert_channel(tx: Tx, project_pk: int, doc: ChannelDoc) -> int:
    """A new channel's pk, never one a deleted channel had: deliveries (``alert:PK:SLOT``), trigger
    states and in-memory channels are keyed by it, and SQLite's max(pk) + 1 gave a channel
    created after the newest was deleted (with its project, say) the same pk, so forgetting the
    old one removed the new one's deliveries. ``state.channel_seq`` keeps the highest given."""
    (pk,) = tx.execute(
        "SELECT max(coalesce((SELECT max(pk) FROM channels), 0),"
        " coalesce((SELECT value FROM state WHERE key = 'channel_seq'), 0)) + 1"
    ).fetchone()
    tx.execute("INSERT OR REPLACE INTO state VALUES ('channel_seq', ?)", (pk,))
    tx.execute(
        "INSERT INTO channels (pk, id, project_pk, doc) VALUES (?, ?, ?, ?)",
        (pk, doc.id, project_pk, doc.model_dump_json()),
    )
    tx.events.append(ev.ChannelPut(int(pk), project_pk, doc))
    return int(pk)


def update_channel(tx: Tx, pk: int, doc: ChannelDoc) -> None:
    rows = tx.execute(
        "UPDATE channels SET doc = ? WHERE pk = ? RETURNING project_pk", (doc.model_dump_json(), pk)
    ).fetchall()
    if rows:
        tx.events.append(ev.ChannelPut(pk, int(rows[0][0]), doc))


def delete_channel(tx: Tx, pk: int) -> None:
    tx.execute("DELETE FROM alert_actions WHERE channel_pk = ?", (pk,))
    tx.execute("DELETE FROM channels WHERE pk = ?", (pk,))
    tx.events.append(ev.ChannelDropped(pk))


def insert_alert(tx: Tx, channel_pk: int, created_ms: int, record: dict[str, Any]) -> int:
    cur = tx.execute(
        "INSERT INTO alerts (channel_pk, created_ms, record) VALUES (?, ?, ?)",
        (channel_pk, created_ms, orjson.dumps(record)),
    )
    return int(cur.lastrowid or 0)


def insert_action(
    tx: Tx, alert_id: int, slot: int, channel_pk: int, method: str, target: str, body: bytes
) -> None:
    tx.execute(
        "INSERT INTO alert_actions (alert_id, slot, channel_pk, method, target, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (alert_id, slot, channel_pk, method, target, body),
    )


def slot_items(
    conn: sqlite3.Connection, channel_pk: int, slot: int, after: int, limit: int
) -> list[tuple[int, str, bytes, int]]:
    """(alert id, target, body, created ms) of one action slot after ``after``, ascending: the
    HTTP deliveries' source. ``ACTOR`` rows are the actor worker's (``actor_todo``), never sent
    as HTTP (a slot whose action was edited from one kind to the other holds both)."""
    return [
        (int(a), str(t), bytes(b), int(c))
        for a, t, b, c in conn.execute(
            "SELECT x.alert_id, x.target, x.body, a.created_ms FROM alert_actions x "
            "JOIN alerts a ON a.id = x.alert_id "
            "WHERE x.channel_pk = ? AND x.slot = ? AND x.alert_id > ? AND x.method != 'ACTOR' "
            "ORDER BY x.alert_id LIMIT ?",
            (channel_pk, slot, after, limit),
        )
    ]


def slots(conn: sqlite3.Connection, channel_pk: int) -> list[int]:
    """The action slots of a channel that hold HTTP (not ``ACTOR``) rows."""
    return [
        int(s)
        for (s,) in conn.execute(
            "SELECT DISTINCT slot FROM alert_actions WHERE channel_pk = ? AND method != 'ACTOR'",
            (channel_pk,),
        )
    ]


def last_alert(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()[0])


def record_outcome(tx: Tx, alert_id: int, slot: int, outcome: dict[str, Any], done: bool) -> None:
    tx.execute(
        "UPDATE alert_actions SET outcome = ?, done = max(done, ?) WHERE alert_id = ? AND slot = ?",
        (orjson.dumps(outcome), int(done), alert_id, slot),
    )


def actor_todo(
    conn: sqlite3.Connection, project_pk: int, limit: int
) -> list[tuple[int, int, int, str, bytes, str | None]]:
    """One project's ACTOR actions not yet run, in alert order: (alert id, slot, channel pk,
    actor id, body, outcome)."""
    return [
        (int(a), int(s), int(c), str(t), bytes(b), o)
        for a, s, c, t, b, o in conn.execute(
            "SELECT alert_id, slot, channel_pk, target, body, outcome FROM alert_actions "
            "WHERE method = 'ACTOR' AND done = 0 "
            "AND channel_pk IN (SELECT pk FROM channels WHERE project_pk = ?) "
            "ORDER BY alert_id, slot LIMIT ?",
            (project_pk, limit),
        )
    ]


def actor_projects(conn: sqlite3.Connection) -> list[int]:
    """The projects that have ACTOR actions not yet run."""
    return [
        int(p)
        for (p,) in conn.execute(
            "SELECT DISTINCT ch.project_pk FROM alert_actions x "
            "JOIN channels ch ON ch.pk = x.channel_pk WHERE x.method = 'ACTOR' AND x.done = 0"
        )
    ]


def list_alerts(
    conn: sqlite3.Connection, channel_pk: int, skip: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """(total, a page of alerts newest first), each with its actions and their outcomes."""
    total = int(
        conn.execute("SELECT count(*) FROM alerts WHERE channel_pk = ?", (channel_pk,)).fetchone()[
            0
        ]
    )
    rows = conn.execute(
        "SELECT id, record FROM alerts WHERE channel_pk = ? ORDER BY id DESC LIMIT ? OFFSET ?",
        (channel_pk, limit, skip),
    ).fetchall()
    out: list[dict[str, Any]] = []
    for id_, record in rows:
        alert = orjson.loads(record)
        alert["alert_id"] = int(id_)
        alert["actions"] = [
            {
                "slot": int(s),
                "method": m,
                "target": t,
                "done": bool(d),
                "outcome": None if o is None else orjson.loads(o),
            }
            for s, m, t, d, o in conn.execute(
                "SELECT slot, method, target, done, outcome FROM alert_actions "
                "WHERE alert_id = ? ORDER BY slot",
                (id_,),
            )
        ]
        out.append(alert)
    return total, out


def alert_project(conn: sqlite3.Connection, alert_id: int) -> str | None:
    """The id of the project an alert belongs to."""
    row = conn.execute(
        "SELECT p.id FROM alerts a JOIN channels ch ON ch.pk = a.channel_pk "
        "JOIN projects p ON p.pk = ch.project_pk WHERE a.id = ?",
        (alert_id,),
    ).fetchone()
    return None if row is None else str(row[0])


# -- the rules' progress --------------------------------------------------------------------------


def load_progress(conn: sqlite3.Connection) -> tuple[int, int, dict[StateKey, TriggerState]]:
    """(last cursor judged, when the progress was last written (ms), every trigger state)."""
    got = dict(
        conn.execute(
            "SELECT key, value FROM state WHERE key IN ('alert_cursor', 'alert_alive_ms')"
        ).fetchall()
    )
    states = {
        (int(c), int(t)): TriggerState(State(st), since, last_alert, last_seen)
        for c, t, st, since, last_alert, last_seen in conn.execute(
            "SELECT channel_pk, trigger, state, since_ms, last_alert_ms, last_seen_ms "
            "FROM alert_states"
        )
    }
    return int(got.get("alert_cursor", 0)), int(got.get("alert_alive_ms", 0)), states


def save_progress(
    tx: Tx, cursor: int, alive_ms: int, states: dict[StateKey, TriggerState | None]
) -> None:
    """The last cursor judged and the trigger states changed since the last save (None: the
    trigger's state is gone). States of channels deleted meanwhile are skipped."""
    tx.execute("UPDATE state SET value = ? WHERE key = 'alert_cursor'", (cursor,))
    tx.execute("UPDATE state SET value = ? WHERE key = 'alert_alive_ms'", (alive_ms,))
    for (channel_pk, trigger), st in states.items():
        if st is None:
            tx.execute(
                "DELETE FROM alert_states WHERE channel_pk = ? AND trigger = ?",
                (channel_pk, trigger),
            )
            continue
        tx.execute(
            "INSERT OR REPLACE INTO alert_states "
            "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM channels WHERE pk = ?)",
            (
                channel_pk,
                trigger,
                st.state.value,
                st.since_ms,
                st.last_alert_ms,
                st.last_seen_ms,
                channel_pk,
            ),
        )


def channel_exists(tx: Tx, channel_pk: int) -> bool:
    return tx.execute("SELECT 1 FROM channels WHERE pk = ?", (channel_pk,)).fetchone() is not None


def forget_states(tx: Tx, channel_pk: int) -> None:
    tx.execute("DELETE FROM alert_states WHERE channel_pk = ?", (channel_pk,))


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
