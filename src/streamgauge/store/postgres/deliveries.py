"""Tables of the delivery engine in PostgreSQL (the twin of ``store/sqlite/deliveries.py``):
each consumer's durable cursor and its dead letters.

Functions take a write transaction (``Tx``, run through ``PgStore.write``) or a read
connection (``PgStore.read``). A dead letter and the cursor move past it are one transaction,
so a crash never leaves an item both skipped and unrecorded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from streamgauge.store.api import Transactions
from streamgauge.store.postgres.conn import Conn, Tx

MAX_DEAD_LETTERS = 1000  # kept per key; older ones are dropped as new ones arrive


def get_cursor(conn: Conn, key: str) -> int | None:
    row = conn.execute("SELECT cursor FROM delivery_cursors WHERE key = %s", (key,)).fetchone()
    return None if row is None else int(row[0])


def set_cursor(tx: Tx, key: str, cursor: int, now_ms: int) -> None:
    tx.execute(
        "INSERT INTO delivery_cursors (key, cursor, updated_ms) VALUES (%s, %s, %s) "
        "ON CONFLICT (key) DO UPDATE SET "
        "cursor = excluded.cursor, updated_ms = excluded.updated_ms",
        (key, cursor, now_ms),
    )


def forget(tx: Tx, key: str) -> None:
    """Drop a key's cursor and dead letters (the consumer was deleted)."""
    tx.execute("DELETE FROM delivery_cursors WHERE key = %s", (key,))
    tx.execute("DELETE FROM delivery_dead_letters WHERE key = %s", (key,))


def dead_letter(
    tx: Tx,
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
    tx.execute(
        "INSERT INTO delivery_dead_letters (key, cursor, method, url, headers, body, born_ms, "
        "failed_ms, attempts, last_status, last_error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
        "DELETE FROM delivery_dead_letters WHERE key = %s AND pk <= ("
        " SELECT pk FROM delivery_dead_letters WHERE key = %s ORDER BY pk DESC LIMIT 1 OFFSET %s)",
        (key, key, MAX_DEAD_LETTERS),
    )
    set_cursor(tx, key, cursor, now_ms)


def dead_letters(conn: Conn, key: str, limit: int) -> list[dict[str, Any]]:
    """A key's dead letters, newest first."""
    rows = conn.execute(
        "SELECT cursor, method, url, headers, body, born_ms, failed_ms, attempts, last_status, "
        "last_error FROM delivery_dead_letters WHERE key = %s ORDER BY pk DESC LIMIT %s",
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


class PgDeliveryPositions:
    """The positions of deliveries (``core/deliveries.Delivery``, a durable consumer) over
    these tables: ``load``/``save``/``forget`` are ``store.api.ConsumerPositions`` on
    ``delivery_cursors`` (``forget`` also drops the dead letters), and ``dead_letter`` records
    an item given up on and moves the cursor past it in one transaction."""

    def __init__(self, store: Transactions[Tx, Conn]) -> None:
        self._store = store

    async def load(self, name: str) -> int | None:
        return await self._store.read(lambda conn: get_cursor(conn, name))

    async def save(self, name: str, position: int) -> None:
        now = int(time.time() * 1000)
        await self._store.write(lambda tx: set_cursor(tx, name, position, now))

    async def forget(self, name: str) -> None:
        await self._store.write(lambda tx: forget(tx, name))

    async def dead_letter(self, name: str, **letter: Any) -> None:
        """``dead_letter`` (the keyword arguments) under ``name``, in one write transaction."""
        await self._store.write(lambda tx: dead_letter(tx, name, **letter))

    async def dead_letters(self, name: str, limit: int) -> list[dict[str, Any]]:
        return await self._store.read(lambda conn: dead_letters(conn, name, limit))
