"""The positions of durable consumers (``store.api.ConsumerPositions``) in PostgreSQL: one row of
the ``state`` key/value table per consumer, keyed ``consumer:<name>``."""

from __future__ import annotations

from streamgauge.store.api import Transactions
from streamgauge.store.postgres.conn import Conn, Tx

PREFIX = "consumer:"


class PgConsumerPositions:
    def __init__(self, store: Transactions[Tx, Conn]) -> None:
        self._store = store

    async def load(self, name: str) -> int | None:
        def read(conn: Conn) -> int | None:
            row = conn.execute(
                "SELECT value FROM state WHERE key = %s", (PREFIX + name,)
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._store.read(read)

    async def save(self, name: str, position: int) -> None:
        await self._store.write(
            lambda tx: tx.execute(
                "INSERT INTO state VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (PREFIX + name, int(position)),
            )
        )

    async def forget(self, name: str) -> None:
        await self._store.write(
            lambda tx: tx.execute("DELETE FROM state WHERE key = %s", (PREFIX + name,))
        )
