"""The push feed's tables written by a fan-out worker process (``--workers N`` with the push
feed served in workers, ``STREAMGAUGE_WORKERS_FEED``; docs/workers.md).

Every connection of one feed token is served by one process (``routing.owner``), so a token's
sessions (which connection serves one, take-over, the session count and eviction) are that
process's state. A worker serving tokens writes their sessions itself: ``feed_sessions`` rows
(created, positions once a second and when a connection ends, expired), each in a short
``BEGIN IMMEDIATE`` transaction of its own SQLite connection to the writer's database (WAL:
one writer at a time, the others wait, ``busy_timeout``). Nothing else is written here: the
worker's engine stays read-only, tokens are created and revoked by the writer (their events,
``FeedTokenPut`` / ``FeedTokenDropped``, reach the worker over the local bus).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from streamgauge.domain.readmodel import ReadModel
from streamgauge.store.sqlite.replica import ReplicaStore
from streamgauge.store.sqlite.store import Tx, _connect

T = TypeVar("T")

CACHE_KIB = 2048  # a few pages of feed_sessions: not the writer's cache


class FeedTables:
    """What ``store.sqlite.feeds.FeedStore`` needs of a store (``registry``, ``read``,
    ``write``): reads from the worker's read-only view, writes on a connection of its own."""

    def __init__(self, replica: ReplicaStore) -> None:
        self._replica = replica
        self.registry: ReadModel = replica.registry
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="feed-writer")
        self._conn: sqlite3.Connection | None = None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._replica.read(fn)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one write transaction of its own (its ``after_commit`` hooks after)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._write, fn)

    def _write(self, fn: Callable[[Tx], T]) -> T:
        if self._conn is None:
            self._conn = _connect(  # without the index: BEGIN IMMEDIATE would lock it too
                self._replica.path,
                readonly=False,
                durability=self._replica.durability,
                index=False,
            )
            self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            # No automatic checkpoint in this connection's commits, as in the writer's own:
            # under ingest the WAL is past SQLite's 1,000 pages, and a position flush would
            # copy it into the database file holding the write lock while the writer's
            # transactions wait (the writer checkpoints passively, from a connection of its
            # own: ``SqliteStore._checkpoints``).
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        conn = self._conn
        tx = Tx(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(tx)
            if tx.events:
                raise RuntimeError("a worker writes no metadata event")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for hook in tx.after_commit:
            hook()
        return result

    def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._pool.submit(shut)
        self._pool.shutdown(wait=True)
