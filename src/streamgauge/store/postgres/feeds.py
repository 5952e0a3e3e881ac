"""Feed tokens and feed sessions in PostgreSQL (the twin of ``store/sqlite/feeds.py``;
``store/feedsessions.py`` says what they are and keeps what both stores hold in memory): the
tables, and the sessions and tokens of the nodes sharing the database (``feedsignals``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from streamgauge.domain.feeds import FeedSession, FeedToken
from streamgauge.store.api import Store
from streamgauge.store.feedsessions import LiveFeeds, TokenRow, now_ms
from streamgauge.store.postgres import feedsignals
from streamgauge.store.postgres.conn import Conn, Tx


class FeedStore(LiveFeeds[Tx, Conn]):
    PARAM = "%s"

    def __init__(
        self,
        store: Store[Tx, Conn],
        retention_seconds: float,
        sessions_per_token: int = 2000,
    ) -> None:
        super().__init__(store, retention_seconds, sessions_per_token)
        # Sessions and tokens across the processes sharing the store (feedsignals.py).
        connect: Callable[[], Conn] = store.connection  # type: ignore[attr-defined]
        self._signals = feedsignals.FeedSignals(connect, self._notice, self._listening)
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        def counts(conn: Conn) -> list[tuple[int, int]]:
            return conn.execute(
                "SELECT token_pk, count(*) FROM feed_sessions GROUP BY token_pk"
            ).fetchall()

        await self.reload_tokens()
        self._count = dict(await self._store.read(counts))
        await self.expire()
        self._task = asyncio.create_task(self._flusher())
        await self._signals.start()

    async def reload_tokens(self) -> None:
        """Read every token (at start, and when the listener reconnects: it may have missed
        notices); the ones no longer stored are dropped, their connections closed."""
        await self._load_tokens()

    async def _load_tokens(self, pk: int | None = None) -> None:
        """Read the tokens (one, or all: then tokens no longer stored are dropped)."""

        def load(conn: Conn) -> list[TokenRow]:
            sql = "SELECT pk, id, project_pk, name, digest, created FROM feed_tokens"
            if pk is None:
                return conn.execute(sql).fetchall()
            return conn.execute(sql + " WHERE pk = %s", (pk,)).fetchall()

        await self._read_tokens(self._store.read(load), every=pk is None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _listening(self) -> None:
        """The listener (re)connected: what it may have missed, the tokens, is read again."""
        self._spawn(self.reload_tokens())

    def _notice(self, notice: str) -> None:
        """What another process announced (``feedsignals``): a session taken over, a token
        created or revoked."""
        what, _, arg = notice.partition(" ")
        if what == "take":
            owner = self._owners.get(arg)
            if owner is not None:  # served here: end it (its position is saved, then let go)
                owner.close()
        elif what == "token" and arg.isdigit():
            self._spawn(self._load_tokens(int(arg)))
        elif what == "revoke" and arg.isdigit():
            self._drop_token(int(arg))

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._pending):
            task.cancel()
        await self._signals.stop()

    # -- tokens ---------------------------------------------------------------------------------

    def _insert_token(self, tx: Tx, token: FeedToken, dig: bytes) -> int:
        cur = tx.execute(
            "INSERT INTO feed_tokens (id, project_pk, name, digest, created)"
            " VALUES (%s,%s,%s,%s,%s) RETURNING pk",
            (token.id, token.project_pk, token.name, dig, token.created_at),
        )
        row = cur.fetchone()
        assert row is not None
        feedsignals.notify(tx, f"token {row[0]}")  # the other nodes accept it at once
        return int(row[0])

    def _revoked(self, tx: Tx, token_pk: int) -> None:
        feedsignals.notify(tx, f"revoke {token_pk}")  # the other nodes end its sessions

    def release(self, session_id: str) -> None:
        if session_id not in self._opening:
            return
        super().release(session_id)
        if session_id not in self._live:  # the connection ended before serving it
            self._spawn(self._signals.let_go(session_id))

    def _evict(self, tx: Tx, token_pk: int, keep: list[str], limit: int) -> int:
        deleted: int = tx.execute(
            "DELETE FROM feed_sessions WHERE id IN (SELECT id FROM feed_sessions"
            " WHERE token_pk = %s AND NOT (id = ANY(%s::text[]))"
            " ORDER BY touched, created LIMIT %s)",
            (token_pk, keep, limit),
        ).rowcount
        return deleted

    async def _created(self, session: FeedSession) -> None:
        await self._signals.hold(session.id)  # served here (released with the claim)

    async def take_over(self, token: FeedToken, session_id: str) -> None:
        """Close the connection that serves this session, if any, and wait until it has ended
        and saved its position: one session is served by one connection at a time, so a
        client that resumes while its old connection is still open (half-open, not yet
        noticed by the server) continues exactly where that one stopped."""
        await super().take_over(token, session_id)
        # Served by another node: it ends its connection and saves the position first.
        await self._signals.take(session_id)

    async def closed(self, session: FeedSession) -> None:
        """The connection ended: write its position now. The session stays live until the
        write is done, so a take-over meanwhile waits for it (and then reads where this
        connection stopped, not the position stored before)."""
        try:
            await super().closed(session)
        finally:
            with contextlib.suppress(Exception):  # after the save: a taker reads the position
                await self._signals.let_go(session.id)

    async def _write_positions(self, sessions: list[FeedSession], now: int) -> None:
        # One statement for all sessions (arrays, not a statement per session).
        ids = [s.id for s in sessions]
        positions = [s.position for s in sessions]
        after_times = [s.after_time for s in sessions]

        def update(tx: Tx) -> None:
            tx.execute(
                "UPDATE feed_sessions SET position = j.position, after_time = j.after_time,"
                " touched = %s FROM unnest(%s::text[], %s::int8[], %s::int8[])"
                " AS j(id, position, after_time) WHERE feed_sessions.id = j.id",
                (now, ids, positions, after_times),
            )

        await self._store.write(update)

    async def expire(self) -> int:
        """Delete detached sessions unused for longer than the retention; returns how many."""
        oldest = now_ms() - self._retention_ms

        def delete(tx: Tx) -> int:
            keep = self._held()
            gone = tx.execute(
                "DELETE FROM feed_sessions WHERE touched < %s"
                " AND NOT (id = ANY(%s::text[])) RETURNING token_pk",
                (oldest, keep),
            ).fetchall()

            def committed() -> None:
                for (token_pk,) in gone:
                    self._count[token_pk] = self._count.get(token_pk, 1) - 1

            tx.after_commit.append(committed)
            return len(gone)

        return await self._store.write(delete)

    async def _flush_pass(self, expire: bool) -> None:
        if expire:
            # Sessions served here are touched as often as expiry runs: another node's expiry,
            # which does not know them, never takes one that is connected.
            for session in list(self._live.values()):
                session.dirty = True
        await super()._flush_pass(expire)
