"""The positions of durable consumers (``store.api.ConsumerPositions``) in SQLite: one row of
the ``state`` key/value table per consumer, keyed ``consumer:<name>`` (no migration needed: an
existing data directory simply has none yet)."""

from __future__ import annotations

import sqlite3

from streamgauge.store.api import Transactions
from streamgauge.store.sqlite.store import Tx

PREFIX = "consumer:"


class SqliteConsumerPositions:
    def __init__(self, store: Transactions[Tx, sqlite3.Connection]) -> None:
        self._store = store

    async def load(self, name: str) -> int | None:
        def read(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (PREFIX + name,)).fetchone()
            return None if row is None else int(row[0])

        return await self._store.read(read)

    async def save(self, name: str, position: int) -> None:
        await self._store.write(
            lambda tx: tx.execute(
                "INSERT OR REPLACE INTO state VALUES (?, ?)", (PREFIX + name, int(position))
            )
        )

    async def forget(self, name: str) -> None:
        await self._store.write(
            lambda tx: tx.execute("DELETE FROM state WHERE key = ?", (PREFIX + name,))
        )
