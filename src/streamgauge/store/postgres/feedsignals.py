"""Feed sessions and tokens across the processes sharing one PostgreSQL store (cluster nodes).

One connection serves a session at a time, whichever node it is on:

* **Who serves a session** is a session-level advisory lock (one 64-bit key per session id,
  ``session_key``) held on this process' *lock connection* while a connection of this process
  serves or opens the session. PostgreSQL releases it when that connection ends, so a node
  that died (``kill -9``) holds nothing: no table of owners to clean up, no stale owner to wait
  for.
* **A take-over** (``take``): a process that resumes a session tries the lock; if another
  process holds it, it sends ``take <session>`` on the ``NOTIFY`` channel ``CHANNEL`` and waits
  for the lock. The holder's listener hears it, ends its connection (closing message, 1000), and
  saves the session's position before it lets go of the lock, so the new connection reads the
  position the old one reached: nothing lost, nothing pushed twice. A holder that does not let
  go within ``take_wait`` seconds (hung) is not waited for longer.
* **Tokens**: a token created or revoked in one process is announced in the same transaction
  (``token <pk>``, ``revoke <pk>``; ``NOTIFY`` is delivered at commit), so every other process
  accepts it, or drops it and ends its connections, at once. A listener that (re)connects
  reloads every token: what it may have missed meanwhile.

The listener is a thread blocked on its own connection; notices reach the event loop through
``on_notice``. The lock connection is used by one thread of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg

from streamgauge.store.postgres.conn import Conn, Tx

log = logging.getLogger("streamgauge.feed")

CHANNEL = "sg_feed"
POLL_SECONDS = 0.02  # how often a take-over tries the lock again while the holder lets go
LISTEN_WAKE_SECONDS = 0.5  # how often the listener looks whether it should stop
T = TypeVar("T")


def session_key(session_id: str) -> int:
    """The advisory lock key of a session (the one-key form: it never meets the two-key
    locks of ``schema.LOCK_CLASS``)."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8, person=b"sg-feed").digest()
    return int.from_bytes(digest, "big", signed=True)


def notify(tx: Tx, notice: str) -> None:
    """Announce ``notice`` to every process when ``tx`` commits."""
    tx.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice))


class FeedSignals:
    """This process' lock connection and listener (see the module docstring)."""

    def __init__(
        self,
        connect: Callable[[], Conn],
        on_notice: Callable[[str], None],
        on_listening: Callable[[], None],
        *,
        take_wait: float = 5.0,
    ) -> None:
        self._connect = connect
        self._on_notice = on_notice  # called on the loop
        self._on_listening = on_listening  # called on the loop after each (re)connect
        self.take_wait = take_wait
        self._held: dict[str, int] = {}  # session id -> connections of this process on it
        self._locker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sg-feed-lock")
        self._lock_conn: Conn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._listen, name="sg-feed-listen", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await self._in_locker(self._close_lock_conn)
        self._locker.shutdown(wait=True)

    # -- the lock connection (its own thread) -----------------------------------------------------

    async def _in_locker(self, fn: Callable[[], T]) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._locker, fn)

    def _conn(self) -> Conn:
        if self._lock_conn is None or self._lock_conn.closed:
            conn = self._connect()
            for session_id in list(self._held):  # a new connection: hold again what we held
                conn.execute("SELECT pg_try_advisory_lock(%s)", (session_key(session_id),))
            self._lock_conn = conn
        return self._lock_conn

    def _try(self, session_id: str) -> bool:
        try:
            row = (
                self._conn()
                .execute("SELECT pg_try_advisory_lock(%s)", (session_key(session_id),))
                .fetchone()
            )
        except psycopg.Error:
            self._close_lock_conn()
            raise
        return bool(row and row[0])

    def _unlock(self, session_id: str) -> None:
        if self._lock_conn is None or self._lock_conn.closed:
            return  # the connection ended: so did its locks
        try:
            self._lock_conn.execute("SELECT pg_advisory_unlock(%s)", (session_key(session_id),))
        except psycopg.Error:
            self._close_lock_conn()

    def _send(self, notice: str) -> None:
        self._conn().execute("SELECT pg_notify(%s, %s)", (CHANNEL, notice))

    def _close_lock_conn(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None

    # -- sessions -----------------------------------------------------------------------------

    async def hold(self, session_id: str) -> None:
        """A connection of this process serves (or opens) a new session: nobody else can."""
        await self.take(session_id)

    async def take(self, session_id: str) -> bool:
        """Hold the session for a connection of this process, taking it from the process that
        serves it (which saves its position first); False if that one did not let go within
        ``take_wait`` (the session is served here anyway)."""
        try:
            got = await self._in_locker(lambda: self._try(session_id))
            if not got:
                await self._in_locker(lambda: self._send(f"take {session_id}"))
                deadline = time.monotonic() + self.take_wait
                while not got and time.monotonic() < deadline:
                    await asyncio.sleep(POLL_SECONDS)
                    got = await self._in_locker(lambda: self._try(session_id))
                if not got:
                    log.warning("feed session %s: its other connection did not end", session_id)
        except psycopg.Error as exc:
            log.warning("feed session %s: cannot reach the store's locks: %s", session_id, exc)
            got = False
        if got:
            self._held[session_id] = self._held.get(session_id, 0) + 1
        return got

    async def let_go(self, session_id: str) -> None:
        """A connection of this process no longer serves the session (after its position was
        saved)."""
        n = self._held.get(session_id, 0)
        if n == 0:
            return
        if n > 1:
            self._held[session_id] = n - 1
        else:
            del self._held[session_id]
        await self._in_locker(lambda: self._unlock(session_id))

    def holds(self, session_id: str) -> bool:
        return session_id in self._held

    # -- the listener (its own thread) --------------------------------------------------------

    def _listen(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stopping.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001 - the store is away: try again
                log.warning("feed listener: cannot connect: %s", exc)
                self._stopping.wait(1.0)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    loop.call_soon_threadsafe(self._on_listening)
                    while not self._stopping.is_set():
                        for n in conn.notifies(timeout=LISTEN_WAKE_SECONDS):
                            loop.call_soon_threadsafe(self._on_notice, n.payload)
            except psycopg.Error as exc:
                if not self._stopping.is_set():
                    log.warning("feed listener: connection lost: %s", exc)
                    self._stopping.wait(1.0)
            except RuntimeError:  # the loop closed under us: stopping
                return
