"""The embedded store: SQLite in WAL mode, one writer thread fed by a queue, pooled readers.

The writer owns every write and assigns cursors in commit order (the log is the ``obs`` table,
keyed by cursor, append-only). After a commit it hands the batch and the caller's answer to the
event loop (an outbox, FIFO, drained by a ``call_soon_threadsafe`` callback), so the hub always
publishes in commit order and an ingest reply is sent only after its batch is durable and
published; the reply does not wait for the hub's fan-out round (``SqliteStore._hand_over``).

Duplicate checks are cheap: the registry keeps each series' latest time in memory, so a row newer
than that is new without touching the index; only older rows are probed. The (series, time) index
is built a sealed chunk at a time, sorted, off the per-row insert path: in short steps between
commits and when the writer is idle, all at once if the tail ever reaches ``index_chunk_rows``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.domain.batch import Batch, concat, floats
from streamgauge.domain.commit import CommitRules, Screen
from streamgauge.domain.errors import Conflict, NotFound, Unavailable
from streamgauge.domain.events import (
    MetaEvent,
    SeriesDropped,
)
from streamgauge.domain.filters import Expr
from streamgauge.domain.log import AppendResult, HistoryQuery, IngestColumns
from streamgauge.domain.readmodel import ReadModel
from streamgauge.domain.timeseries import Points, Summaries
from streamgauge.store import files
from streamgauge.store.early import inverse as _inverse
from streamgauge.store.early import undo as _undo
from streamgauge.store.files import index_path
from streamgauge.store.memory import release_free_memory
from streamgauge.store.sqlite import metadata, retention, snapshot, summaries
from streamgauge.store.sqlite.fair import FairGate
from streamgauge.store.sqlite.filtersql import to_sql
from streamgauge.store.sqlite.schema import INDEX_SCHEMA, migrate, sealed_in, statements
from streamgauge.store.sqlite.writeq import BIG_ROWS, Closed, Idle, WriteQueue

T = TypeVar("T")
_Events = tuple[int, int, list[MetaEvent]]  # (first, last sequence number, events)
_Done = tuple["asyncio.Future[Any]", Any, "_Events | None", list[Batch]]  # a committed job
_NEVER = np.iinfo(np.int64).min
log = logging.getLogger("streamgauge.store")
TRIM_AFTER_OPEN_S = 5.0  # after open, when the allocator's free pages are returned again
SEAL_STEP = 4096  # rows indexed per step (a few ms of work between two commits)
# While only big appends come (no live write for ``writeq.LIVE_SECONDS``), the tail is indexed
# once it holds this many chunks (``index_chunk_rows``) or ``SEAL_BULK`` rows, whichever is
# fewer, in one step (``_upkeep``).
BULK_CHUNKS = 2
SEAL_BULK = 131072
SEAL_MAX = 262144  # rows indexed in one step at most (a longer backlog goes in several)
FREEZE_EVERY = 20_000  # registry growth (series, metadata changes) between gc.freeze() calls
IDLE_SECONDS = 0.5  # a writer idle this long indexes the tail of the log
# ... but not in the first seconds after open: the engine's startup reads (and a restart's
# fan-out workers loading on the other core) go first; reads cover an unindexed tail.
UPKEEP_AFTER_OPEN_S = 3.0
FOLD_STEP = 50_000  # rows folded into the hour summaries per step (while the writer is idle)
# ... and per step while live writes are around (``writeq.LIVE_SECONDS``): a fold step is one
# statement the writer cannot leave, and a live commit that comes during it waits for all of it
# (measured on a busy 2-core machine: 50,000 rows 0.3 s, this many 8-20 ms).
FOLD_STEP_LIVE = 2048
# Rows not yet summarized beyond which a busy writer folds too. Large on purpose: a fold that
# takes a network's hour at once adds each (series, hour) unit once, not once per row; reads
# reach the rows not folded yet through the index (summaries.tail_units).
FOLD_MAX_LAG = 4_000_000
# Rows after the QC checkpoint beyond which an idle writer checkpoints before it indexes or
# folds (those can keep it busy for minutes after a backfill; a restart replays the log after
# the checkpoint through the checks, so that replay stays bounded).
QC_CHECKPOINT_ROWS = 200_000
CHECKPOINT_SECONDS = 0.2  # between two WAL checkpoints at most (``_checkpoints``)
MAX_SPAN, MIN_SPAN = 1 << 62, -(1 << 62)  # the span of an empty tail (beyond any time)


class Tx:
    """A write transaction: the connection, its metadata events, hooks run after it committed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # Metadata events: written in the transaction, applied to the registry after the commit.
        self.events: list[MetaEvent] = []
        # How many of ``events`` were applied to the registry before the commit (the metadata
        # of ``append_with``): not applied again after it.
        self.applied = 0
        self.after_commit: list[Callable[[], None]] = []  # run in the writer thread
        # Undo registry changes made early; run in reverse order if the transaction fails.
        self.on_rollback: list[Callable[[], None]] = []
        self.publish: list[Batch] = []  # handed to the event loop, in order

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)


WRITER_CACHE_KIB = 65536  # given back when the writer has nothing left to do (``_writer``)
READER_CACHE_KIB = 4096
WRITER_INDEX_CACHE_KIB = 16384  # the writer's view of the index: duplicate probes' pages
# The indexer's: a step writes a page per series it touches (12,000 series: 47 MiB of 4 KiB
# pages); given back once the indexer has caught up.
INDEXER_CACHE_KIB = 65536
# The indexer thread's niceness: its steps (SQLite's work, without the GIL) are background
# work, run on what the event loop, the writer and the readers leave of the CPU.
INDEXER_NICE = 10
MIN_SQLITE = (3, 38, 0)  # the JSON operators (->>) of the log's insert


# Each series' latest indexed time, one seek of the (series, time) index per series (a scan of
# the index would grow with the log), and the greatest series pk the index has rows of (a
# deleted series' pk is never given again).
_LATEST_INDEXED = "SELECT s.pk, (SELECT max(time) FROM obs_index WHERE series = s.pk) FROM series s"
_TOP_SERIES_INDEXED = (
    "SELECT series, max(time) FROM obs_index WHERE series = (SELECT max(series) FROM obs_index)"
)
# The indexed newest row of each series of a pk range (one index seek per series).
_NEWEST_INDEXED = (
    "SELECT o.cursor, o.series, o.time, o.value, o.qc FROM series s JOIN obs o ON o.cursor = ("
    "SELECT cursor FROM obs_index WHERE series = s.pk ORDER BY time DESC LIMIT 1)"
    " WHERE s.pk >= ? AND s.pk < ?"
)


def _connect(
    path: Path, *, readonly: bool, durability: str, index: bool = True
) -> sqlite3.Connection:
    """A connection to the database ``path`` with the index file attached as ``ix`` (read-only
    on a read-only connection; ``index=False``: not attached). Unqualified, ``obs_index`` and
    ``index_state`` name the index file's tables."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise RuntimeError(
            f"streamgauge needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; "
            f"Python's sqlite3 module uses {sqlite3.sqlite_version}"
        )
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    # Page cache in KiB: the writer's holds the index pages that sealing and duplicate probes
    # touch; a reader's is small (there are several, the OS caches the file for them too, and
    # each one's cache stays resident once a long read filled it: a page read again from the
    # OS's cache costs a copy, one kept here costs resident memory in every reader).
    conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB if readonly else WRITER_CACHE_KIB}")
    if index:
        ix = index_path(path)
        if readonly:
            conn.execute("ATTACH ? AS ix", (f"file:{ix}?mode=ro",))
        else:
            conn.execute("ATTACH ? AS ix", (str(ix),))
            # Derived from the log and rebuilt from it if lost (``_open_index``): no fsync of
            # its own; SQLite syncs its WAL before each checkpoint copies it.
            conn.execute("PRAGMA ix.synchronous=NORMAL")
        conn.execute(f"PRAGMA ix.cache_size=-{READER_CACHE_KIB}")
    return conn


def _lower_priority(nice: int) -> None:
    """Give the calling thread (Linux: a thread has a nice value of its own) ``nice`` more
    niceness: the scheduler runs it on what the event loop and the writer leave of the CPU."""
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + nice))
    except (AttributeError, OSError):  # not on this system: the thread runs as the others
        pass


def _begin(conn: sqlite3.Connection) -> None:
    """Begin a write transaction that holds the log database's write lock from its start (as
    ``BEGIN IMMEDIATE``) but not the index file's: the indexer commits to that one meanwhile.
    (``BEGIN IMMEDIATE`` would lock every attached database; a statement that writes nothing
    takes the lock of the one it names, without writing a page.)"""
    conn.execute("BEGIN")
    try:
        conn.execute("DELETE FROM main.state WHERE 0")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _lock_index(conn: sqlite3.Connection) -> None:
    """In the writer's transaction, before it reads the index: take the index file's write
    lock too (waiting for the indexer's step), so the transaction's view of the index cannot
    go stale before it writes there."""
    conn.execute("DELETE FROM ix.index_state WHERE 0")


class SqliteStore:
    def __init__(
        self,
        path: Path,
        *,
        durability: str = "normal",
        index_chunk_rows: int = 65536,
        readers: int = 4,
        rules: Callable[[ReadModel], CommitRules],
        registry: ReadModel,
        snapshots: bool = True,
    ) -> None:
        self.path = path
        # Whether a clean stop keeps the registry beside the database for the next open, and
        # the open takes it (``snapshot.py``); False where the registry is not the tables'
        # alone (a cluster node's follows the other nodes).
        self.snapshots = snapshots
        self.registry_from_snapshot = False  # how ``open`` loaded the registry
        self.durability = durability
        self.chunk_rows = index_chunk_rows
        # The registry the engine gave: loaded on open, handed each committed transaction's
        # metadata events (its ``apply`` is the one way metadata changes).
        self.registry = registry
        # Called on the event loop with (first, last sequence number, events) of each committed
        # transaction that changed metadata, before its batches are published (cluster mode).
        self.on_events: Callable[[int, int, list[MetaEvent]], None] | None = None
        # The duplicate/conflict rule and QC, run by the writer in commit order: core functions
        # the caller builds over this registry (the engine's ``LogRules``).
        self.rules: CommitRules = rules(self.registry)
        self._head = 0  # last cursor published on the loop
        self._writer_head = 0  # last cursor committed (writer thread)
        # The indexer's (``_indexer``): the index holds the log up to this cursor. Its thread
        # waits on ``_index_cond`` for commits (``_committed_head``, ``_last_commit``).
        self._sealed = 0
        self._index_cond = threading.Condition()
        self._committed_head = 0
        self._last_commit = 0.0
        self._index_force = False  # ``index_all``: index whatever is left now
        self._index_stop = False
        self._indexing: threading.Thread | None = None
        self._summarized = 0  # rows up to this cursor are in the hour summaries
        # The writer's jobs, small writes ahead of big appends waiting (``writeq``).
        self._queue: WriteQueue[_Job] = WriteQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publish: Callable[[Batch], None] = lambda b: None
        # Committed jobs for the event loop (``_hand_over``), appended by the writer in order.
        self._outbox: collections.deque[_Done] = collections.deque()
        self._handing_over = False  # a ``_hand_over`` callback is scheduled and not started
        self._local = threading.local()
        self._keys_marks: dict[int, tuple[int, int]] = {}  # reader connection -> report_keys
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sg-read")
        self._gate = FairGate(readers)
        self._closed = False
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_wanted = threading.Event()  # set by the writer after it committed
        self._checkpoint_stop = False
        self.write_seconds = 0.0  # total time spent in write transactions (metrics)
        self._frozen_at = 0
        self._qc_dirty: set[int] = set()  # series whose QC state changed since the checkpoint
        self._qc_cursor = 0  # the cursor the checkpointed QC state is current at
        # The (least, greatest) time of the rows after ``_span_base``, or more (it only widens
        # until the indexer catches up with ``_span_top``, the last cursor added); None: not
        # known (the tail found on open). Shared by the writer and the indexer: ``_span_lock``.
        self._tail_span: tuple[int, int] | None = None
        self._span_base = 0
        self._span_top = 0
        self._span_lock = threading.Lock()
        # Per project, the highest cursor retention removed (store/sqlite/retention.py).
        self.gone: dict[int, int] = {}
        self._span: tuple[int, int, int] | None = None  # (project, first, last) of the last batch
        # Retention passes planned by ``expired`` and running (``retention.Pass``).
        self._retention_plans: dict[retention.Cutoffs, retention.Expired] = {}
        self._retention_passes: dict[int, retention.Pass] = {}
        # By variable pk, a set of it and its series pk, as the writer found them in the
        # registry at its metadata version ``_series_keys_version`` (``_known_series``).
        self._series_of_variable = (np.full(1024, -1, np.int64), np.full(1024, -1, np.int64))
        self._series_keys_version = -1

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self._head

    async def durable_head(self) -> int:
        return self._writer_head  # one writer: this process

    # -- metadata events, as the cluster mode's meta channel reads them ---------------------------

    async def events_head(self) -> int:
        return await self.read(metadata.events_head)

    async def read_events(
        self, after: int, upto: int | None, limit: int
    ) -> list[tuple[int, MetaEvent]]:
        return await self.read(lambda c: metadata.read_events(c, after, upto, limit))

    async def metadata_snapshot(self) -> tuple[int, list[MetaEvent]]:
        def snap(conn: sqlite3.Connection) -> tuple[int, list[MetaEvent]]:
            conn.execute("BEGIN")  # one read transaction: one snapshot of the tables
            try:
                return metadata.events_head(conn), list(metadata.load(conn))
            finally:
                conn.execute("COMMIT")

        return await self.read(snap)

    async def open(self, publish: Callable[[Batch], None]) -> None:
        self.path.parent.mkdir(mode=files.DIR_MODE, parents=True, exist_ok=True)
        # 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database's mode.
        files.private_file(self.path)
        for suffix in ("-wal", "-shm", "-journal"):
            files.tighten_if_present(self.path.with_name(self.path.name + suffix))
        self._loop = asyncio.get_running_loop()
        self._publish = publish
        conn = _connect(self.path, readonly=False, durability=self.durability, index=False)
        migrate(conn)
        self._open_index(conn)
        # The log state is read on another connection in a thread (its SQL in one statement
        # each: the GIL is not handed over per row) while the registry loads here.
        fp = snapshot.fingerprint(conn)
        prefetched = _take_prefetched(self.path)
        reading = (
            asyncio.wrap_future(prefetched)
            if prefetched is not None
            else self._loop.run_in_executor(None, self._read_log_state)
        )
        try:
            self._load_registry(conn, fp)
        finally:
            try:
                state: _LogState | None = await reading
            except (sqlite3.Error, OSError):
                if prefetched is None:
                    raise
                state = None  # read again below
        if state is None or not _still(conn, state):
            state = await self._loop.run_in_executor(None, self._read_log_state)
        self._apply_log_state(conn, state)
        conn.execute("PRAGMA shrink_memory")  # the pages loading read: not the writer's
        release_free_memory()
        # Once more after the engine's own startup reads (newest rows, catch-ups) are done.
        self._loop.call_later(TRIM_AFTER_OPEN_S, release_free_memory)
        self.gone = retention.load_gone(conn)
        gc.collect()
        gc.freeze()
        self._head = self._writer_head
        # The WALs are checkpointed by a thread of its own, not in the writer's commits.
        ckpt = _connect(self.path, readonly=False, durability=self.durability)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = threading.Thread(
            target=self._checkpoints, args=(ckpt,), name="sg-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="sg-writer", daemon=True
        )
        self._thread.start()
        indexer = _connect(self.path, readonly=False, durability=self.durability)
        indexer.execute(f"PRAGMA main.cache_size=-{READER_CACHE_KIB}")  # the tail: just written
        indexer.execute(f"PRAGMA ix.cache_size=-{INDEXER_CACHE_KIB}")
        indexer.execute("PRAGMA wal_autocheckpoint=0")
        self._indexing = threading.Thread(
            target=self._indexer, args=(indexer,), name="sg-indexer", daemon=True
        )
        self._indexing.start()

    def _open_index(self, conn: sqlite3.Connection) -> None:
        """Open the index file beside the database (``index_path``) and attach it to the
        writer's connection ``conn``. It is emptied when it is of another log (``log`` in each
        file's state) or ahead of the log (rows it indexed were lost: a power cut under
        ``durability=normal``), in place and in one transaction, so a fan-out worker that has
        it open already sees either the old state or the empty one, never a file of another
        inode; made anew when it is missing or is not a database. The indexer then indexes the
        whole log again; reads meanwhile scan the unindexed tail, so they stay exact."""
        ix = index_path(self.path)
        log_id = str(conn.execute("SELECT value FROM state WHERE key = 'log'").fetchone()[0])
        head = int(conn.execute("SELECT coalesce(max(cursor), 0) FROM obs").fetchone()[0])
        stale = None
        if ix.exists() and ix.stat().st_size:
            try:
                check = sqlite3.connect(ix, isolation_level=None)
                try:
                    marks = dict(check.execute("SELECT key, value FROM index_state").fetchall())
                finally:
                    check.close()
                if marks.get("log") != log_id:
                    stale = "it belongs to another log"
                elif int(marks.get("sealed", -1)) > head:
                    stale = f"it indexes up to cursor {marks['sealed']}, past the log's {head}"
            except (sqlite3.Error, ValueError, TypeError) as exc:
                log.warning("indexing the log anew: the index file %s cannot be read: %s", ix, exc)
                for name in (ix.name, ix.name + "-wal", ix.name + "-shm"):
                    ix.with_name(name).unlink(missing_ok=True)
        files.private_file(ix)  # 0600 before SQLite opens it (its -wal and -shm follow)
        for suffix in ("-wal", "-shm"):
            files.tighten_if_present(ix.with_name(ix.name + suffix))
        made = sqlite3.connect(ix, isolation_level=None)
        try:
            made.execute("PRAGMA journal_mode=WAL")
            made.execute("PRAGMA busy_timeout=10000")
            if stale is not None:
                log.warning("indexing the log anew: the index file %s is emptied: %s", ix, stale)
                made.execute("BEGIN IMMEDIATE")
                made.execute("DROP TABLE IF EXISTS obs_index")
                made.execute("DELETE FROM index_state")
                for statement in statements(INDEX_SCHEMA):  # (``executescript`` commits)
                    made.execute(statement)
                made.execute("INSERT INTO index_state VALUES ('log', ?)", (log_id,))
                made.execute("COMMIT")
            else:
                made.executescript(INDEX_SCHEMA)
                made.execute("INSERT OR IGNORE INTO index_state VALUES ('log', ?)", (log_id,))
        finally:
            made.close()
        conn.execute("ATTACH ? AS ix", (str(ix),))
        conn.execute("PRAGMA ix.synchronous=NORMAL")
        conn.execute(f"PRAGMA ix.cache_size=-{WRITER_INDEX_CACHE_KIB}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            if self.snapshots:  # the writer is gone: the registry is the tables' now
                await asyncio.to_thread(self._save_snapshot)
        with self._index_cond:
            self._index_stop = True
            self._index_cond.notify_all()
        if self._indexing is not None:
            await asyncio.to_thread(self._indexing.join)
        self._checkpoint_stop = True
        self._checkpoint_wanted.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
        self._readers.shutdown(wait=True)

    def _load_registry(self, conn: sqlite3.Connection, fp: tuple[Any, ...]) -> None:
        """The registry as a clean stop left it, if the tables ``fp`` describes are still
        those (``snapshot.py``); else built from the tables on ``conn``."""
        path = snapshot.snapshot_path(self.path)
        self.registry_from_snapshot = self.snapshots and snapshot.restore(path, self.registry, fp)
        if not self.registry_from_snapshot:
            self.registry.load(metadata.load_tables(conn))

    def _save_snapshot(self) -> None:
        """Keep the registry beside the database for the next open (``snapshot.py``)."""
        try:
            conn = _connect(self.path, readonly=True, durability=self.durability, index=False)
            try:
                fp = snapshot.fingerprint(conn)
            finally:
                conn.close()
            snapshot.save(snapshot.snapshot_path(self.path), self.registry, fp)
        except Exception:  # noqa: BLE001 - the next open reads the tables instead
            log.exception("keeping the registry snapshot failed")

    def _checkpoints(self, conn: sqlite3.Connection) -> None:
        """Checkpoint the WAL (copy its pages into the database file, so it can start over)
        after commits, at most every ``CHECKPOINT_SECONDS``, on a connection of its own.

        SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages:
        that commit, and every write queued behind it, waited 20-50 ms for the copy and its
        fsync (a backfill crosses it every few batches). A passive checkpoint from another
        connection takes no write lock, so the writer goes on meanwhile."""
        try:
            while True:
                self._checkpoint_wanted.wait()
                self._checkpoint_wanted.clear()
                if self._checkpoint_stop:
                    break
                try:
                    conn.execute("PRAGMA main.wal_checkpoint(PASSIVE)").fetchone()
                    conn.execute("PRAGMA ix.wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    log.exception("checkpointing the WAL failed; will retry")
                time.sleep(CHECKPOINT_SECONDS)
        finally:
            conn.close()

    def _read_log_state(self) -> _LogState:
        return read_log_state(self.path, self.durability)

    def _apply_log_state(self, conn: sqlite3.Connection, state: _LogState) -> None:
        """``_read_log_state``'s reading, once the registry is loaded; then the log after the
        QC checkpoint replayed through the checks."""
        self._writer_head, self._sealed, self._summarized = (
            state.head,
            state.sealed,
            state.summarized,
        )
        self._committed_head = self._span_top = state.head
        if self._sealed == self._writer_head:
            self._tail_span = (MAX_SPAN, MIN_SPAN)
            self._span_base = self._sealed
        series, times = state.latest
        known = times != _NULL_TIME
        self.registry.restore_latest(series[known], times[known])
        st = self.registry.qc_state
        at, last_time, last_value, same_since = state.qc
        if len(at):
            st.ensure(int(at.max()) + 1)
            st.last_time[at] = last_time
            st.last_value[at] = last_value
            st.same_since[at] = same_since
        self._replay_qc(conn, state.qc_cursor)

    def _replay_qc(self, conn: sqlite3.Connection, after: int) -> None:
        """The log after the QC checkpoint replayed through the checks in cursor order: the
        same state as if the process had never stopped."""
        self._qc_cursor = after
        while True:
            chunk = conn.execute(
                "SELECT cursor, series, time, value FROM obs WHERE cursor > ? "
                "ORDER BY cursor LIMIT 200000",
                (after,),
            ).fetchall()
            if not chunk:
                break
            cursors, series, times, values = zip(*chunk, strict=True)
            self.rules.replay(
                np.array(series, np.int64), np.array(times, np.int64), floats(list(values))
            )
            self._qc_dirty.update(series)
            after = cursors[-1]

    def _checkpoint_qc(self, conn: sqlite3.Connection) -> None:
        """Write the QC state of the series changed since the last checkpoint, with the cursor it
        is current at, so a restart replays only the log after it."""
        if not self._qc_dirty:
            return
        st = self.registry.qc_state
        dirty = np.fromiter(self._qc_dirty, np.int64, len(self._qc_dirty))
        dirty = dirty[dirty < len(st.last_time)]
        rows = orjson.dumps(
            list(
                zip(
                    dirty.tolist(),
                    st.last_time[dirty].tolist(),
                    [None if np.isnan(v) else v for v in st.last_value[dirty].tolist()],
                    st.same_since[dirty].tolist(),
                    strict=True,
                )
            )
        )
        _begin(conn)
        try:
            conn.execute(  # one statement, not a GIL hand-over per row (see _insert_rows)
                "INSERT OR REPLACE INTO qc_state "
                "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?)",
                (rows,),
            )
            conn.execute("UPDATE state SET value = ? WHERE key = 'qc_cursor'", (self._writer_head,))
            conn.execute("COMMIT")
            self._qc_cursor = self._writer_head
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            log.exception("checkpointing the QC state failed; will retry")
            return
        self._qc_dirty.clear()

    # -- the writer -----------------------------------------------------------------------------

    def _writer(self, conn: sqlite3.Connection) -> None:
        _create_stage(conn)
        # Idle for IDLE_SECONDS after the last write, the writer does its upkeep one step a
        # turn, the next step at once while nothing is queued (a step waiting IDLE_SECONDS
        # after the previous one left a backfill's year unfolded for seconds, and aggregate
        # reads summarizing it row by row meanwhile); any write goes first and restarts the wait.
        upkeep = False
        rested = False  # the cache given back since the last write
        opened = time.monotonic()
        while True:
            job = self._queue.get(0.0 if upkeep else IDLE_SECONDS)
            self._checkpoint_wanted.set()  # after what the previous turn committed
            if isinstance(job, Idle) and time.monotonic() - opened < UPKEEP_AFTER_OPEN_S:
                continue
            if isinstance(job, Idle):
                before = (self._qc_cursor, self._summarized)
                if self._writer_head - self._qc_cursor >= QC_CHECKPOINT_ROWS and self._qc_dirty:
                    self._checkpoint_qc(conn)  # first: a restart replays the log after it
                elif self._writer_head > self._summarized:  # idle: summarize the tail
                    step = FOLD_STEP_LIVE if self._queue.live() else FOLD_STEP
                    self._fold(conn, min(self._writer_head, self._summarized + step))
                else:
                    self._checkpoint_qc(conn)
                    if not rested:  # all done: the pages the upkeep read are not kept
                        conn.execute("PRAGMA shrink_memory")
                        release_free_memory()
                        rested = True
                # Go on at once only after a step that moved (a failing one, logged, waits).
                upkeep = before != (self._qc_cursor, self._summarized)
                continue
            upkeep = rested = False
            if isinstance(job, Closed):
                self._checkpoint_qc(conn)
                break
            if job.stage is not None and self._queue.live():
                # A big append while live writes are around: its rows are copied into the
                # connection's temporary stage first, a chunk at a time, outside any
                # transaction of the database, and the small writes that come meanwhile are
                # committed between two chunks. Its transaction then copies them from the
                # stage (``_insert_staged``). In a bulk load (no live write) the transaction
                # inserts them itself: the copy through the stage costs more in all.
                for _ in job.stage.fill(conn):
                    for _ in range(self._queue.small_waiting()):  # those waiting now
                        small = self._queue.get_small()
                        if small is not None:
                            self._run(conn, small)
            elif job.stage is not None:  # a bulk load: the big appends queued may share
                group = self._group(job)  # one transaction
                if len(group) > 1:
                    self._run_group(conn, group)
                    continue
            self._run(conn, job)
            if job.stage is not None:
                job.stage.clear(conn)
        conn.close()

    def _run(self, conn: sqlite3.Connection, job: _Job) -> None:
        """Run one job in one write transaction, hand its batches to the event loop and
        answer its caller; then keep the index up."""
        assert self._loop is not None
        loop = self._loop
        tx = Tx(conn)
        head = self._writer_head
        started = time.perf_counter()
        try:
            _begin(conn)
            result = job.fn(tx)
            last_seq = 0
            if tx.events:  # in the same transaction: a change and its events, or neither
                last_seq = metadata.write_events(conn, tx.events, int(time.time() * 1000))
            self._commit(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._writer_head = head  # no cursor taken: the next commit's follow on
            for undo in reversed(tx.on_rollback):
                undo()
            loop.call_soon_threadsafe(_fail, job.fut, exc)
            return
        finally:
            self.write_seconds += time.perf_counter() - started
        self._committed(tx, job, result, last_seq)
        self._upkeep(conn)

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    def _group(self, job: _Job) -> list[_Job]:
        """``job`` (a big append) and the big appends queued after it that can share its
        transaction (``_run_group``): while no small write waits, up to ``GROUP_JOBS`` jobs
        and ``GROUP_ROWS`` rows, each of series no other job of the group has (so none of
        them reads what another changes before its commit: the latest times, the QC state,
        the tail's span). The first job that does not fit ends the group, so big appends
        still commit in the order they came."""
        assert job.stage is not None
        taken = [job]
        keys = job.stage.series_keys()
        rows = len(job.stage.columns.times)

        def fits(other: _Job) -> bool:
            if other.stage is None or rows + len(other.stage.columns.times) > GROUP_ROWS:
                return False
            return not np.intersect1d(keys, other.stage.series_keys(), assume_unique=True).size

        while len(taken) < GROUP_JOBS and not self._queue.small_waiting():
            other = self._queue.get_big_if(fits)
            if other is None:
                break
            assert other.stage is not None
            taken.append(other)
            keys = _distinct(np.concatenate((keys, other.stage.series_keys())))
            rows += len(other.stage.columns.times)
        return taken

    def _run_group(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        """Run several appends in one write transaction, one commit and one fsync for all
        (group commit, issue 17): each in a savepoint of its own, so one that fails (a
        conflict) is rolled back alone and answered with its error, and the others go on,
        numbered on from the cursors committed before it. Every other job is answered after
        the shared commit, in order, its batch published as if it had committed alone; if
        the commit fails, every job of the group fails and nothing of it stays."""
        assert self._loop is not None
        loop = self._loop
        head = self._writer_head
        done: list[tuple[_Job, Tx, Any, int]] = []
        started = time.perf_counter()
        try:
            _begin(conn)
            for job in jobs:
                tx = Tx(conn)
                before = self._writer_head
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(tx)
                    last_seq = 0
                    if tx.events:
                        last_seq = metadata.write_events(conn, tx.events, int(time.time() * 1000))
                    conn.execute("RELEASE job")
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    self._writer_head = before
                    for undo in reversed(tx.on_rollback):
                        undo()
                    loop.call_soon_threadsafe(_fail, job.fut, exc)
                    continue
                done.append((job, tx, result, last_seq))
            self._commit(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._writer_head = head
            for _, tx, _, _ in reversed(done):
                for undo in reversed(tx.on_rollback):
                    undo()
            for job in jobs:
                loop.call_soon_threadsafe(_fail, job.fut, exc)
            return
        finally:
            self.write_seconds += time.perf_counter() - started
        for job, tx, result, last_seq in done:
            self._committed(tx, job, result, last_seq)
        self._upkeep(conn)

    def _committed(self, tx: Tx, job: _Job, result: Any, last_seq: int) -> None:
        """After ``tx`` committed: the registry and the hooks follow it, its metadata events
        and batches go to the event loop, then its caller is answered."""
        assert self._loop is not None
        loop = self._loop
        self.registry.apply_all(tx.events[tx.applied :])  # the registry follows what committed
        for hook in tx.after_commit:
            hook()
        self._freeze_new_objects(
            len(self.registry.series_by_pk) + len(tx.after_commit) + len(tx.events)
        )
        events: _Events | None = None
        if tx.events and self.on_events is not None:  # before the batches that need them
            events = (last_seq - len(tx.events) + 1, last_seq, list(tx.events))
        self._outbox.append((job.fut, result, events, tx.publish))
        if tx.publish:
            self._index_wanted()
        # One wake-up of the loop for the jobs committed before its callback runs (a group's,
        # or commits made while the loop was busy): each wake-up is a write to the loop's
        # socket, and the writer then waits for the GIL while the loop runs.
        if not self._handing_over:
            self._handing_over = True
            loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        """On the event loop: answer the callers of every job committed so far, then hand on
        their metadata events and batches, in commit order, all in this one callback.

        Each caller resumes in a later turn of the loop, so it finds its batches handed to the
        hub (the head moved) as before; but the hub's fan-out round, scheduled as the first of
        them is handed on, comes after those turns: a reply (its commit is durable) is not held
        up by the writes to every subscriber (a thousand feed sessions: 20-50 ms per round),
        nor by the rounds of the batches committed just before it. (A callback per job, each
        answering then handing on, still put the round ahead of the later jobs' callers.)"""
        # First: a job appended from now on schedules a callback of its own (one appended
        # before is taken below).
        self._handing_over = False
        done: list[_Done] = []
        outbox = self._outbox
        while outbox:  # a later callback finds what this one took gone: nothing to do
            done.append(outbox.popleft())
        for fut, result, _, _ in done:
            _succeed(fut, result)
        for _, _, events, batches in done:
            if events is not None and self.on_events is not None:
                _guarded(self.on_events, *events)
            for batch in batches:
                _guarded(self._published, batch)

    def _upkeep(self, conn: sqlite3.Connection) -> None:
        """After a commit: summarize if far behind. (The index is the indexer's.)"""
        if self._writer_head - self._summarized >= FOLD_MAX_LAG:  # bound the reads' tail
            step = FOLD_STEP_LIVE if self._queue.live() else FOLD_STEP
            self._fold(conn, self._summarized + step)

    def _freeze_new_objects(self, size: int) -> None:
        """Move the registry's long-lived objects out of the garbage collector's sight.

        The registry holds millions of objects that live as long as the process. Python's full
        collections walk all of them and, while the registry grows (a big network being
        created, series first seen), pause the process for up to a second. Freezing after each
        growth step keeps full collections short. The cost: cyclic garbage that exists at that
        instant is never collected (there is little; the engine makes few cycles)."""
        if size - self._frozen_at >= FREEZE_EVERY:
            gc.freeze()
            self._frozen_at = size

    def _published(self, batch: Batch) -> None:
        self._head = batch.last
        self._publish(batch)

    # -- the indexer ----------------------------------------------------------------------------

    def _index_wanted(self) -> None:
        """After a commit (writer thread): the indexer looks whether a step is due."""
        with self._index_cond:
            self._committed_head = self._writer_head
            self._last_commit = time.monotonic()
            self._index_cond.notify()

    def _indexer(self, conn: sqlite3.Connection) -> None:
        """Index the log's tail by (series, time) into the index file, on a thread and a
        connection of its own (issue 17): the index's commits go to another database than the
        log's, so the writer commits appends meanwhile (a bulk step of 131,072 rows took 80 to
        130 ms of the writer's time, every ingest request waiting behind it).

        A step indexes the log from the sealed position up to a committed cursor, sorted by
        (series, time), and moves the position, in one transaction of the index file: read from
        one snapshot of the log, idempotent (``INSERT OR IGNORE``), so a step lost in a crash is
        simply done again. When a step is due: ``_index_due``."""
        opened = time.monotonic()
        rested = True
        _lower_priority(INDEXER_NICE)
        try:
            while True:
                with self._index_cond:
                    upto = self._index_due(opened)
                    if upto is None and not self._index_stop:
                        self._index_cond.wait(IDLE_SECONDS)
                        upto = self._index_due(opened)
                    if self._index_stop:
                        break
                if upto is None:
                    if not rested and self._sealed >= self._committed_head:
                        conn.execute("PRAGMA shrink_memory")  # caught up: its pages go back
                        release_free_memory()
                        rested = True
                    continue
                rested = False
                if not self._seal(conn, upto):
                    time.sleep(IDLE_SECONDS)  # failed (logged): retried later
        finally:
            conn.close()

    def _index_due(self, opened: float) -> int | None:
        """The cursor to index up to now, or None (under ``_index_cond``).

        * In a bulk load (no live write for ``writeq.LIVE_SECONDS``) the tail is indexed once
          it holds ``BULK_CHUNKS`` chunks or ``SEAL_BULK`` rows, whichever is fewer, all of it
          in one step: a step writes a page of the index per series it touches, so longer steps
          write less (12,000 series interleaved: 625 bytes a row at 32,768-row steps, 251 at
          131,072, and half the CPU).
        * With live writes around, once it holds ``SEAL_STEP`` rows (or ``index_chunk_rows``,
          if fewer): reads and duplicate checks scan the unindexed tail, so it stays short.
        * When no commit came for ``IDLE_SECONDS`` (but not in the first
          ``UPKEEP_AFTER_OPEN_S`` after open: the engine's startup reads go first), or when
          ``index_all`` asks: whatever is left.

        A step covers at most ``SEAL_MAX`` rows (a backlog goes in several)."""
        head = self._committed_head
        unsealed = head - self._sealed
        if unsealed <= 0:
            return None
        now = time.monotonic()
        due = self._index_force or (
            now - self._last_commit >= IDLE_SECONDS and now - opened >= UPKEEP_AFTER_OPEN_S
        )
        if not due:
            if self._queue.live():
                due = unsealed >= min(SEAL_STEP, self.chunk_rows)
            else:
                due = unsealed >= min(BULK_CHUNKS * self.chunk_rows, SEAL_BULK)
        return min(head, self._sealed + SEAL_MAX) if due else None

    def index_lag(self) -> int:
        """Rows committed but not indexed yet (the indexer thread's backlog)."""
        return max(0, self._committed_head - self._sealed)

    async def index_all(self) -> None:
        """Index every row committed so far now, and return once it is indexed."""
        with self._index_cond:
            target = self._committed_head
            self._index_force = True
            self._index_cond.notify()
        try:
            while self._sealed < target and not self._index_stop:
                await asyncio.sleep(0.005)
        finally:
            with self._index_cond:
                self._index_force = False

    def _seal(self, conn: sqlite3.Connection, upto: int) -> bool:
        """Index the log up to ``upto`` (the indexer's step). A failure is logged and the step
        retried later: reads and duplicate checks stay exact (they scan the unindexed tail)."""
        try:
            self._seal_step(conn, upto)
        except sqlite3.Error:
            log.exception("indexing the log up to cursor %d failed; will retry", upto)
            return False
        return True

    def _seal_step(self, conn: sqlite3.Connection, upto: int) -> None:
        # Deferred: its first statement takes the index file's write lock (waiting while a
        # retention step of the writer holds it), the log is only read, from one snapshot.
        conn.execute("BEGIN")
        try:
            self._seal_sql(conn, upto)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._sealed_to(upto)
        self._checkpoint_wanted.set()

    def _seal_sql(self, conn: sqlite3.Connection, upto: int) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO obs_index (series, time, cursor) "
            "SELECT series, time, cursor FROM main.obs WHERE cursor > ? AND cursor <= ? "
            "ORDER BY series, time",
            (self._sealed, upto),
        )
        conn.execute("UPDATE index_state SET value = ? WHERE key = 'sealed'", (upto,))

    @contextlib.contextmanager
    def _derived(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Commit a transaction that only writes state derived from the log (the hour
        summaries) with its progress marker, without its own fsync (``synchronous=NORMAL`` in
        WAL mode), whatever the durability.

        Its WAL frames are synced by the next durable commit (the WAL is one file, appended in
        order), and before any checkpoint copies them into the database. A crash before that
        loses the derived rows *and* the marker saying they were made, so they are made again
        from the log; nothing acknowledged depends on them. (The index file's commits never
        sync: see ``_connect``.)"""
        full = self.durability == "full"
        if full:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            if full:
                conn.execute("PRAGMA synchronous=FULL")

    def _fold(self, conn: sqlite3.Connection, upto: int) -> None:
        """Fold the log's rows up to ``upto`` into the hour summaries, in one transaction (off
        the ingest path: when the writer is idle, or far behind). A failure is logged and
        retried later: reads summarize what is not folded yet."""
        try:
            with self._derived(conn):
                _begin(conn)
                try:
                    self._fold_sql(conn, upto)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error:
            log.exception("summarizing the log up to cursor %d failed; will retry", upto)
            return
        self._summarized = upto

    def _fold_sql(self, conn: sqlite3.Connection, upto: int) -> None:
        summaries.fold(conn, self._summarized, upto)
        conn.execute("UPDATE state SET value = ? WHERE key = 'summarized'", (upto,))

    def _sealed_to(self, upto: int) -> None:
        """The index holds the log up to ``upto`` now (indexer thread). If no row after it was
        added to the tail's span yet, the span starts again, empty, from there."""
        with self._span_lock:
            self._sealed = upto
            if upto >= self._span_top:
                self._tail_span = (MAX_SPAN, MIN_SPAN)
                self._span_base = upto

    def _widen_span(self, lo: int, hi: int, last: int) -> None:
        """Rows up to cursor ``last``, of times ``lo..hi``, committed (writer thread)."""
        with self._span_lock:
            span = self._tail_span
            if span is not None:
                self._tail_span = (min(span[0], lo), max(span[1], hi))
            self._span_top = max(self._span_top, last)

    def _tail_may_hold(self, sealed: int, lo: int, hi: int) -> bool:
        """Whether the log after ``sealed`` (a snapshot's sealed position) may hold a row with a
        time in ``lo..hi``: the tail's span tells, when it covers every row after ``sealed``."""
        if self._writer_head <= sealed:
            return False
        with self._span_lock:
            span, base = self._tail_span, self._span_base
        return span is None or sealed < base or not (hi < span[0] or lo > span[1])

    async def refresh_gone(self) -> None:
        """Nothing to read: this process is the database's only writer, ``gone`` is current."""

    async def settle_summaries(self) -> None:
        """Fold every row not summarized yet into the summaries now, in one transaction."""

        def run(tx: Tx) -> None:
            upto = self._writer_head
            if upto > self._summarized:
                self._fold_sql(tx.conn, upto)

                def done() -> None:
                    self._summarized = upto

                tx.after_commit.append(done)

        await self.write(run)

    async def write(self, fn: Callable[[Tx], T], *, stage: _Stage | None = None) -> T:
        """Run ``fn`` in one write transaction on the writer thread. ``stage``: the rows of a
        big append, staged before its transaction, which lets the small writes queued after
        it go first (``writeq``)."""
        return await self._submit(fn, stage, live=False)

    async def _submit(self, fn: Callable[[Tx], T], stage: _Stage | None, *, live: bool) -> T:
        """``write``; ``live``: a small append (live rows), which keeps the writer's steps
        between two writes short for a while (``WriteQueue.live``)."""
        if self._closed or self._loop is None:
            raise Unavailable("the store is closed")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(fn, fut, stage), big=stage is not None, live=live)
        return await fut

    # -- readers --------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True, durability=self.durability)
            self._local.conn = conn
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T], *, key: object = None) -> T:
        """Run ``fn`` on a pooled reader connection. Reads wait for a free reader in turns by
        ``key`` (a project's history reads share one key; other reads share ``None``), so one
        tenant's many scans cannot starve another's small read (see ``FairGate``)."""
        if self._closed or self._loop is None:
            raise Unavailable("the store is closed")
        await self._gate.acquire(key)
        fut = self._loop.run_in_executor(self._readers, lambda: fn(self._reader()))
        fut.add_done_callback(self._read_done)
        # A caller that goes away does not end the read its thread is doing: the turn is given
        # back when the thread is done (the callback), so the gate never admits more reads
        # than there are threads.
        return await asyncio.shield(fut)

    def _read_done(self, fut: asyncio.Future[Any]) -> None:
        self._gate.release()
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that went away does not leave it unhandled

    # -- the log --------------------------------------------------------------------------------

    async def append(self, columns: IngestColumns) -> AppendResult:
        if len(columns.times) < BIG_ROWS:
            return await self._submit(lambda tx: self._append(tx, columns), None, live=True)
        stage = _Stage(columns)
        return await self.write(lambda tx: self._append(tx, columns, stage), stage=stage)

    async def append_with(
        self, metadata: Callable[[Tx], object], columns: Callable[[], IngestColumns]
    ) -> AppendResult:
        """Metadata writes and the batch ``columns`` builds after them, in one transaction
        (``store.api.Store.append_with``)."""

        def run(tx: Tx) -> AppendResult:
            metadata(tx)
            self._apply_early(tx)
            return self._append(tx, columns())

        return await self._submit(run, None, live=True)

    def _apply_early(self, tx: Tx) -> None:
        """Apply the transaction's events not applied yet to the registry now, before the
        commit, so what follows in the transaction resolves against them; if the transaction
        fails, each is undone (in reverse order) by the event that restores what was there.
        Only device and variable puts can be applied early (``_inverse``)."""
        reg = self.registry
        undo: list[MetaEvent] = []
        tx.on_rollback.append(functools.partial(_undo, reg, undo))
        for event in tx.events[tx.applied :]:
            undo.append(_inverse(reg, event))
            reg.apply(event)
            tx.applied += 1

    def _append(self, tx: Tx, c: IngestColumns, stage: _Stage | None = None) -> AppendResult:
        reg = self.registry
        rules = self.rules
        n = len(c.times)
        series = self._resolve_series(tx, c)
        screen = rules.screen(series, c.times, c.values, reg.latest[series])
        found: dict[tuple[int, int], Any] = {}
        if len(screen.probe):
            sure, found = self._probe(tx.conn, series[screen.probe], c.times[screen.probe])
            if sure.any():  # surely not stored: new, without asking the rules one by one
                keep = screen.keep.copy()
                keep[screen.probe[sure]] = True
                screen = Screen(keep, screen.duplicate, screen.probe[~sure], screen.conflicts)
        verdict = rules.settle(screen, series, c.times, c.values, found)
        if verdict.conflicts:
            raise Conflict(
                f"{len(verdict.conflicts)} row(s) conflict with stored observations; "
                "nothing was stored",
                verdict.conflicts,
            )
        idx = verdict.keep
        accepted = len(idx)
        dups = verdict.duplicates
        if not accepted:
            return AppendResult(0, dups, None, None)
        first = self._writer_head + 1
        cursors = np.arange(first, first + accepted, dtype=np.int64)
        s_keep, t_keep = series[idx], c.times[idx]
        values = [c.values[i] for i in idx.tolist()] if accepted != n else c.values
        numeric = floats(values)
        q_keep = rules.flag(s_keep, t_keep, numeric)
        received = int(time.time() * 1000)
        if stage is not None and stage.filled and accepted == n:
            _insert_staged(tx.conn, stage, first, series, q_keep, received)
        else:
            _insert_rows(tx.conn, first, s_keep, t_keep, values, q_keep, received)
        self._writer_head = last = first + accepted - 1
        self._note_span(tx, _distinct(reg.s_project[s_keep]).tolist(), first, self._writer_head)

        t_lo, t_hi = int(t_keep.min()), int(t_keep.max())

        def advance() -> None:
            self._widen_span(t_lo, t_hi, last)
            np.maximum.at(reg.latest, s_keep, t_keep)
            rules.advance(s_keep, t_keep, numeric, q_keep)
            self._qc_dirty.update(_distinct(s_keep).tolist())

        tx.after_commit.append(advance)
        tx.publish.append(
            Batch.committed(c.project_pk, cursors, s_keep, t_keep, values, q_keep, numeric)
        )
        return AppendResult(accepted, dups, first, self._writer_head)

    def _note_span(self, tx: Tx, projects: list[int], first: int, last: int) -> None:
        """Record that cursors ``first..last`` hold rows of ``projects`` (``log_spans``): one
        row per project and batch, or the project's last span extended when the batch before
        was the same single project's, so a lone busy project keeps one span."""
        span = self._span
        if (
            len(projects) == 1
            and span is not None
            and span[0] == projects[0]
            and span[2] == first - 1
        ):
            tx.execute(
                "UPDATE log_spans SET last = ? WHERE project_pk = ? AND first = ?",
                (last, span[0], span[1]),
            )
            now: tuple[int, int, int] | None = (span[0], span[1], last)
        else:
            tx.execute(
                "INSERT INTO log_spans (project_pk, first, last) "
                "SELECT value, ?, ? FROM json_each(?)",
                (first, last, orjson.dumps(projects).decode()),
            )
            now = (projects[0], first, last) if len(projects) == 1 else None
        # Now, not after the commit: the next job of a group (``_run_group``) extends it.
        self._span = now

        def restore() -> None:
            self._span = span

        tx.on_rollback.append(restore)

    def _resolve_series(self, tx: Tx, c: IngestColumns) -> npt.NDArray[np.int64]:
        """Series pk of every row, creating the series first seen in this batch (in one
        statement: a row per step would hand the GIL over once per series, see
        ``_insert_rows``). New pks continue from ``registry.series_end``, which never goes
        back, so a pk is never given to a second series (the log keeps the rows of deleted
        series under their old pk)."""
        reg = self.registry
        keys = c.variable_pks * 1024 + c.sets
        uniq, inverse = _distinct_inverse(keys)
        pks = self._known_series(uniq)
        new: list[int] = []  # positions in ``uniq`` of the series first seen
        for j in np.flatnonzero(pks < 0).tolist():  # not known here yet, or new
            var_pk, set_ = divmod(int(uniq[j]), 1024)
            pk = reg.series.get((var_pk, set_))
            if pk is not None:
                self._know_series(var_pk, set_, pk)
                pks[j] = pk
            else:
                new.append(j)
        if new:
            var_pks, sets = np.divmod(uniq[new], 1024)
            added = reg.series_added(reg.series_end, var_pks.tolist(), sets.tolist())
            if added is None:
                raise NotFound("a variable of this batch was deleted while it was written")
            pks[new] = np.arange(reg.series_end, reg.series_end + len(new))
            created = [(e.pk, e.project_pk, e.device_pk, e.variable_pk, e.set) for e in added]
            # Applied now (a column at a time: ``Registry.apply_all``), so the batch's QC has
            # their limits and their pks are taken; written with the transaction's events and
            # undone if it fails. When every event before them is applied already, they count
            # as applied (not applied again after the commit).
            tx.on_rollback.append(functools.partial(_forget_series, reg, created))
            reg.apply_all(added)
            prefix = tx.applied == len(tx.events)
            tx.events.extend(added)
            if prefix:
                tx.applied = len(tx.events)
            tx.execute(
                "INSERT INTO series (pk, project_pk, device_pk, variable_pk, set_) "
                "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 "
                "FROM json_each(?)",
                (orjson.dumps(created),),
            )
        out: npt.NDArray[np.int64] = pks[inverse]
        return out

    def _known_series(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The series pk of each (variable pk * 1024 + set) key the writer looked up before
        (``_series_of_variable``: a variable's set and series pk by variable pk), -1 for the
        others: a few array operations, not a registry lookup per key (a quarter of a bulk
        append's Python time, issue 17). The columns are cleared when the metadata version
        moves (a series dropped, a variable or device deleted bump it), and a pk whose series
        is gone is never given (checked against ``s_project``)."""
        reg = self.registry
        k_set, k_pk = self._series_of_variable
        if self._series_keys_version != reg.version:
            k_set[:] = -1
            self._series_keys_version = reg.version
        var_pk, set_ = keys // 1024, keys % 1024
        pks = np.full(len(keys), -1, np.int64)
        inside = var_pk < len(k_pk)
        pk = np.where(k_set[var_pk[inside]] == set_[inside], k_pk[var_pk[inside]], -1)
        s_project = reg.s_project
        pk[pk >= len(s_project)] = -1
        pk[(pk >= 0) & (s_project[np.maximum(pk, 0)] < 0)] = -1
        pks[inside] = pk
        return pks

    def _know_series(self, var_pk: int, set_: int, pk: int) -> None:
        """Note that series ``pk`` is (``var_pk``, ``set_``), for ``_known_series``."""
        k_set, k_pk = self._series_of_variable
        if var_pk >= len(k_pk):
            size = max(var_pk + 1, 2 * len(k_pk))
            k_set = np.concatenate((k_set, np.full(size - len(k_set), -1, np.int64)))
            k_pk = np.concatenate((k_pk, np.full(size - len(k_pk), -1, np.int64)))
            self._series_of_variable = (k_set, k_pk)
        k_set[var_pk], k_pk[var_pk] = set_, pk

    def _probe(
        self, conn: sqlite3.Connection, series: npt.NDArray[np.int64], times: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.bool_], dict[tuple[int, int], Any]]:
        """The stored value of each probed key found, and which keys are surely not stored.

        A backfill probes every row, so the store is asked per series first: a series that
        has no indexed row between the batch's first and last time of it (one index seek per
        series) and no unindexed row in that span (the tail's time span, kept in memory) has
        none of its keys stored, and its keys are not looked up one by one."""
        found: dict[tuple[int, int], Any] = {}
        # The index's sealed position in this transaction's view of the index file (taken now
        # if not yet): its entries and the log after it are every row stored.
        sealed = sealed_in(conn)
        order = np.lexsort((times, series))
        s_sorted = series[order]
        starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
        ends = np.r_[starts[1:], len(order)] - 1
        spans = list(
            zip(
                s_sorted[starts].tolist(),
                times[order[starts]].tolist(),
                times[order[ends]].tolist(),
                strict=True,
            )
        )
        hit = {
            int(r[0])
            for r in conn.execute(
                "SELECT value ->> 0 FROM json_each(?) WHERE EXISTS (SELECT 1 FROM obs_index i"
                " WHERE i.series = value ->> 0 AND i.time >= value ->> 1"
                " AND i.time <= value ->> 2)",
                (orjson.dumps(spans).decode(),),
            )
        }
        lo, hi = int(times.min()), int(times.max())
        tail = self._tail_may_hold(sealed, lo, hi)
        in_hit = np.isin(series, np.fromiter(hit, np.int64, len(hit)))
        sure = np.zeros(len(series), np.bool_) if tail else ~in_hit
        if hit:
            # One statement for every key left (the keys travel as one JSON array, so the GIL
            # is handed over once, not once per key; see _insert_rows).
            wanted = sorted(set(zip(series[in_hit].tolist(), times[in_hit].tolist(), strict=True)))
            for s, t, v in conn.execute(
                "SELECT i.series, i.time, o.value FROM json_each(?) k "
                "JOIN obs_index i ON i.series = k.value ->> 0 AND i.time = k.value ->> 1 "
                "JOIN obs o ON o.cursor = i.cursor",
                (orjson.dumps(wanted).decode(),),
            ):
                found[(s, t)] = v
        if tail:
            wanted_set = set(zip(series.tolist(), times.tolist(), strict=True))
            distinct = sorted({int(x) for x in s_sorted[starts].tolist()})
            for k in range(0, len(distinct), 500):
                part = distinct[k : k + 500]
                marks = ",".join("?" * len(part))
                for s, t, v in conn.execute(
                    "SELECT series, time, value FROM obs WHERE cursor > ? AND time >= ?"
                    f" AND time <= ? AND series IN ({marks})",
                    (sealed, lo, hi, *part),
                ):
                    if (s, t) in wanted_set:
                        found[(s, t)] = v
        return sure, found

    # -- time series (aggregates, latest values, retention) ------------------------------------

    async def aggregate_inputs(
        self,
        project_pk: int,
        series: Sequence[int],
        lo_ms: int,
        hi_ms: int,
        qc_remove: int,
        plan: Callable[[Summaries], list[tuple[int, int, int]]],
    ) -> tuple[Summaries, Points]:
        """The hour summaries of ``series`` over ``[lo_ms, hi_ms)`` (QC flags passing
        ``qc_remove``), and the raw numeric rows of the (series, from, to) ranges ``plan``
        asks for given those summaries, both from one read snapshot."""

        def run(conn: sqlite3.Connection) -> tuple[Summaries, Points]:
            with _snapshot(conn) as sealed:
                return summaries.read(conn, sealed, series, lo_ms, hi_ms, qc_remove, plan)

        return await self.read(run, key=project_pk)

    async def latest_rows(self, lo: int = 0, hi: int | None = None) -> Batch:
        """The newest stored row (its greatest time) of every series whose pk is in
        ``[lo, hi)``, in series order (the latest-row cache loads a range at a time: see
        ``services.timeseries.LATEST_CHUNK``)."""
        top = hi if hi is not None else 1 << 62

        def run(conn: sqlite3.Connection) -> Batch:
            with _snapshot(conn) as sealed:
                indexed = _fetch_rows(conn, _NEWEST_INDEXED, (lo, top), by_time=False)
                # The unindexed tail's newest row of each series (bare columns of max()).
                tail = conn.execute(
                    "SELECT cursor, series, max(time), value, qc FROM obs "
                    "WHERE cursor > ? AND series >= ? AND series < ? GROUP BY series",
                    (sealed, lo, top),
                ).fetchall()
            # The pages it read, one of each series' index and log pages, are no reader's
            # working set: dropped (each reader's cache, filled so, stayed resident).
            conn.execute("PRAGMA shrink_memory")
            if hi is None:  # the last range: what the reads freed goes back to the system
                release_free_memory()
            rows = concat([_batch(0, indexed), _batch(0, tail)])
            if not len(rows):
                return rows
            # Each series' row of the greatest time (the tail's where it is as new: later).
            order = np.lexsort((rows.cursors, rows.times, rows.series))
            s = rows.series[order]
            return rows.pick(order[np.append(s[1:] != s[:-1], True)])

        return await self.read(run)

    async def newest_passing(self, series: Sequence[int], qc_remove: int) -> Batch:
        """Each of ``series``' newest row without a QC flag of ``qc_remove`` (series order)."""

        def run(conn: sqlite3.Connection) -> Batch:
            out: list[Sequence[Any]] = []
            with _snapshot(conn) as sealed:
                for pk in series:
                    row = conn.execute(
                        "SELECT cursor, series, time, value, qc FROM ("
                        "SELECT o.cursor, o.series, o.time, o.value, o.qc FROM obs_index i "
                        "JOIN obs o ON o.cursor = i.cursor WHERE i.series = ? AND"
                        " (o.qc & ?) = 0 UNION ALL SELECT cursor, series, time, value, qc "
                        "FROM obs WHERE cursor > ? AND series = ? AND (qc & ?) = 0) "
                        "ORDER BY time DESC LIMIT 1",
                        (pk, qc_remove, sealed, pk, qc_remove),
                    ).fetchone()
                    if row is not None:
                        out.append(row)
            return _batch(0, out)

        return await self.read(run)

    async def expired(self, cutoffs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (series, cutoff ms) pairs of ``cutoffs`` having rows older than the cutoff. The
        count and cursor span of those rows are kept for the pass ``expire`` then runs."""

        def run(conn: sqlite3.Connection) -> retention.Expired:
            with _snapshot(conn) as sealed:
                return retention.expired(conn, sealed, cutoffs)

        plan = await self.read(run)
        if plan.rows:
            if len(self._retention_plans) > 64:  # planned, never run (a failed pass)
                self._retention_plans.clear()
            self._retention_plans[plan.cutoffs] = plan
        return list(plan.cutoffs)

    async def expire(
        self,
        project_pk: int,
        cutoffs: Sequence[tuple[int, int]],
        *,
        keep_summaries: bool,
        max_rows: int,
    ) -> tuple[int, bool]:
        """One bounded step of retention (one write transaction) of the pass over the
        project's series older than their cutoff (``retention.Pass``; a call with other
        cutoffs starts a new pass). Returns (rows removed, done)."""
        key = tuple((int(s), int(c)) for s, c in cutoffs)
        run_pass = self._retention_passes.get(project_pk)
        if run_pass is None or run_pass.plan.cutoffs != key:
            plan = self._retention_plans.pop(key, None)
            if plan is None:  # not planned by ``expired``: plan it now

                def planned(conn: sqlite3.Connection) -> retention.Expired:
                    with _snapshot(conn) as sealed:
                        return retention.expired(conn, sealed, key)

                plan = await self.read(planned)
            run_pass = retention.Pass(project_pk, plan, keep_summaries)
            self._retention_passes[project_pk] = run_pass
        if not run_pass.plan.rows:
            self._retention_passes.pop(project_pk, None)
            return 0, True
        this = run_pass

        def run(tx: Tx) -> tuple[int, bool]:
            _lock_index(tx.conn)  # first: its view of the index is then the newest
            removed, top, done = this.step(tx.conn, sealed_in(tx.conn), max_rows)
            tx.after_commit.append(this.committed)
            if top:

                def moved() -> None:
                    self.gone[project_pk] = max(self.gone.get(project_pk, 0), top)

                tx.after_commit.append(moved)
            return removed, done

        removed, done = await self.write(run)
        if done:
            self._retention_passes.pop(project_pk, None)
        return removed, done

    async def read_log(
        self, after: int, upto: int, limit: int, *, project_pk: int | None = None
    ) -> Batch:
        """The log's rows in ``(after, upto]``, at most ``limit``. With ``project_pk`` (a
        project's catch-up), only the cursor ranges that hold that project's rows are read
        (``log_spans``, an index range read), so a busy project beside it costs nothing; up
        to the last time a device moved into the project (``log_moves``) every row is read,
        as the moved rows lie in the ranges of the project they came from. Rows of other
        projects may still come back (a batch range shared with one): the caller's selection
        filters them."""

        def run(conn: sqlite3.Connection) -> Batch:
            if project_pk is None:
                return _batch(0, _fetch_rows(conn, _LOG_SQL, (after, upto, limit), by_time=False))
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT upto FROM log_moves WHERE project_pk = ?", (project_pk,)
                ).fetchone()
                moved = min(upto, int(row[0])) if row is not None else 0
                rows: list[Sequence[Any]] = []
                if moved > after:
                    rows = _fetch_rows(conn, _LOG_SQL, (after, moved, limit), by_time=False)
                start = max(after, moved)
                if len(rows) < limit and upto > start:
                    rows += _fetch_rows(
                        conn,
                        _SPANS_SQL,
                        (start, upto, project_pk, limit - len(rows)),
                        by_time=False,
                    )
            finally:
                conn.execute("COMMIT")
            return _batch(project_pk, rows)

        return await self.read(run)

    async def cursor_before(self, received_ms: int) -> int:
        """The last cursor committed before ``received_ms`` (0: none): where a replay of what
        arrived since then starts. A binary search over the log by primary key (commit times
        follow cursor order), so it costs a few dozen point reads, never a scan."""

        def run(conn: sqlite3.Connection) -> int:
            lo, hi = 0, self._head  # invariant: received(lo) < t <= received(hi + 1...)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                row = conn.execute(
                    "SELECT cursor, received FROM obs WHERE cursor >= ? ORDER BY cursor LIMIT 1",
                    (mid,),
                ).fetchone()
                if row is not None and row[1] < received_ms:
                    lo = max(mid, row[0])
                else:
                    hi = mid - 1
            return lo

        return await self.read(run)

    async def history(self, query: HistoryQuery) -> Batch:
        def run(conn: sqlite3.Connection) -> Batch:
            with _snapshot(conn) as sealed:
                sql, params = _history_sql(query, sealed)
                return _batch(query.project_pk, _fetch_rows(conn, sql, params, by_time=True))

        return await self.read(run, key=query.project_pk)

    async def next_time(self, query: HistoryQuery) -> int | None:
        """The time of the first row of ``query`` (its series, after ``query.after``, within
        ``start``/``end``; QC removal aside), or None: where a windowed read goes on after a
        gap. One index seek per series plus the unindexed tail, never a scan."""

        def run(conn: sqlite3.Connection) -> int | None:
            with _snapshot(conn) as sealed:
                sql, params = _next_time_sql(query, sealed)
                row = conn.execute(sql, params).fetchone()
                return None if row is None or row[0] is None else int(row[0])

        return await self.read(run, key=query.project_pk)

    async def history_judged(
        self, query: HistoryQuery, expr: Expr
    ) -> tuple[Batch, tuple[int, int] | None, int]:
        """One page of the history read ``query`` (``query.limit`` candidate rows in (time,
        cursor) order), judged by ``expr`` (filter_on) per station report: the project's rows
        of one station at one time that pass the query's QC removal. The expression is compiled
        to parameterized SQL (``filtersql.to_sql``) over a per-connection table of each
        series' station and sensor, so the database judges it. Returns the passing rows, the
        (time, cursor) of the page's last candidate, and the number of candidates.

        The work is linear in the page: the candidates, the report rows at their times (read
        by a range over the candidates' times) and the judgement are each materialized once,
        and the report rows are looked up by key (an automatic index), never scanned per
        candidate."""

        def run(conn: sqlite3.Connection) -> tuple[Batch, tuple[int, int] | None, int]:
            self._report_keys(conn)
            with _snapshot(conn) as sealed:
                sql, params = _judged_history_sql(query, expr, sealed)
                rows = _fetch_rows(conn, sql, params, by_time=True, extra="judged")
            last = (int(rows[-1][2]), int(rows[-1][0])) if rows else None
            passing = [r[:5] for r in rows if r[5]]
            return _batch(query.project_pk, passing), last, len(rows)

        return await self.read(run, key=query.project_pk)

    def _report_keys(self, conn: sqlite3.Connection) -> None:
        """``temp.report_keys(series, station, sensor)`` on this reader connection: rebuilt
        when the registry's metadata version has changed since, extended with the series
        ingest created (a station is a site, or a device without one)."""
        reg = self.registry
        mark = (reg.version, reg.series_end)
        had = self._keys_marks.get(id(conn))
        if had == mark:
            return
        since = had[1] if had is not None and had[0] == reg.version else 0
        rows = list(zip(*reg.series_stations(since), strict=True))
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS report_keys "
            "(series INTEGER PRIMARY KEY, station INTEGER NOT NULL, sensor TEXT NOT NULL)"
        )
        if not since:
            conn.execute("DELETE FROM temp.report_keys")
        conn.executemany("INSERT OR REPLACE INTO temp.report_keys VALUES (?, ?, ?)", rows)
        self._keys_marks[id(conn)] = mark


@dataclasses.dataclass(slots=True)
class _Job:
    """A write for the writer thread: ``fn`` in one transaction, answered on ``fut``."""

    fn: Callable[[Tx], Any]
    fut: asyncio.Future[Any]
    stage: _Stage | None = None  # a big append's rows, staged before its transaction


STAGE_CHUNK = 2048  # rows staged per step; the small writes waiting go between two steps
GROUP_JOBS = 8  # big appends committed together at most (``SqliteStore._group``)
GROUP_ROWS = 20_000  # rows of a group at most (a live write that comes meanwhile waits for it)


class _Stage:
    """A big append's rows (time, value and which of the batch's distinct (variable, set) it
    is, in batch order) copied into the writer connection's temporary table ``stage`` before
    its transaction, so that the transaction (which holds up every other write) copies them
    with one ``INSERT ... SELECT`` instead of parsing them. Only one stage is filled at a time
    (the writer's next big job)."""

    def __init__(self, columns: IngestColumns) -> None:
        self.columns = columns
        self.filled = False
        # Each row's index among the distinct (variable, set) keys of the batch (by ``fill``,
        # on the writer thread).
        self.key_of_row: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._keys: npt.NDArray[np.int64] | None = None

    def series_keys(self) -> npt.NDArray[np.int64]:
        """The batch's distinct (variable, set) keys, sorted: which series it writes."""
        if self._keys is None:
            c = self.columns
            self._keys = _distinct(c.variable_pks * 1024 + c.sets)
        return self._keys

    def fill(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Fill the stage a chunk at a time, yielding between chunks. A batch holding a text
        value with a NUL (SQLite's JSON functions end a string there) or a failure leaves
        ``filled`` false: its transaction then inserts its rows the usual way."""
        c = self.columns
        try:
            self.key_of_row = _distinct_inverse(c.variable_pks * 1024 + c.sets)[1]
            conn.execute("DELETE FROM temp.stage")
            for off in range(0, len(c.times), STAGE_CHUNK):
                end = off + STAGE_CHUNK
                payload = orjson.dumps(
                    list(
                        zip(
                            self.key_of_row[off:end].tolist(),
                            c.times[off:end].tolist(),
                            c.values[off:end],
                            strict=True,
                        )
                    )
                )
                if b"\\u0000" in payload:
                    return
                conn.execute(
                    "INSERT INTO temp.stage (k, u, time, value) "
                    "SELECT ?2 + key, value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1)",
                    (payload, off),
                )
                yield
        except Exception:  # the writer thread must go on: the transaction inserts the rows
            log.exception("staging a batch failed; it is inserted without the stage")
            return
        self.filled = True

    def clear(self, conn: sqlite3.Connection) -> None:
        """Empty the stage (its memory), once the batch's transaction is over."""
        if self.filled:
            try:
                conn.execute("DELETE FROM temp.stage")
            except sqlite3.Error:
                log.exception("emptying the stage failed")


def _create_stage(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage "
        "(k INTEGER PRIMARY KEY, u INTEGER NOT NULL, time INTEGER NOT NULL, value)"
    )
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_series (u INTEGER PRIMARY KEY, series INTEGER)"
    )


def _insert_staged(
    conn: sqlite3.Connection,
    stage: _Stage,
    first: int,
    series: npt.NDArray[np.int64],
    qc: npt.NDArray[np.int64],
    received: int,
) -> None:
    """Append every row of the staged batch to the log with cursors from ``first`` on: its
    time and value from the stage, its series by its key (``stage_series``: one row per
    distinct key, written here), its QC flags 0 but for the flagged rows, set after."""
    key_of_row = stage.key_of_row
    series_of_key = np.zeros(int(key_of_row.max()) + 1, np.int64)
    series_of_key[key_of_row] = series
    conn.execute("DELETE FROM temp.stage_series")
    conn.execute(
        "INSERT INTO temp.stage_series (u, series) SELECT key, value FROM json_each(?)",
        (orjson.dumps(series_of_key.tolist()),),
    )
    conn.execute(
        "INSERT INTO obs (cursor, series, time, value, qc, received) "
        "SELECT ?1 + st.k, (SELECT series FROM temp.stage_series m WHERE m.u = st.u),"
        " st.time, st.value, 0, ?2 FROM temp.stage st ORDER BY st.k",
        (first, received),
    )
    _set_flags(conn, first, qc)


def _set_flags(conn: sqlite3.Connection, first: int, qc: npt.NDArray[np.int64]) -> None:
    """Set the QC flags of the flagged rows of a batch just inserted from cursor ``first`` on
    with flags 0 (one statement, the flagged rows only)."""
    flagged = np.flatnonzero(qc)
    if len(flagged):
        conn.execute(
            "UPDATE obs SET qc = f.value ->> 1 FROM json_each(?1) f "
            "WHERE obs.cursor = ?2 + (f.value ->> 0)",
            (orjson.dumps(list(zip(flagged.tolist(), qc[flagged].tolist(), strict=True))), first),
        )


def _forget_series(reg: ReadModel, created: list[tuple[int, int, int, int, int]]) -> None:
    for row in created:
        reg.apply(SeriesDropped(row[0]))


_LOG_SQL = (
    "SELECT cursor, series, time, value, qc FROM obs "
    "WHERE cursor > ? AND cursor <= ? ORDER BY cursor LIMIT ?"
)
# A project's rows in (?1, ?2]: its spans from the one holding ?1 + 1 on (a primary-key range
# read of ``log_spans``), each a primary-key range of ``obs``. The spans of a project are
# disjoint, so (first, cursor) order is cursor order and no sort is needed.
_SPANS_SQL = (
    "SELECT o.cursor, o.series, o.time, o.value, o.qc FROM log_spans s JOIN obs o"
    " ON o.cursor > max(s.first - 1, ?1) AND o.cursor <= min(s.last, ?2)"
    " WHERE s.project_pk = ?3 AND s.first >= coalesce("
    "(SELECT max(first) FROM log_spans WHERE project_pk = ?3 AND first <= ?1), 0)"
    " AND s.first <= ?2 AND s.last > ?1"
    " ORDER BY s.first, o.cursor LIMIT ?4"
)


def _succeed(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _guarded(fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` in a callback that runs several: what it raises is logged (as the event
    loop does for a callback of its own) and the others still run."""
    try:
        fn(*args)
    except Exception:
        log.exception("handing on a commit to %r failed", fn)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _insert_rows(
    conn: sqlite3.Connection,
    first: int,
    series: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    values: list[Any],
    qc: npt.NDArray[np.int64],
    received: int,
) -> None:
    """Append rows to the log with cursors from ``first`` on, ``INSERT_ROWS`` rows a statement.

    Each statement is one multi-row ``VALUES`` list of bound parameters (``_values_sql``: the
    receive time and the first cursor bound once, a row's cursor written as an offset from
    it), not ``executemany``: the sqlite3 module releases the GIL around every
    ``sqlite3_step``, once per row, and while the event loop is busy each of those hand-overs
    waits for the loop to yield the GIL (500 rows took 200 ms instead of 0.4 ms); a statement
    is one step. Bound values are stored exactly as given (a float's double, a text with a NUL
    in it), and it costs less than the rows as one JSON array read by ``json_each`` (5,000
    rows: 2-3 ms instead of 6, issue 17): no text to write and parse again per value."""
    n = len(series)
    s_list, t_list, q_list = series.tolist(), times.tolist(), qc.tolist()
    per = _insert_rows_per(conn)
    for off in range(0, n, per):
        k = min(per, n - off)
        params: list[Any] = [None] * (2 + 4 * k)
        params[0], params[1] = received, first + off
        params[2::4] = s_list[off : off + k]
        params[3::4] = t_list[off : off + k]
        params[4::4] = values[off : off + k]
        params[5::4] = q_list[off : off + k]
        conn.execute(_values_sql(k), params)


INSERT_ROWS = 1000  # rows per INSERT statement of ``_insert_rows`` at most


def _insert_rows_per(conn: sqlite3.Connection) -> int:
    """Rows per statement: ``INSERT_ROWS``, fewer if this SQLite takes fewer bound parameters
    (4 a row, 2 shared)."""
    return max(1, min(INSERT_ROWS, (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 2) // 4))


@functools.lru_cache(maxsize=64)
def _values_sql(rows: int) -> str:
    """The insert of ``rows`` rows: ``?1`` the receive time, ``?2`` the first cursor, then the
    series, time, value and QC flags of each row."""
    return "INSERT INTO obs (cursor, series, time, value, qc, received) VALUES " + ",".join(
        f"(?2+{i},?{3 + 4 * i},?{4 + 4 * i},?{5 + 4 * i},?{6 + 4 * i},?1)" for i in range(rows)
    )


def _distinct(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``np.unique(x)`` (sorted distinct values) by a sort: numpy 2's ``unique`` hashes, which
    took 0.7-1 ms for 5,000 keys where the sort takes 0.06 (a bulk append asks 3 or 4 times)."""
    a = np.sort(x)
    if len(a) < 2:
        return a
    out: npt.NDArray[np.int64] = a[np.r_[True, a[1:] != a[:-1]]]
    return out


def _distinct_inverse(
    x: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``np.unique(x, return_inverse=True)`` (the sorted distinct values, and each element's
    index among them) by a sort, as ``_distinct``: numpy 2's hashing took 0.15 ms a batch."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.empty(len(xs), np.bool_)
    first[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=first[1:])
    inverse = np.empty(len(x), np.int64)
    inverse[order] = np.cumsum(first) - 1
    return xs[first], inverse


_NULL_TIME = np.iinfo(np.int64).min  # ``_int_columns``' NULL


@dataclasses.dataclass(frozen=True, slots=True)
class _LogState:
    """What ``SqliteStore._read_log_state`` read: marks, latest times, the QC checkpoint."""

    head: int
    sealed: int
    summarized: int
    qc_cursor: int
    schema: int  # the schema version it was read at
    latest: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]  # series, latest time
    qc: tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64]
    ]  # series, last time, last value, same since


def read_log_state(path: Path, durability: str) -> _LogState:
    """The log's head, index and summary marks, each series' latest time and the QC
    checkpoint, from one snapshot of a read-only connection (``open``'s thread, or the one
    ``prefetch_log_state`` started)."""
    conn = _connect(path, readonly=True, durability=durability)
    try:
        conn.execute("BEGIN")
        head, sealed, summarized, qc_cursor, schema = _log_marks(conn)
        series, times = _int_columns(
            conn,
            f"SELECT * FROM ({_LATEST_INDEXED}) UNION ALL {_TOP_SERIES_INDEXED} UNION ALL "
            "SELECT series, max(time) FROM obs WHERE cursor > ? GROUP BY series",
            (sealed,),
            2,
        )
        qc = conn.execute(
            "SELECT '[' || coalesce(group_concat(series || ',' || last_time || ',' || "
            "CASE WHEN last_value IS NULL THEN 'null' ELSE printf('%!.17g', last_value) END"
            " || ',' || same_since), '') || ']' FROM qc_state"
        ).fetchone()[0]
        conn.execute("COMMIT")
        try:
            flat = orjson.loads(qc)
            qc_rows = (
                np.array(flat[0::4], np.int64),
                np.array(flat[1::4], np.int64),
                np.array([np.nan if v is None else v for v in flat[2::4]], np.float64),
                np.array(flat[3::4], np.int64),
            )
        except orjson.JSONDecodeError:  # a value JSON has no form for (an infinity)
            rows = conn.execute(
                "SELECT series, last_time, last_value, same_since FROM qc_state"
            ).fetchall()
            qc_rows = (
                np.array([r[0] for r in rows], np.int64),
                np.array([r[1] for r in rows], np.int64),
                np.array([np.nan if r[2] is None else r[2] for r in rows], np.float64),
                np.array([r[3] for r in rows], np.int64),
            )
        return _LogState(head, sealed, summarized, qc_cursor, schema, (series, times), qc_rows)
    finally:
        conn.close()


# Log state readings begun before the store opens (``prefetch_log_state``), by database path.
_prefetched: dict[Path, concurrent.futures.Future[_LogState]] = {}


def prefetch_log_state(path: Path, durability: str) -> None:
    """Begin ``SqliteStore.open``'s read of the log state of the database at ``path`` now, in
    a thread of its own: ``serve`` calls it before it imports the app (about a second of
    Python) so that SQLite reads meanwhile (each read is one statement, run with the GIL
    released). ``open`` takes the reading when the log's marks and schema are still what it
    read (nothing writes before the store's writer starts), and reads again otherwise."""
    key = path.resolve()
    if key in _prefetched or not path.exists():
        return
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sg-prefetch")
    _prefetched[key] = pool.submit(read_log_state, path, durability)
    pool.shutdown(wait=False)


def _take_prefetched(path: Path) -> concurrent.futures.Future[_LogState] | None:
    return _prefetched.pop(path.resolve(), None)


def _log_marks(conn: sqlite3.Connection) -> tuple[int, int, int, int, int]:
    """The log's head, its index mark (read first: the log read after it is as new or newer),
    its summary and QC marks, and the schema version."""
    one = conn.execute
    sealed = sealed_in(conn)
    head = int(one("SELECT coalesce(max(cursor), 0) FROM obs").fetchone()[0])
    summarized = int(one("SELECT value FROM state WHERE key='summarized'").fetchone()[0])
    qc_cursor = int(one("SELECT value FROM state WHERE key='qc_cursor'").fetchone()[0])
    schema = int(one("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])
    return head, sealed, summarized, qc_cursor, schema


def _still(conn: sqlite3.Connection, state: _LogState) -> bool:
    """Whether the log's marks and schema on ``conn`` are those ``state`` was read at (a
    reading begun before the store opened: ``prefetch_log_state``)."""
    read_at = (state.head, state.sealed, state.summarized, state.qc_cursor, state.schema)
    return _log_marks(conn) == read_at


def _int_columns(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any], width: int
) -> tuple[npt.NDArray[np.int64], ...]:
    """The integer columns of ``sql``'s rows (``width`` of them; NULL as ``_NULL_TIME``), read
    as one text SQLite builds (the GIL released throughout: see ``_fetch_rows``)."""
    cols = " || ',' || ".join(f"coalesce(c{i}, {_NULL_TIME})" for i in range(width))
    names = ", ".join(f"c{i}" for i in range(width))
    text = conn.execute(
        f"WITH r({names}) AS ({sql}) SELECT '[' || coalesce(group_concat({cols}), '') || ']' "
        "FROM r",
        params,
    ).fetchone()[0]
    flat = np.array(orjson.loads(text), np.int64)
    return tuple(flat[i::width] for i in range(width))


def _fetch_rows(
    conn: sqlite3.Connection,
    sql: str,
    params: Sequence[Any],
    *,
    by_time: bool,
    extra: str = "",
) -> list[Sequence[Any]]:
    """The rows ``(cursor, series, time, value, qc[, extra])`` of ``sql``, fetched as one value.

    ``fetchall`` steps once per row and the sqlite3 module hands the GIL over at every step:
    with the event loop busy, 10,000 rows took 570 ms instead of 5 ms (see ``_insert_rows``).
    Here SQLite builds one JSON array of the rows (GIL released throughout; reals written with
    17 significant digits, which parse back to the same double) and orjson reads it: 15 ms.
    The rows come back in ``sql``'s order (checked: by cursor, or by (time, cursor) when
    ``by_time``). A text value holding a NUL would be cut short by SQLite's string functions,
    and a blob has no JSON form (ingest never stores one): such a read takes the row-by-row
    way."""
    more = f" || ',' || {extra}" if extra else ""
    wrapped = (
        "SELECT '[' || coalesce(group_concat('[' || cursor || ',' || series || ',' || time"
        " || ',' || CASE typeof(value) WHEN 'real' THEN printf('%!.17g', value)"
        " WHEN 'integer' THEN value WHEN 'text' THEN json_quote(value) ELSE 'null' END"
        f" || ',' || qc{more} || ']', ','), '') || ']',"
        " max(typeof(value) = 'blob' OR"
        " (typeof(value) = 'text' AND instr(CAST(value AS BLOB), x'00') > 0))"
        f" FROM ({sql})"
    )
    text, has_nul = conn.execute(wrapped, params).fetchone()
    if has_nul:
        rows: list[Sequence[Any]] = conn.execute(sql, params).fetchall()
        return rows
    rows = orjson.loads(text)
    keys = [(r[2], r[0]) for r in rows] if by_time else [r[0] for r in rows]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        rows.sort(key=(lambda r: (r[2], r[0])) if by_time else (lambda r: r[0]))
    return rows


def _batch(project_pk: int, rows: Sequence[Sequence[Any]]) -> Batch:
    if not rows:
        z = np.zeros(0, np.int64)
        return Batch(project_pk, z, z.copy(), z.copy(), [], z.copy())
    cursors, series, times, values, qc = zip(*rows, strict=True)
    return Batch(
        project_pk,
        np.array(cursors, np.int64),
        np.array(series, np.int64),
        np.array(times, np.int64),
        list(values),
        np.array(qc, np.int64),
    )


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[int]:
    """A read transaction on ``conn``, yielding the sealed position it sees: the index and
    the unindexed tail are read from one snapshot of each file, so no row is in both or
    neither, and the tail is read by its primary key range (``cursor > sealed``). The index
    file's snapshot is taken first, so the log's (taken by the next statement that reads it)
    holds every row the index does."""
    conn.execute("BEGIN")
    try:
        yield sealed_in(conn)
    finally:
        conn.execute("COMMIT")


def _judged_history_sql(q: HistoryQuery, expr: Expr, sealed: int) -> tuple[str, list[Any]]:
    """The candidate page ``q``, each row with whether its station report satisfies ``expr``:
    ``report_rows`` holds the project's rows (passing the QC removal) at the page's times, keyed
    by station and time, and ``filtersql.to_sql`` turns the expression into EXISTS conditions
    over it. Every user value is a bound parameter.

    Each CTE is materialized once (the EXISTS conditions would otherwise run the population
    read again for every candidate) and the population is read by a range over the
    candidates' times, the exact times checked row by row (``+time``: not an index term)."""
    cand_sql, cand_params = _history_sql(q, sealed)
    population = dataclasses.replace(q, series=None, start=None, end=None, after=None)
    rows_sql, rows_params = _history_sql(
        population,
        sealed,
        ordered=False,
        extra=[
            "{t} >= (SELECT min(time) FROM cand)",
            "{t} <= (SELECT max(time) FROM cand)",
            "+{t} IN (SELECT time FROM cand_times)",
        ],
    )
    judged, expr_params = to_sql(expr, report_sql="o.report", table="report_rows")
    sql = (
        f"WITH cand AS MATERIALIZED ({cand_sql}), "
        "cand_times AS MATERIALIZED (SELECT DISTINCT time FROM cand), "
        f"pop AS MATERIALIZED ({rows_sql}), "
        "report_rows AS MATERIALIZED (SELECT k.station || ':' || p.time AS report,"
        " k.sensor AS sensor, p.value AS value"
        " FROM pop p JOIN temp.report_keys k ON k.series = p.series) "
        f"SELECT cursor, series, time, value, qc, coalesce(({judged}), 0) AS judged FROM ("
        "SELECT c.cursor, c.series, c.time, c.value, c.qc,"
        " coalesce(k.station, -1) || ':' || c.time AS report"
        " FROM cand c LEFT JOIN temp.report_keys k ON k.series = c.series) o "
        "ORDER BY time, cursor"
    )
    return sql, [*cand_params, *rows_params, *expr_params]


def _series_sql(q: HistoryQuery) -> tuple[str, list[Any]]:
    """The series a read covers, as SQL: the project's, or one JSON array parameter (so a
    selection of thousands of series is still one bound value, never SQL text)."""
    if q.series is None:
        return "SELECT pk FROM series WHERE project_pk = ?", [q.project_pk]
    return "SELECT value FROM json_each(?)", [orjson.dumps(list(q.series)).decode()]


def _conditions(q: HistoryQuery, extra: Sequence[str] = ()) -> tuple[list[str], list[Any]]:
    """The row conditions of ``q`` as templates over ``{t}`` (time), ``{c}`` (cursor) and
    ``{q}`` (qc). The resume key gives a range (``time >= t``) as well as the exact keyset
    condition, so each series' index is entered at the key, not scanned from its start."""
    conds: list[str] = []
    cparams: list[Any] = []
    if q.start is not None:
        conds.append("{t} >= ?")
        cparams.append(q.start)
    if q.end is not None:
        conds.append("{t} < ?")
        cparams.append(q.end)
    if q.after is not None:
        conds.append("{t} >= ? AND ({t} > ? OR {c} > ?)")
        cparams += [q.after[0], q.after[0], q.after[1]]
    if q.times is not None:
        conds.append("{t} IN (SELECT value FROM json_each(?))")
        cparams.append(orjson.dumps(list(q.times)).decode())
    conds.extend(extra)  # the caller's code over its CTEs, never user text
    if q.qc_remove:
        conds.append("({q} & ?) = 0")
        cparams.append(q.qc_remove)
    return conds, cparams


def _history_sql(
    q: HistoryQuery, sealed: int, *, ordered: bool = True, extra: Sequence[str] = ()
) -> tuple[str, list[Any]]:
    """Parameterized SQL for a history read: indexed sealed chunks plus the unsealed tail
    (``cursor > sealed``, read by primary key), as of one snapshot (``_snapshot``)."""
    series_sql, sparams = _series_sql(q)
    conds, cparams = _conditions(q, extra)

    def cond(t: str, c: str, qc: str) -> str:
        return "".join(" AND " + x.format(t=t, c=c, q=qc) for x in conds)

    sql = (
        "SELECT cursor, series, time, value, qc FROM ("
        "SELECT o.cursor, o.series, o.time, o.value, o.qc FROM obs_index i "
        "JOIN obs o ON o.cursor = i.cursor "
        f"WHERE i.series IN ({series_sql}){cond('i.time', 'i.cursor', 'o.qc')} "
        "UNION ALL "
        "SELECT cursor, series, time, value, qc FROM obs "
        f"WHERE cursor > ? AND series IN ({series_sql}){cond('time', 'cursor', 'qc')}"
        ")"
    )
    params = [*sparams, *cparams, sealed, *sparams, *cparams]
    if not ordered:
        return sql, params
    return sql + " ORDER BY time, cursor LIMIT ?", [*params, q.limit]


def _next_time_sql(q: HistoryQuery, sealed: int) -> tuple[str, list[Any]]:
    """The first time of ``q`` (QC removal aside): per series, one seek into the index at the
    resume key; and the unindexed tail."""
    series_sql, sparams = _series_sql(q)
    conds, cparams = _conditions(dataclasses.replace(q, qc_remove=0))

    def cond(t: str, c: str) -> str:
        return "".join(" AND " + x.format(t=t, c=c, q="") for x in conds)

    sql = (
        "SELECT min(t) FROM ("
        "SELECT (SELECT i.time FROM obs_index i "
        f"WHERE i.series = s.value{cond('i.time', 'i.cursor')} ORDER BY i.time LIMIT 1) AS t "
        f"FROM ({series_sql.replace('SELECT pk FROM', 'SELECT pk AS value FROM')}) s "
        "UNION ALL "
        f"SELECT min(time) FROM obs WHERE cursor > ? AND series IN ({series_sql})"
        f"{cond('time', 'cursor')})"
    )
    return sql, [*cparams, *sparams, sealed, *sparams, *cparams]
