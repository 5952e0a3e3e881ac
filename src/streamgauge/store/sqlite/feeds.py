"""Feed tokens and feed sessions in SQLite (``store/feedsessions.py`` says what they are and
keeps what both stores hold in memory): the tables, and the tokens followed across the
processes of one node (a fan-out worker serving the push feed, docs/workers.md)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

import orjson

from streamgauge.domain import events as ev
from streamgauge.domain.feeds import FeedSession, FeedToken
from streamgauge.store.api import Store
from streamgauge.store.feedsessions import LiveFeeds, TokenRow, digest, now_ms
from streamgauge.store.sqlite.store import Tx


class FeedStore(LiveFeeds[Tx, sqlite3.Connection]):
    def __init__(
        self,
        store: Store[Tx, sqlite3.Connection],
        retention_seconds: float,
        sessions_per_token: int = 2000,
    ) -> None:
        super().__init__(store, retention_seconds, sessions_per_token)
        # With the push feed served by fan-out workers (docs/workers.md): whether this process
        # serves the token of a digest (each token's sessions are one process's); None: all.
        # ``expire`` then deletes only the sessions of the tokens this process serves.
        self.owns: Callable[[bytes], bool] | None = None
        self._following: list[ev.MetaEvent] | None = None  # while ``reload_tokens`` reads

    async def start(self) -> None:
        def counts(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            return conn.execute(
                "SELECT token_pk, count(*) FROM feed_sessions GROUP BY token_pk"
            ).fetchall()

        await self.reload_tokens()
        self._count = dict(await self._store.read(counts))
        await self.expire()
        self._task = asyncio.create_task(self._flusher())

    # -- tokens ---------------------------------------------------------------------------------

    async def reload_tokens(self) -> None:
        """Read every token (at start; and in a fan-out worker that missed token events: the
        ones no longer stored are dropped, their connections closed)."""

        def load(conn: sqlite3.Connection) -> list[TokenRow]:
            return conn.execute(
                "SELECT pk, id, project_pk, name, digest, created FROM feed_tokens"
            ).fetchall()

        self._following = []
        try:
            await self._read_tokens(self._store.read(load), every=True)
        finally:
            followed, self._following = self._following, None
        for event in followed:  # followed while the read ran: again, in order, on top of it
            self.follow(event)

    def token_for(self, token: str) -> FeedToken | None:
        dig = digest(token)
        tok = self._known(self._by_digest.get(dig))
        if tok is None:
            return None
        if self.owns is not None and not self.owns(dig):
            # Another process serves this token's sessions (a feed request that came second
            # on a kept-alive connection another route chose): refused, never served twice.
            return None
        return tok

    def _insert_token(self, tx: Tx, token: FeedToken, dig: bytes) -> int:
        # Never a pk a revoked token had (SQLite's max(pk) + 1 would give one): what a process
        # keeps by token pk (connections, counts, a token read in flight) must not mix them.
        (last,) = tx.execute(
            "SELECT max(coalesce((SELECT max(pk) FROM feed_tokens), 0),"
            " coalesce((SELECT value FROM state WHERE key = 'feed_token_seq'), 0))"
        ).fetchone()
        pk = int(last) + 1
        tx.execute("INSERT OR REPLACE INTO state VALUES ('feed_token_seq', ?)", (pk,))
        tx.execute(
            "INSERT INTO feed_tokens (pk, id, project_pk, name, digest, created)"
            " VALUES (?,?,?,?,?,?)",
            (pk, token.id, token.project_pk, token.name, dig, token.created_at),
        )
        # for the fan-out worker serving the token's sessions (ignored by this process)
        tx.events.append(
            ev.FeedTokenPut(pk, token.id, token.project_pk, token.name, dig.hex(), token.created_at)
        )
        return pk

    def _revoked(self, tx: Tx, token_pk: int) -> None:
        tx.events.append(ev.FeedTokenDropped(token_pk))

    def follow(self, event: ev.MetaEvent) -> None:
        """A token created or revoked by another process (``FeedTokenPut``,
        ``FeedTokenDropped``, in the metadata feed's order; ``Engine.followers``): known, or
        refused and its open connections closed, at once."""
        if self._following is not None:
            self._following.append(event)
        if isinstance(event, ev.FeedTokenPut):
            tok = FeedToken(event.pk, event.id, event.project_pk, event.name, event.created)
            self._by_digest[bytes.fromhex(event.digest)] = tok
            self._by_pk[event.pk] = tok
        elif isinstance(event, ev.FeedTokenDropped):
            self._count.pop(event.pk, None)
            self._drop_token(event.pk)

    def _evict(self, tx: Tx, token_pk: int, keep: list[str], limit: int) -> int:
        deleted: int = tx.execute(
            "DELETE FROM feed_sessions WHERE id IN (SELECT id FROM feed_sessions"
            " WHERE token_pk = ? AND id NOT IN (SELECT value FROM json_each(?))"
            " ORDER BY touched, created LIMIT ?)",
            (token_pk, orjson.dumps(keep), limit),
        ).rowcount
        return deleted

    async def _write_positions(self, sessions: list[FeedSession], now: int) -> None:
        # One statement for all (see sqlite._insert_rows: a row per step would hand the GIL
        # over once per session).
        rows = orjson.dumps([(s.id, s.position, s.after_time) for s in sessions])

        def update(tx: Tx) -> None:
            tx.execute(
                "UPDATE feed_sessions SET position = j.value ->> 1, after_time = j.value ->> 2,"
                " touched = ?2 FROM json_each(?1) j WHERE feed_sessions.id = j.value ->> 0",
                (rows, now),
            )

        await self._store.write(update)

    async def expire(self) -> int:
        """Delete detached sessions unused for longer than the retention; returns how many."""
        oldest = now_ms() - self._retention_ms
        owns = self.owns
        sql = (
            "DELETE FROM feed_sessions WHERE touched < ?"
            " AND id NOT IN (SELECT value FROM json_each(?))"
        )
        params: tuple[object, ...] = ()
        if owns is not None:
            sql += " AND token_pk IN (SELECT value FROM json_each(?))"
            params = (orjson.dumps([t.pk for d, t in self._by_digest.items() if owns(d)]),)

        def delete(tx: Tx) -> int:
            keep = orjson.dumps(self._held())
            gone = tx.execute(sql + " RETURNING token_pk", (oldest, keep, *params)).fetchall()

            def committed() -> None:
                for (token_pk,) in gone:
                    self._count[token_pk] = self._count.get(token_pk, 1) - 1

            tx.after_commit.append(committed)
            return len(gone)

        return await self._store.write(delete)
