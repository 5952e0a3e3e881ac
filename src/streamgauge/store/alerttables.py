"""Channels, the alert log, alert actions and the rules' progress (``store.api.AlertTables``):
the SQL both backends share. ``store/sqlite/alerts.py`` (tables of migrations 6 and 7) and
``store/postgres/alerts.py`` subclass ``AlertTablesSQL`` with their dialect's parts, expose its
methods as their module's functions (the module is the ``AlertTables`` the backend bundles),
and keep what is their own: the alert insert (how the new id comes back) and the log replay
(how a row's value is stored).

Functions taking a ``Tx`` run on the writer thread (``store.write``); the others take a reader
connection (``store.read``). The alert log's ids increase, so an action delivery is a consumer of
``alert_actions`` rows of one (channel, slot) after a cursor (the alert id).

The rules' progress (``alert_states`` and the ``state`` keys ``alert_cursor``, the last log cursor
judged, and ``alert_alive_ms``, when it was written) is saved in the same transactions as the
alerts it produced, so what is stored is always one consistent point of the evaluation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

import orjson

from streamgauge.domain import events as ev
from streamgauge.domain.alerts import State, StateKey, TriggerState
from streamgauge.domain.channels import ChannelDoc
from streamgauge.store.dbapi import Executes, WriteTx, one

TxT = TypeVar("TxT", bound=WriteTx)
ConnT = TypeVar("ConnT", bound=Executes)


class AlertTablesSQL(ABC, Generic[TxT, ConnT]):
    """The alert tables over one backend's transactions (``TxT``) and read connections
    (``ConnT``). A subclass gives its dialect: ``PARAM`` (the SQL placeholder), ``GREATEST``,
    the two upserts and ``_json``."""

    PARAM = "?"
    # The larger of its arguments: SQLite's scalar max(), PostgreSQL's greatest().
    GREATEST: ClassVar[str]
    # Store the highest channel pk given as ``state.channel_seq`` (parameter: that pk).
    SET_CHANNEL_SEQ: ClassVar[str]
    # Insert or replace one ``alert_states`` row, only if its channel exists (parameters: channel
    # pk, trigger, state, since ms, last alert ms, last seen ms, channel pk).
    PUT_STATE: ClassVar[str]

    @abstractmethod
    def _json(self, value: Any) -> Any:
        """``value`` as JSON in the form the backend stores it (SQLite: bytes, PostgreSQL: text)."""

    def load_channels(self, conn: ConnT) -> list[tuple[int, int, ChannelDoc]]:
        """(pk, project pk, document) of every channel."""
        return [
            (pk, project_pk, ChannelDoc.model_validate_json(doc))
            for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM channels")
        ]

    def insert_channel(self, tx: TxT, project_pk: int, doc: ChannelDoc) -> int:
        """A new channel's pk, never one a deleted channel had: deliveries (``alert:PK:SLOT``),
        trigger states and in-memory channels are keyed by it, and SQLite's max(pk) + 1 gave a
        channel created after the newest was deleted (with its project, say) the same pk, so
        forgetting the old one removed the new one's deliveries. ``state.channel_seq`` keeps
        the highest given."""
        p = self.PARAM
        (pk,) = one(
            tx.execute(
                f"SELECT {self.GREATEST}(coalesce((SELECT max(pk) FROM channels), 0),"
                " coalesce((SELECT value FROM state WHERE key = 'channel_seq'), 0)) + 1"
            )
        )
        tx.execute(self.SET_CHANNEL_SEQ, (pk,))
        tx.execute(
            f"INSERT INTO channels (pk, id, project_pk, doc) VALUES ({p}, {p}, {p}, {p})",
            (pk, doc.id, project_pk, doc.model_dump_json()),
        )
        tx.events.append(ev.ChannelPut(int(pk), project_pk, doc))
        return int(pk)

    def update_channel(self, tx: TxT, pk: int, doc: ChannelDoc) -> None:
        p = self.PARAM
        rows = tx.execute(
            f"UPDATE channels SET doc = {p} WHERE pk = {p} RETURNING project_pk",
            (doc.model_dump_json(), pk),
        ).fetchall()
        if rows:
            tx.events.append(ev.ChannelPut(pk, int(rows[0][0]), doc))

    def delete_channel(self, tx: TxT, pk: int) -> None:
        p = self.PARAM
        tx.execute(f"DELETE FROM alert_actions WHERE channel_pk = {p}", (pk,))
        tx.execute(f"DELETE FROM channels WHERE pk = {p}", (pk,))
        tx.events.append(ev.ChannelDropped(pk))

    def insert_action(
        self,
        tx: TxT,
        alert_id: int,
        slot: int,
        channel_pk: int,
        method: str,
        target: str,
        body: bytes,
    ) -> None:
        p = self.PARAM
        tx.execute(
            "INSERT INTO alert_actions (alert_id, slot, channel_pk, method, target, body) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
            (alert_id, slot, channel_pk, method, target, body),
        )

    def slot_items(
        self, conn: ConnT, channel_pk: int, slot: int, after: int, limit: int
    ) -> list[tuple[int, str, bytes, int]]:
        """(alert id, target, body, created ms) of one action slot after ``after``, ascending:
        the HTTP deliveries' source. ``ACTOR`` rows are the actor worker's (``actor_todo``),
        never sent as HTTP (a slot whose action was edited from one kind to the other holds
        both)."""
        p = self.PARAM
        return [
            (int(a), str(t), bytes(b), int(c))
            for a, t, b, c in conn.execute(
                "SELECT x.alert_id, x.target, x.body, a.created_ms FROM alert_actions x "
                "JOIN alerts a ON a.id = x.alert_id "
                f"WHERE x.channel_pk = {p} AND x.slot = {p} AND x.alert_id > {p} "
                f"AND x.method != 'ACTOR' ORDER BY x.alert_id LIMIT {p}",
                (channel_pk, slot, after, limit),
            )
        ]

    def slots(self, conn: ConnT, channel_pk: int) -> list[int]:
        """The action slots of a channel that hold HTTP (not ``ACTOR``) rows."""
        p = self.PARAM
        return [
            int(s)
            for (s,) in conn.execute(
                f"SELECT DISTINCT slot FROM alert_actions WHERE channel_pk = {p} "
                "AND method != 'ACTOR'",
                (channel_pk,),
            )
        ]

    def last_alert(self, conn: ConnT) -> int:
        return int(one(conn.execute("SELECT coalesce(max(id), 0) FROM alerts"))[0])

    def record_outcome(
        self, tx: TxT, alert_id: int, slot: int, outcome: dict[str, Any], done: bool
    ) -> None:
        p = self.PARAM
        tx.execute(
            f"UPDATE alert_actions SET outcome = {p}, done = {self.GREATEST}(done, {p}) "
            f"WHERE alert_id = {p} AND slot = {p}",
            (self._json(outcome), int(done), alert_id, slot),
        )

    def actor_todo(
        self, conn: ConnT, project_pk: int, limit: int
    ) -> list[tuple[int, int, int, str, bytes, str | None]]:
        """One project's ACTOR actions not yet run, in alert order: (alert id, slot, channel
        pk, actor id, body, outcome)."""
        p = self.PARAM
        return [
            (int(a), int(s), int(c), str(t), bytes(b), o)
            for a, s, c, t, b, o in conn.execute(
                "SELECT alert_id, slot, channel_pk, target, body, outcome FROM alert_actions "
                "WHERE method = 'ACTOR' AND done = 0 "
                f"AND channel_pk IN (SELECT pk FROM channels WHERE project_pk = {p}) "
                f"ORDER BY alert_id, slot LIMIT {p}",
                (project_pk, limit),
            )
        ]

    def actor_projects(self, conn: ConnT) -> list[int]:
        """The projects that have ACTOR actions not yet run."""
        return [
            int(p)
            for (p,) in conn.execute(
                "SELECT DISTINCT ch.project_pk FROM alert_actions x "
                "JOIN channels ch ON ch.pk = x.channel_pk WHERE x.method = 'ACTOR' AND x.done = 0"
            )
        ]

    def list_alerts(
        self, conn: ConnT, channel_pk: int, skip: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """(total, a page of alerts newest first), each with its actions and their outcomes."""
        p = self.PARAM
        (total,) = one(
            conn.execute(f"SELECT count(*) FROM alerts WHERE channel_pk = {p}", (channel_pk,))
        )
        rows = conn.execute(
            f"SELECT id, record FROM alerts WHERE channel_pk = {p} "
            f"ORDER BY id DESC LIMIT {p} OFFSET {p}",
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
                    f"WHERE alert_id = {p} ORDER BY slot",
                    (id_,),
                )
            ]
            out.append(alert)
        return int(total), out

    def alert_project(self, conn: ConnT, alert_id: int) -> str | None:
        """The id of the project an alert belongs to."""
        row = conn.execute(
            "SELECT p.id FROM alerts a JOIN channels ch ON ch.pk = a.channel_pk "
            f"JOIN projects p ON p.pk = ch.project_pk WHERE a.id = {self.PARAM}",
            (alert_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    # -- the rules' progress ----------------------------------------------------------------------

    def load_progress(self, conn: ConnT) -> tuple[int, int, dict[StateKey, TriggerState]]:
        """(last cursor judged, when the progress was last written (ms), every trigger
        state)."""
        got: dict[str, int] = dict(
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
        self, tx: TxT, cursor: int, alive_ms: int, states: dict[StateKey, TriggerState | None]
    ) -> None:
        """The last cursor judged and the trigger states changed since the last save (None: the
        trigger's state is gone). States of channels deleted meanwhile are skipped."""
        p = self.PARAM
        tx.execute(f"UPDATE state SET value = {p} WHERE key = 'alert_cursor'", (cursor,))
        tx.execute(f"UPDATE state SET value = {p} WHERE key = 'alert_alive_ms'", (alive_ms,))
        for (channel_pk, trigger), st in states.items():
            if st is None:
                tx.execute(
                    f"DELETE FROM alert_states WHERE channel_pk = {p} AND trigger = {p}",
                    (channel_pk, trigger),
                )
                continue
            tx.execute(
                self.PUT_STATE,
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

    def channel_exists(self, tx: TxT, channel_pk: int) -> bool:
        return (
            tx.execute(f"SELECT 1 FROM channels WHERE pk = {self.PARAM}", (channel_pk,)).fetchone()
            is not None
        )

    def forget_states(self, tx: TxT, channel_pk: int) -> None:
        tx.execute(f"DELETE FROM alert_states WHERE channel_pk = {self.PARAM}", (channel_pk,))
