"""Feed tokens and feed sessions (the Synoptic-compatible push feed): what both feed stores
(``store/sqlite/feeds.py``, ``store/postgres/feeds.py``) keep in memory and how a session
passes from one connection to the next; their SQL is their own.

A feed token is a read-only credential bound to one project; only its SHA-256 digest is stored
(tokens are 256-bit random strings, so a fast digest is as safe as a slow hash and costs nothing
per connection). A feed session is a durable consumer: the arguments it was opened with and its
position in the log (every observation up to it has been considered and, if it matched, pushed).
Positions move in memory as messages go out and are written in one transaction per second for
every session that moved, and at once when a connection ends, so a clean stop or a server restart
resumes exactly; after a kill -9 a session resumes from its last written position (at most a
second of observations is pushed again, none is lost).

One connection serves a session at a time. A resume takes the session over (``take_over``):
the connection serving it is closed, and the resume waits until it has ended and written its
position. A connection that ends by itself counts as serving its session until its position is
written (``closed``), so a resume in that window waits too: it always reads where the last
connection stopped. If that write fails (a full disk, the database gone for a moment), the
position is kept in memory (``_unsaved``): a resume on this process continues from it, and the
flush a second later writes it. Only a resume on another node (PostgreSQL), or after this process
stopped without a working database, reads the position written before and pushes again what
the connection had pushed since: a repeat, never a gap.

Sessions do not accumulate. A detached session (no connection serves it) lives for the configured
retention since it was last connected, and is deleted within a minute after that (sooner for a
short retention). A token keeps at most ``sessions_per_token`` sessions: a new one first evicts
the token's least recently used detached sessions, and is refused (``SessionLimit``) when every
session of the token is attached, i.e. served by a connection or being opened by one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from streamgauge.domain.errors import NotFound, Unavailable
from streamgauge.domain.feeds import FeedSession, FeedToken, SessionLimit
from streamgauge.domain.model import now_iso
from streamgauge.store.api import Store

log = logging.getLogger("streamgauge.feed")

FLUSH_SECONDS = 1.0
EXPIRE_EVERY_MAX_SECONDS = 60.0  # the longest a session outlives its retention in the table

# a feed_tokens row: pk, id, project_pk, name, digest, created
TokenRow = tuple[int, str, int, str, bytes, str]
TxT = TypeVar("TxT")
ConnT = TypeVar("ConnT")


@dataclass(slots=True)
class Owner:
    """The connection serving a live session: how to close it, and (once a take-over waits for
    it) an event set when it has ended and saved its position."""

    close: Callable[[], None]
    ended: asyncio.Event | None = None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def now_ms() -> int:
    return int(time.time() * 1000)


class LiveFeeds(ABC, Generic[TxT, ConnT]):
    """The memory of a feed store: tokens by digest and primary key, the connections of each
    token, the sessions being opened, served (``_live``) and their owners. A subclass reads and
    writes the tables (``PARAM`` is its SQL placeholder; ``_write_positions`` its update)."""

    PARAM = "?"

    def __init__(
        self, store: Store[TxT, ConnT], retention_seconds: float, sessions_per_token: int
    ) -> None:
        self._store = store
        self._retention_ms = int(retention_seconds * 1000)
        self._expire_every = min(
            EXPIRE_EVERY_MAX_SECONDS, max(FLUSH_SECONDS, retention_seconds / 4)
        )
        self._cap = sessions_per_token
        # token pk -> its stored sessions; changed only by the writer thread, after commits
        self._count: dict[int, int] = {}
        # session id -> (token pk, claims): sessions a connection is opening (a new one between
        # its insert and its first message, a resumed one from before it is read), never evicted
        self._opening: dict[str, tuple[int, int]] = {}
        self._by_digest: dict[bytes, FeedToken] = {}
        self._by_pk: dict[int, FeedToken] = {}
        self._live: dict[str, FeedSession] = {}  # sessions with an open connection
        # sessions whose connection ended but whose position write failed: resumed from here
        # and written by the next flush (held from eviction and expiry until then)
        self._unsaved: dict[str, FeedSession] = {}
        # session id -> its connection's owner (see Owner)
        self._owners: dict[str, Owner] = {}
        self._closers: dict[int, set[Callable[[str], None]]] = {}  # token pk -> open connections
        self._reading: list[set[int]] = []  # the tokens dropped while each token read runs
        self._task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await self.flush()  # the live sessions' positions, and any not written before

    # -- tokens ---------------------------------------------------------------------------------

    def token_for(self, token: str) -> FeedToken | None:
        """The token of this secret, if this process knows it (and serves its sessions)."""
        return self._known(self._by_digest.get(digest(token)))

    async def find_token(self, token: str) -> FeedToken | None:
        """``token_for``, after looking a token this process does not know up in the table:
        another process (the writer, for a fan-out worker serving the feed; another node)
        may have created it a moment ago, and this one hears of it a moment after that
        process's reply, too late for a client that connects at once. One read by the
        digest's unique index, for an unknown token only."""
        tok = self.token_for(token)
        if tok is not None:
            return tok
        dig = digest(token)
        sql = (
            "SELECT pk, id, project_pk, name, digest, created FROM feed_tokens"
            f" WHERE digest = {self.PARAM}"
        )

        def load(conn: Any) -> list[TokenRow]:
            return list(conn.execute(sql, (dig,)).fetchall())

        await self._read_tokens(self._store.read(load), every=False)
        return self.token_for(token)

    def _known(self, tok: FeedToken | None) -> FeedToken | None:
        """``tok`` if its project still exists."""
        if tok is None or tok.project_pk not in self._store.registry.projects_by_pk:
            return None
        return tok

    def project_of(self, session: FeedSession) -> int:
        tok = self._by_pk.get(session.token_pk)
        if tok is None:
            raise NotFound("the session's feed token was revoked")
        return tok.project_pk

    def tokens_of(self, project_pk: int) -> list[FeedToken]:
        return [t for t in self._by_pk.values() if t.project_pk == project_pk]

    async def create_token(self, project_pk: int, name: str) -> tuple[FeedToken, str]:
        token = "ft_" + secrets.token_urlsafe(32)
        id_ = "ft" + secrets.token_hex(6)
        created = now_iso()
        dig = digest(token)
        pk = await self._store.write(
            lambda tx: self._insert_token(tx, FeedToken(0, id_, project_pk, name, created), dig)
        )
        tok = FeedToken(pk, id_, project_pk, name, created)
        self._by_digest[dig] = tok
        self._by_pk[pk] = tok
        return tok, token

    @abstractmethod
    def _insert_token(self, tx: Any, token: FeedToken, dig: bytes) -> int:
        """Insert ``token`` (its ``pk`` not yet known) with its digest, and tell the other
        processes; its primary key."""

    async def revoke(self, project_pk: int, token_id: str) -> None:
        """Delete the token and its sessions, and close its open connections."""
        tok = next(
            (t for t in self._by_pk.values() if t.id == token_id and t.project_pk == project_pk),
            None,
        )
        if tok is None:
            raise NotFound(f"no feed token {token_id!r}")
        p = self.PARAM

        def delete(tx: Any) -> None:
            tx.execute(f"DELETE FROM feed_sessions WHERE token_pk = {p}", (tok.pk,))
            tx.execute(f"DELETE FROM feed_tokens WHERE pk = {p}", (tok.pk,))
            self._revoked(tx, tok.pk)

            def committed() -> None:
                self._count.pop(tok.pk, None)

            tx.after_commit.append(committed)

        await self._store.write(delete)
        self._drop_token(tok.pk)

    @abstractmethod
    def _revoked(self, tx: Any, token_pk: int) -> None:
        """Tell the other processes, in the transaction that deletes it, that a token is
        revoked."""

    async def _read_tokens(self, read: Awaitable[list[TokenRow]], every: bool) -> None:
        """Know the tokens ``read`` returns; with ``every`` (all the stored tokens), drop the
        known ones it does not return. The read may have begun before a token was created
        here or revoked (here, or by another process): one created while it ran stays known,
        one revoked while it ran stays revoked. (Token pks are never reused.)"""
        before = dict(self._by_pk) if every else {}
        dropped: set[int] = set()
        self._reading.append(dropped)
        try:
            rows = await read
        finally:
            self._reading = [d for d in self._reading if d is not dropped]  # (sets: by identity)
        stored = {row[0] for row in rows}
        for pk, tok in before.items():
            if pk not in stored and self._by_pk.get(pk) is tok:
                self._drop_token(pk)
        for pk, id_, project_pk, name, dig, created in rows:
            if pk not in dropped:
                tok = FeedToken(pk, id_, project_pk, name, created)
                self._by_digest[bytes(dig)] = tok
                self._by_pk[pk] = tok

    def _drop_token(self, token_pk: int) -> None:
        """A token revoked (here, by another process or on another node): refused from now on,
        and its open connections end."""
        for dropped in self._reading:
            dropped.add(token_pk)
        self._by_pk.pop(token_pk, None)
        self._by_digest = {d: t for d, t in self._by_digest.items() if t.pk != token_pk}
        self._unsaved = {i: s for i, s in self._unsaved.items() if s.token_pk != token_pk}
        for close in list(self._closers.pop(token_pk, ())):
            close("feed token revoked")

    def attach(self, token: FeedToken, close: Callable[[str], None]) -> Callable[[], None]:
        """Register an open connection of ``token`` (closed on revoke); returns the detach."""
        self._closers.setdefault(token.pk, set()).add(close)

        def detach() -> None:
            closers = self._closers.get(token.pk)
            if closers is not None:
                closers.discard(close)

        return detach

    # -- sessions -------------------------------------------------------------------------------

    def _attached(self, token_pk: int) -> list[str]:
        """The token's sessions that a connection serves or is opening (or whose last
        position is not written yet: ``_unsaved``). Called in the writer thread: ``list()``
        copies each dict in one step under the GIL."""
        live = [s.id for s in list(self._live.values()) if s.token_pk == token_pk]
        opening = [i for i, (t, _) in list(self._opening.items()) if t == token_pk]
        unsaved = [s.id for s in list(self._unsaved.values()) if s.token_pk == token_pk]
        return live + opening + unsaved

    def _held(self) -> list[str]:
        """The sessions expiry must keep: served, being opened, or not written yet."""
        return list(self._live) + list(self._opening) + list(self._unsaved)

    def claim(self, token: FeedToken, session_id: str) -> None:
        """A connection is opening ``session_id``: it is not evicted until ``release``."""
        _, n = self._opening.get(session_id, (token.pk, 0))
        self._opening[session_id] = (token.pk, n + 1)

    def release(self, session_id: str) -> None:
        found = self._opening.get(session_id)
        if found is None:
            return
        if found[1] > 1:
            self._opening[session_id] = (found[0], found[1] - 1)
        else:
            del self._opening[session_id]

    async def create_session(
        self, token: FeedToken, args: str, position: int, after_time: int | None = None
    ) -> FeedSession:
        """A new session of ``token``, claimed for its connection (``release`` it when the
        connection ends). At the cap, the token's least recently used detached sessions make
        room; ``SessionLimit`` if every one is attached."""
        session = FeedSession(str(uuid.uuid4()), token.pk, args, position, after_time)
        now = now_ms()
        cap = self._cap
        p = self.PARAM
        sql = (
            "INSERT INTO feed_sessions (id, token_pk, args, position, after_time, created,"
            f" touched) VALUES ({p},{p},{p},{p},{p},{p},{p})"
        )

        def insert(tx: Any) -> None:
            count = self._count.get(token.pk, 0)
            evicted = 0
            if count >= cap:
                evicted = self._evict(tx, token.pk, self._attached(token.pk), count - cap + 1)
                if count - evicted >= cap:
                    raise SessionLimit(
                        "too many sessions for this feed token",
                        [
                            {
                                "field": "token",
                                "reason": f"at most {cap} sessions per feed token, and all of"
                                " them are connected: close one first",
                            }
                        ],
                    )
            tx.execute(sql, (session.id, token.pk, args, position, after_time, now, now))

            def committed() -> None:  # before any other transaction can evict it
                self._count[token.pk] = self._count.get(token.pk, 0) - evicted + 1
                self.claim(token, session.id)

            tx.after_commit.append(committed)

        await self._store.write(insert)
        await self._created(session)
        return session

    @abstractmethod
    def _evict(self, tx: Any, token_pk: int, keep: list[str], limit: int) -> int:
        """Delete up to ``limit`` of the token's sessions not in ``keep``, least recently
        used first (in the transaction ``tx``); how many."""

    async def _created(self, session: FeedSession) -> None:
        """A new session was stored (and claimed) for a connection of this process."""

    async def session(self, token: FeedToken, session_id: str) -> FeedSession | None:
        """The session of this token, if it exists and has not expired."""
        live = self._live.get(session_id) or self._unsaved.get(session_id)
        if live is not None:
            return live if live.token_pk == token.pk else None
        oldest = now_ms() - self._retention_ms
        p = self.PARAM
        sql = (
            "SELECT args, position, after_time FROM feed_sessions"
            f" WHERE id = {p} AND token_pk = {p} AND touched >= {p}"
        )

        def get(conn: Any) -> tuple[str, int, int | None] | None:
            row: tuple[str, int, int | None] | None = conn.execute(
                sql, (session_id, token.pk, oldest)
            ).fetchone()
            return row

        row = await self._store.read(get)
        if row is None:
            return None
        return FeedSession(session_id, token.pk, row[0], row[1], row[2])

    def opened(self, session: FeedSession, close: Callable[[], None]) -> None:
        """A connection serves ``session`` now; ``close`` ends it (when another takes over).
        Its claim (``claim``, or the one ``create_session`` made) ends: being live protects it
        from eviction until ``closed``."""
        self._live[session.id] = session
        self._unsaved.pop(session.id, None)  # (still dirty: the flush writes it)
        self._owners[session.id] = Owner(close)
        self.release(session.id)

    async def take_over(self, token: FeedToken, session_id: str) -> None:
        """Close the connection that serves this session, if any, and wait until it has ended
        and saved its position: one session is served by one connection at a time, so a
        client that resumes while its old connection is still open (half-open, not yet
        noticed by the server), or still writing its position, continues exactly where that
        one stopped."""
        live = self._live.get(session_id)
        owner = self._owners.get(session_id)
        if live is None or owner is None or live.token_pk != token.pk:
            return
        if owner.ended is None:  # made only when a take-over waits (1 KB a session otherwise)
            owner.ended = asyncio.Event()
        ended = owner.ended
        owner.close()
        await ended.wait()

    def positions(self, session: FeedSession) -> SessionPositions:
        """The session's position as a durable consumer's positions (its row)."""
        return SessionPositions(self, session)

    def moved(self, session: FeedSession, position: int, after_time: int | None = None) -> None:
        session.position = position
        session.after_time = after_time
        session.dirty = True

    async def closed(self, session: FeedSession) -> None:
        """The connection ended: write its position now. The session stays live until the
        write is done, so a take-over meanwhile waits for it (and then reads where this
        connection stopped, not the position stored before). A write that fails keeps the
        session in memory (``_unsaved``) for the next flush and for a resume meanwhile."""
        session.dirty = True
        try:
            await self._save([session])
        except Exception as exc:  # noqa: BLE001 - the store's failure: kept, written later
            if self._live.get(session.id) is session:
                self._unsaved[session.id] = session
            log.warning(
                "feed session %s: its position could not be written (%s); kept in memory"
                " and written again within %s s",
                session.id,
                exc,
                FLUSH_SECONDS,
            )
        finally:
            if self._live.get(session.id) is session:
                del self._live[session.id]
                owner = self._owners.pop(session.id, None)
                if owner is not None and owner.ended is not None:
                    owner.ended.set()

    async def _flusher(self) -> None:
        """Once a second: the positions that moved (``flush``), and now and then ``expire``.
        A failed pass (a full disk, a lock held past the timeout, the database out of reach)
        leaves the positions dirty for the next one; only a closed store stops it."""
        expired = time.monotonic()
        failing = False
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            due = time.monotonic() - expired >= self._expire_every
            try:
                await self._flush_pass(due)
            except Unavailable as exc:
                if exc.retry_after is None:  # the store closing under us: stop quietly
                    return
                continue  # out of reach for now (PostgreSQL): the positions stay dirty
            except Exception as exc:  # noqa: BLE001 - logged once until a pass succeeds
                if not failing:
                    log.warning("feed sessions: positions not written (%s); retrying", exc)
                failing = True
                continue
            if due:
                expired = time.monotonic()
            if failing:
                log.warning("feed sessions: positions written again")
            failing = False

    async def _flush_pass(self, expire: bool) -> None:
        await self.flush()
        if expire:
            await self.expire()

    @abstractmethod
    async def expire(self) -> int:
        """Delete detached sessions unused for longer than the retention; returns how many."""

    async def flush(self) -> None:
        unsaved = list(self._unsaved.values())
        await self._save([s for s in self._live.values() if s.dirty] + unsaved)
        for s in unsaved:  # written now (unless resumed meanwhile and moved again)
            if self._unsaved.get(s.id) is s:
                self._unsaved.pop(s.id, None)  # (a revoke in the writer thread may drop it too)

    async def _save(self, sessions: list[FeedSession]) -> None:
        dirty = [s for s in sessions if s.dirty]
        if not dirty:
            return
        for s in dirty:
            s.dirty = False
        try:
            await self._write_positions(dirty, now_ms())
        except BaseException:
            for s in dirty:  # not stored: the next flush tries again
                s.dirty = True
            raise

    @abstractmethod
    async def _write_positions(self, sessions: list[FeedSession], now: int) -> None:
        """Store the sessions' positions, touched at ``now``, in one transaction."""

    def connected(self, project_pk: int) -> list[tuple[FeedToken, FeedSession]]:
        """The sessions of the project's tokens that a connection serves now (for the
        dashboard's list of connected sessions)."""
        out: list[tuple[FeedToken, FeedSession]] = []
        for s in list(self._live.values()):
            tok = self._by_pk.get(s.token_pk)
            if tok is not None and tok.project_pk == project_pk:
                out.append((tok, s))
        return out

    def sessions_of(self, token: FeedToken) -> int:
        """How many sessions ``token`` keeps (attached or resumable)."""
        return self._count.get(token.pk, 0)


class SessionPositions:
    """A feed session's position as ``store.api.ConsumerPositions`` (the session is a durable
    consumer, ``faces/synoptic/feed.SessionConsumer``, named by its id): the session row. A
    save moves the session in memory (``moved``, as every message pushed does); the row is
    written with every moved session once a second and when its connection ends (``closed``),
    so a clean stop or restart resumes exactly, a kill at most a second back."""

    def __init__(self, feeds: LiveFeeds[Any, Any], session: FeedSession) -> None:
        self._feeds = feeds
        self._session = session

    def _check(self, name: str) -> None:
        if name != self._session.id:
            raise KeyError(f"these are the positions of session {self._session.id}, not {name}")

    async def load(self, name: str) -> int | None:
        self._check(name)
        return self._session.position

    async def save(self, name: str, position: int) -> None:
        self._check(name)
        self._feeds.moved(self._session, position, self._session.after_time)

    async def forget(self, name: str) -> None:
        """A session is forgotten by its retention (``expire``), never by its reader."""
        self._check(name)
