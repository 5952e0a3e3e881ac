"""Tables of the delivery engine: each consumer's durable cursor and its dead letters
(``store.api.DeliveryTables``), the SQL both backends share. ``store/sqlite/deliveries.py`` and
``store/postgres/deliveries.py`` give their placeholder, expose ``DeliveryTablesSQL``'s methods
as their module's functions and bind ``StoredDeliveryPositions`` to their transactions.

Functions take a write transaction (``Tx``, run through the store's ``write``) or a read
connection (the store's ``read``). A dead letter and the cursor move past it are one transaction,
so a crash never leaves an item both skipped and unrecorded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import orjson

from streamgauge.store.api import Transactions
from streamgauge.store.dbapi import Executes

MAX_DEAD_LETTERS = 1000  # kept per key; older ones are dropped as new ones arrive

TxT = TypeVar("TxT", bound=Executes)
ConnT = TypeVar("ConnT", bound=Executes)


class DeliveryTablesSQL(Generic[TxT, ConnT]):
    """The delivery tables over one backend's transactions (``TxT``) and read connections
    (``ConnT``); ``PARAM`` is its SQL placeholder."""

    PARAM = "?"

    def get_cursor(self, conn: ConnT, key: str) -> int | None:
        row = conn.execute(
            f"SELECT cursor FROM delivery_cursors WHERE key = {self.PARAM}", (key,)
        ).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, tx: TxT, key: str, cursor: int, now_ms: int) -> None:
        p = self.PARAM
        tx.execute(
            f"INSERT INTO delivery_cursors (key, cursor, updated_ms) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT (key) DO UPDATE SET "
            "cursor = excluded.cursor, updated_ms = excluded.updated_ms",
            (key, cursor, now_ms),
        )

    def forget(self, tx: TxT, key: str) -> None:
        """Drop a key's cursor and dead letters (the consumer was deleted)."""
        p = self.PARAM
        tx.execute(f"DELETE FROM delivery_cursors WHERE key = {p}", (key,))
        tx.execute(f"DELETE FROM delivery_dead_letters WHERE key = {p}", (key,))

    def dead_letter(
        self,
        tx: TxT,
        key: str,
        *,
        cursor: int,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        born_ms: int,
        now_ms: int,
        attempts: int,
        last_status: int | None,
        last_error: str | None,
    ) -> None:
        """Record an item given up on and move the key's cursor past it, in one transaction."""
        p = self.PARAM
        tx.execute(
            "INSERT INTO delivery_dead_letters (key, cursor, method, url, headers, body, born_ms, "
            "failed_ms, attempts, last_status, last_error) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
            (
                key,
                cursor,
                method,
                url,
                orjson.dumps(dict(headers)).decode(),
                body,
                born_ms,
                now_ms,
                attempts,
                last_status,
                last_error,
            ),
        )
        tx.execute(
            f"DELETE FROM delivery_dead_letters WHERE key = {p} AND pk <= ("
            f" SELECT pk FROM delivery_dead_letters WHERE key = {p} ORDER BY pk DESC"
            f" LIMIT 1 OFFSET {p})",
            (key, key, MAX_DEAD_LETTERS),
        )
        self.set_cursor(tx, key, cursor, now_ms)

    def dead_letters(self, conn: ConnT, key: str, limit: int) -> list[dict[str, Any]]:
        """A key's dead letters, newest first."""
        p = self.PARAM
        rows = conn.execute(
            "SELECT cursor, method, url, headers, body, born_ms, failed_ms, attempts, last_status, "
            f"last_error FROM delivery_dead_letters WHERE key = {p} ORDER BY pk DESC LIMIT {p}",
            (key, limit),
        ).fetchall()
        return [
            {
                "cursor": cursor,
                "method": method,
                "url": url,
                "headers": orjson.loads(headers),
                "body": bytes(body),
                "born_ms": born_ms,
                "failed_ms": failed_ms,
                "attempts": attempts,
                "last_status": last_status,
                "last_error": last_error,
            }
            for (
                cursor,
                method,
                url,
                headers,
                body,
                born_ms,
                failed_ms,
                attempts,
                last_status,
                last_error,
            ) in rows
        ]


class StoredDeliveryPositions(Generic[TxT, ConnT]):
    """The positions of deliveries (``core/deliveries.Delivery``, a durable consumer) over
    these tables: ``load``/``save``/``forget`` are ``store.api.ConsumerPositions`` on
    ``delivery_cursors`` (``forget`` also drops the dead letters), and ``dead_letter`` records
    an item given up on and moves the cursor past it in one transaction. A backend's subclass
    sets ``tables``, its ``DeliveryTablesSQL``."""

    tables: DeliveryTablesSQL[TxT, ConnT]

    def __init__(self, store: Transactions[TxT, ConnT]) -> None:
        self._store = store

    async def load(self, name: str) -> int | None:
        return await self._store.read(lambda conn: self.tables.get_cursor(conn, name))

    async def save(self, name: str, position: int) -> None:
        now = int(time.time() * 1000)
        await self._store.write(lambda tx: self.tables.set_cursor(tx, name, position, now))

    async def forget(self, name: str) -> None:
        await self._store.write(lambda tx: self.tables.forget(tx, name))

    async def dead_letter(self, name: str, **letter: Any) -> None:
        """``dead_letter`` (the keyword arguments) under ``name``, in one write transaction."""
        await self._store.write(lambda tx: self.tables.dead_letter(tx, name, **letter))

    async def dead_letters(self, name: str, limit: int) -> list[dict[str, Any]]:
        return await self._store.read(lambda conn: self.tables.dead_letters(conn, name, limit))
