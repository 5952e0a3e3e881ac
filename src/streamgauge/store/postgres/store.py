"""The PostgreSQL store: one writer thread fed by a queue, pooled readers, the log in ``obs``.

One log for every node (see ``docs/cluster.md``, "One log"). Every append runs in one
transaction that first takes the cluster-wide advisory lock ``LOG_LOCK``
(``pg_advisory_xact_lock``), then reads the head (``state.head``), checks the batch's keys,
numbers its rows ``head + 1 ..`` (binary COPY), moves the head and commits; the lock is released
by the commit. So appends of every process on the database are serialized, each sees the one
before it committed, and cursors are unique, gapless and in commit order across nodes. A reader
(one statement, one snapshot) always sees a prefix of the log.

Duplicates: the in-memory latest time of each series (the registry's ``latest``) says which
rows are new for sure. It is exact at the last cursor this process saw: when the head read
under the lock is further on, another node has written, and the rows it committed in between
are read (``PgStore._follow``: they move the latest times and the QC state as if this process
had written them) before the rules screen the batch. The writer follows the log without the
lock too, before each job and when idle, so the part read under the lock is only what
committed since. The probe of older rows always asks the database.

Faults: connections have connect, statement and TCP timeouts. A write or read that fails on a
connection error raises ``Unavailable`` with ``Retry-After`` (503); the connection is dropped and
the next job connects again, so the store recovers when PostgreSQL is back.

Appends queued together share one such transaction (``PgStore._group``): each numbered after
the one before, each refused or accepted alone, all answered after the one commit.

Each node publishes the batches it committed, in its commit order (the bus carries the others').
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import psycopg

from streamgauge.domain.batch import Batch, floats
from streamgauge.domain.commit import CommitRules
from streamgauge.domain.errors import Conflict, NotFound, StreamgaugeError, Unavailable
from streamgauge.domain.events import MetaEvent, SeriesAdded, SeriesDropped
from streamgauge.domain.filters import Expr
from streamgauge.domain.log import AppendResult, HistoryQuery, IngestColumns
from streamgauge.domain.readmodel import ReadModel
from streamgauge.domain.timeseries import Points, Summaries
from streamgauge.store.early import inverse as _inverse
from streamgauge.store.early import undo as _undo
from streamgauge.store.postgres import metadata, qcshared, retention, summaries
from streamgauge.store.postgres.conn import (
    Conn,
    Tx,
    connect,
    first_line,
    is_connection_error,
    unreachable,
)
from streamgauge.store.postgres.filtersql import to_sql
from streamgauge.store.postgres.schema import LOCK_CLASS, LOG_LOCK, migrate
from streamgauge.store.postgres.watch import Watch
from streamgauge.store.sqlite.fair import FairGate

T = TypeVar("T")
log = logging.getLogger("streamgauge.store")
IDLE_SECONDS = 0.5  # a writer idle this long follows the log and checkpoints the QC state
# Appends waiting together that the writer commits in one transaction (one lock, one commit
# flush), each refused or accepted alone (``PgStore._group``).
GROUP_JOBS = 8
GROUP_ROWS = 50_000
CHECKPOINT_ROWS = 500_000  # log rows after the QC checkpoint from which a busy writer writes one
# Opens every write transaction in one round trip: the statements of a simple query run one
# after the other, each in a new snapshot (read committed), so the head is read after the log
# lock was granted and sees every transaction that held it before (docs/cluster.md, "One log").
BEGIN_SQL = (
    f"BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {LOG_LOCK}); "
    "SELECT value FROM state WHERE key = 'head'"
).encode()
COPY_SQL = "COPY obs (cursor, series, time, num, txt, qc, received) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ["int8", "int8", "int8", "float8", "text", "int8", "int8"]
FOLD_SECONDS = 1.0  # how often a node looks for rows to fold into the summaries (_fold_loop)
FOLD_STEP = 200_000  # rows folded into the hour summaries per transaction
# Rows not summarized yet from which a node folds while appends go on (a quiet log is folded
# at once): a fold of many rows adds each (series, hour) unit once, not once per row, and
# leaves the CPU to ingest meanwhile; reads summarize the rows not folded yet.
FOLD_LAG = 50_000  # at 10,000 obs/s: a fold every 5 s, a fraction of a second of work
_FOLD_KEY = object()  # the folds' turn among the reads (FairGate)


class PgStore:
    """The log and transaction runner of the ``postgresql`` backend (``store.api.Store``).

    Owns one writer connection (its thread runs every write, in queue order) and a reader
    connection per reader thread. The engine calls ``open``/``close``, ``append`` and the reads;
    the table modules of ``store.postgres`` run in ``write``/``read``."""

    def __init__(
        self,
        url: str,
        *,
        readers: int = 4,
        rules: Callable[[ReadModel], CommitRules],
        registry: ReadModel,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
    ) -> None:
        self.url = url
        # The engine's registry: loaded on open, handed each committed transaction's metadata
        # events (its ``apply`` is the one way metadata changes).
        self.registry = registry
        # Called on the event loop with (first, last sequence number, events) of each committed
        # transaction that changed metadata, before its batches are published (cluster mode).
        self.on_events: Callable[[int, int, list[MetaEvent]], None] | None = None
        self.rules: CommitRules = rules(self.registry)
        # Per project, the highest cursor retention removed (store/postgres/retention.py).
        self.gone: dict[int, int] = {}
        self._timeouts = {
            "connect_timeout": connect_timeout,
            "statement_timeout": statement_timeout,
        }
        self._head = 0  # last cursor published on the loop
        self._writer_head = 0  # last cursor this process committed (writer thread)
        # Jobs (the write, its caller's future, its rows if it is an append that may share a
        # transaction with others, else 0); None: close.
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publish: Callable[[Batch], None] = lambda b: None
        self._local = threading.local()
        self._reader_conns: list[Conn] = []
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sg-pg-read")
        self._gate = FairGate(readers)
        self._closed = False
        self.write_seconds = 0.0
        # Series whose QC state moved since this process's last checkpoint (its own appends'
        # and those it followed), whether it appended since, and the cursor of the last one.
        self._qc_dirty: set[int] = set()
        self._qc_own = False
        self._qc_checkpointed = 0
        self._followed = False  # the last look at the head found rows of another process
        self._writer_conn: Conn | None = None
        self._folder: asyncio.Task[None] | None = None
        # Ends statements PostgreSQL no longer answers (store/postgres/watch.py).
        self._watch = Watch(self._probe)

    def _connect(self) -> Conn:
        self._watch.refuse_if_down()
        try:
            return connect(self.url, **self._timeouts)
        except Unavailable:
            self._watch.mark_down()
            raise

    def _probe(self) -> None:
        """Does the server answer now (a new connection and one statement)?"""
        with connect(self.url, **self._timeouts) as conn:
            conn.execute("SELECT 1")

    def connection(self) -> Conn:
        """A new connection with the store's timeouts, for a reader of its own (the feed
        sessions' listener and locks: ``feedsignals.py``)."""
        return self._connect()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self._head

    async def durable_head(self) -> int:
        """The last cursor committed by any node (``state.head``)."""
        return await self.read(lambda conn: _state(conn, "head"))

    # -- metadata events, as the cluster mode's meta channel reads them ---------------------------

    async def events_head(self) -> int:
        return await self.read(metadata.events_head)

    async def read_events(
        self, after: int, upto: int | None, limit: int
    ) -> list[tuple[int, MetaEvent]]:
        return await self.read(lambda c: metadata.read_events(c, after, upto, limit))

    async def metadata_snapshot(self) -> tuple[int, list[MetaEvent]]:
        def snap(conn: Conn) -> tuple[int, list[MetaEvent]]:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                return metadata.events_head(conn), list(metadata.load(conn))

        return await self.read(snap)

    async def open(self, publish: Callable[[Batch], None]) -> None:
        """Connect (``Unavailable`` naming the store if it cannot), migrate, load."""
        self._loop = asyncio.get_running_loop()
        self._publish = publish
        conn = await asyncio.to_thread(self._connect)
        try:
            await asyncio.to_thread(self._load, conn)
        except BaseException:
            conn.close()
            raise
        self._writer_conn = conn
        gc.collect()
        gc.freeze()
        self._head = self._writer_head
        self._thread = threading.Thread(target=self._writer, name="sg-pg-writer", daemon=True)
        self._thread.start()
        self._folder = asyncio.create_task(self._fold_loop(), name="sg-pg-fold")
        self._watch.start()

    def _load(self, conn: Conn) -> None:
        migrate(conn)
        with conn.transaction():  # one snapshot: the tables, the head and the latest times
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.registry.load(metadata.load_tables(conn))
            self._writer_head = _state(conn, "head")
            rows = conn.execute(
                "SELECT s, (SELECT max(time) FROM obs WHERE series = s) FROM unnest(%s::int8[]) s",
                (_log_series(conn),),
            ).fetchall()
            rows = [r for r in rows if r[1] is not None]
            if rows:
                series, latest = zip(*rows, strict=True)
                self.registry.restore_latest(series, latest)
            self.gone = retention.load_gone(conn)
            self._load_qc_state(conn)  # the checkpoint of this snapshot, replayed to its head

    def _load_qc_state(self, conn: Conn) -> None:
        """QC state as checkpointed, then the log after the checkpoint up to the head loaded,
        in cursor order (one snapshot: a checkpoint another node writes meanwhile is not mixed
        with rows it already holds)."""
        st = self.registry.qc_state
        for series, last_time, last_value, same_since in conn.execute(
            "SELECT series, last_time, last_value, same_since FROM qc_state"
        ):
            st.ensure(series + 1)
            st.last_time[series] = last_time
            st.last_value[series] = np.nan if last_value is None else last_value
            st.same_since[series] = same_since
        after = self._qc_checkpointed = _state(conn, "qc_cursor")
        # Up to the head loaded (what committed since is followed by the writer), applied as
        # their writers applied them: with the flags stored (QC off: the checks run again).
        stored_flags = getattr(self.rules, "quality_control", True)
        for _, series, times, numeric, flags in qcshared.committed(conn, after, self._writer_head):
            if len(series):
                if stored_flags:
                    self.rules.advance(series, times, numeric, flags)
                else:
                    self.rules.replay(series, times, numeric)
                self._qc_dirty.update(np.unique(series).tolist())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._folder is not None:
            self._folder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._folder
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        elif self._writer_conn is not None:
            self._writer_conn.close()
        self._readers.shutdown(wait=True)
        self._watch.stop()
        for conn in self._reader_conns:
            conn.close()

    # -- the writer -----------------------------------------------------------------------------

    def _writer(self) -> None:
        assert self._loop is not None
        held: list[_Job | None] = []  # taken from the queue, not a member of the group
        while True:
            try:
                job = held.pop() if held else self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                self._follow_unlocked()
                if self._qc_own:
                    self._checkpoint_qc()
                continue
            if job is None:
                if self._qc_own:
                    self._checkpoint_qc()
                break
            jobs = [job]
            rows = job.rows
            while rows and len(jobs) < GROUP_JOBS and rows < GROUP_ROWS:  # appends waiting
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None or not more.rows:
                    held.append(more)
                    break
                jobs.append(more)
                rows += more.rows
            if self._followed:  # another node writes: read its rows before taking the lock
                self._follow_unlocked()
            started = time.perf_counter()
            try:
                if len(jobs) == 1:
                    self._one(job)
                else:
                    self._group(jobs)
            finally:
                self.write_seconds += time.perf_counter() - started
            if self._writer_head - self._qc_checkpointed >= CHECKPOINT_ROWS:
                self._checkpoint_qc()
        if self._writer_conn is not None:
            self._writer_conn.close()

    def _one(self, job: _Job) -> None:
        """Run a job in a transaction of its own and answer its caller."""
        assert self._loop is not None
        try:
            done = self._run(job.fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self._loop.call_soon_threadsafe(_fail, job.fut, exc)
            return
        self._committed(done.tx, done.result, done.last_seq, job.fut)

    def _committed(self, tx: Tx, result: Any, last_seq: int, fut: asyncio.Future[Any]) -> None:
        """After the commit of ``tx``: the registry, the hooks, the events, the batches, and
        the caller's answer, in that order."""
        assert self._loop is not None
        loop = self._loop
        events = tx.events
        self.registry.apply_all(events[tx.applied :])  # the registry follows what committed
        for hook in tx.after_commit:
            hook()
        if events and self.on_events is not None:  # before the batches that need them
            loop.call_soon_threadsafe(
                self.on_events, last_seq - len(events) + 1, last_seq, list(events)
            )
        for batch in tx.publish:
            loop.call_soon_threadsafe(self._published, batch)
        loop.call_soon_threadsafe(_succeed, fut, result)

    def _group(self, jobs: list[_Job]) -> None:
        """Appends that waited together, in one transaction: one log lock, one head, one
        commit flush; each numbered after the one before (contiguous cursors, in queue
        order), each answered after the shared commit.

        An append refuses a batch (a conflict, a deleted variable) before it writes anything
        (``_append``), so a refused one is answered alone and the others go on. Any other
        failure rolls the whole group back (each append's in-memory changes undone, last
        first); an unreachable store answers every caller 503, anything else runs each
        append again in a transaction of its own, so one bad batch fails alone."""
        assert self._loop is not None
        loop = self._loop

        def run(tx: Tx) -> list[tuple[Tx, Any, BaseException | None, int]]:
            out: list[tuple[Tx, Any, BaseException | None, int]] = []
            head = tx.head
            for job in jobs:
                sub = Tx(tx.conn)
                sub.head = head
                try:
                    result = job.fn(sub)
                except StreamgaugeError as exc:  # refused before it wrote anything
                    for undo in reversed(sub.on_rollback):
                        undo()
                    out.append((sub, None, exc, 0))
                    continue
                last_seq = 0
                if sub.events:  # numbered after the events of the appends before it
                    last_seq = metadata.write_events(sub, sub.events, int(time.time() * 1000))
                tx.on_rollback[:0] = sub.on_rollback  # undone last first if the group fails
                head = sub.head
                out.append((sub, result, None, last_seq))
            if head != tx.head:
                tx.new_head = head
            return out

        try:
            done = self._run(run)
        except Unavailable as exc:
            for job in jobs:
                loop.call_soon_threadsafe(_fail, job.fut, exc)
            return
        except BaseException:  # noqa: BLE001 - each alone: the one at fault fails by itself
            log.debug("a group of appends failed; running each alone", exc_info=True)
            for job in jobs:
                self._one(job)
            return
        for (sub, result, refused, last_seq), job in zip(done.result, jobs, strict=True):
            if refused is not None:
                loop.call_soon_threadsafe(_fail, job.fut, refused)
            else:
                self._committed(sub, result, last_seq, job.fut)

    def _run(self, fn: Callable[[Tx], Any]) -> _Done:
        """Run ``fn`` in one transaction on the writer connection (connecting first if the
        last one was lost); connection errors become ``Unavailable``.

        A connection that went stale while idle (PostgreSQL restarted, a network cut since
        the last write) fails at the transaction's first statement, before anything of ``fn``
        ran: the job is run once more on a new connection rather than answered 503 when the
        store is back. A failure later in the transaction is never retried here (the commit
        may have happened): the caller gets 503 and may send again (ingest is idempotent)."""
        try:
            return self._run_once(fn)
        except _Stale as stale:
            log.info("the store's writer connection was stale (%s); connecting again", stale)
            return self._run_once(fn, retry=False)

    def _run_once(self, fn: Callable[[Tx], Any], retry: bool = True) -> _Done:
        tx: Tx | None = None
        locked = False
        reused = self._writer_conn is not None and not self._writer_conn.closed
        try:
            if self._writer_conn is None or self._writer_conn.closed:
                self._writer_conn = self._connect()
            conn = self._writer_conn
            tx = Tx(conn)
            last_seq = 0
            with self._watch.busy(conn):
                try:
                    # Every write of every node, one at a time, in commit order: log cursors
                    # and event sequence numbers are numbered from ``state`` under this lock.
                    tx.head = int(_last_row(conn.execute(BEGIN_SQL))[0])
                    locked = True
                    result = fn(tx)
                    if tx.events:  # in the same transaction: a change and its events, or neither
                        last_seq = metadata.write_events(tx, tx.events, int(time.time() * 1000))
                    commit = b"COMMIT"
                    if tx.new_head is not None:  # int: nothing to quote
                        commit = b"UPDATE state SET value = %d WHERE key = 'head'; COMMIT" % (
                            tx.new_head
                        )
                    conn.execute(commit)
                except BaseException:
                    _rollback(conn)
                    raise
            return _Done(tx, result, last_seq)
        except BaseException as exc:
            if tx is not None:
                for undo in tx.on_rollback:
                    undo()
            if isinstance(exc, psycopg.errors.UniqueViolation):
                # Another node made the same id first (this node's registry had not heard yet).
                raise Conflict(
                    "an item with this id was just created by another node",
                    [{"reason": first_line(exc)}],
                ) from exc
            if isinstance(exc, psycopg.Error):
                if is_connection_error(exc) or (
                    self._writer_conn is not None and self._writer_conn.broken
                ):
                    self._drop_writer()
                    if (
                        retry
                        and reused
                        and not locked
                        and isinstance(exc, psycopg.OperationalError)
                    ):
                        raise _Stale(unreachable(exc)) from exc
                    raise unreachable(exc) from exc
            raise

    def _drop_writer(self) -> None:
        if self._writer_conn is not None:
            try:
                self._writer_conn.close()
            finally:
                self._writer_conn = None

    def _published(self, batch: Batch) -> None:
        self._head = max(self._head, batch.last)
        self._publish(batch)

    def _follow(self, conn: Conn, head: int) -> None:
        """Move the latest times and the QC state past the rows other processes committed
        after ``_writer_head`` up to ``head`` (``qcshared``), in cursor order."""
        self._followed = head > self._writer_head
        if not self._followed:
            return
        reg = self.registry
        for covered, series, times, numeric, flags in qcshared.committed(
            conn, self._writer_head, head
        ):
            if len(series):
                reg.restore_latest(*qcshared.latest_of(series, times))
                self.rules.advance(series, times, numeric, flags)
                self._qc_dirty.update(np.unique(series).tolist())
            self._writer_head = covered  # applied: never applied twice, whatever fails next

    def _follow_unlocked(self) -> None:
        """``_follow`` up to the committed head, without the log lock (the committed prefix
        does not change); a failure is left to the next transaction to find."""
        conn = self._writer_conn
        if conn is None or conn.closed:
            return
        try:
            with self._watch.busy(conn):
                self._follow(conn, _state(conn, "head"))
        except psycopg.Error as exc:
            if is_connection_error(exc) or conn.broken:
                self._drop_writer()
            log.debug("following the log failed: %r", exc)

    def _checkpoint_qc(self) -> None:
        """Write the QC state of the series changed since this process's last checkpoint,
        current at the head (``qc_cursor``), after following the log to it. A process that only
        followed skips it while another's checkpoint is recent."""

        def run(tx: Tx) -> None:
            head = tx.head
            self._follow(tx.conn, head)
            stored = _state(tx.conn, "qc_cursor")
            if not self._qc_own and head - stored < CHECKPOINT_ROWS:
                self._qc_checkpointed = stored
                return
            dirty = np.fromiter(self._qc_dirty, np.int64, len(self._qc_dirty))
            qcshared.write(tx, self.registry.qc_state, dirty)
            tx.execute("UPDATE state SET value = %s WHERE key = 'qc_cursor'", (head,))

            def done() -> None:
                self._qc_dirty.clear()
                self._qc_own = False
                self._qc_checkpointed = head

            tx.after_commit.append(done)

        try:
            done = self._run(run)
        except (psycopg.Error, StreamgaugeError):
            log.warning("checkpointing the QC state failed; will retry", exc_info=True)
            return
        for hook in done.after_commit:
            hook()

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one write transaction on the writer thread."""
        if self._closed or self._loop is None:
            raise Unavailable("the store is closed")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(fn, fut, 0))
        return await fut

    # -- readers --------------------------------------------------------------------------------

    def _reader(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    def _read_in_thread(self, fn: Callable[[Conn], T]) -> T:
        """``fn`` on this thread's reader connection. A read is run once more on a new
        connection when a connection made earlier fails (it went stale while idle: a read
        changes nothing, so running it again is safe); a new one that fails is 503."""
        reused = getattr(self._local, "conn", None) is not None
        try:
            return self._read_once(fn)
        except Unavailable:
            if not reused:
                raise
            return self._read_once(fn)

    def _read_once(self, fn: Callable[[Conn], T]) -> T:
        try:
            conn = self._reader()
            with self._watch.busy(conn):
                return fn(conn)
        except psycopg.Error as exc:
            bad: Conn | None = getattr(self._local, "conn", None)
            if bad is not None and (is_connection_error(exc) or bad.broken):
                bad.close()
                self._local.conn = None
                if bad in self._reader_conns:
                    self._reader_conns.remove(bad)
                raise unreachable(exc) from exc
            raise

    async def read(self, fn: Callable[[Conn], T], *, key: object = None) -> T:
        """Run ``fn`` on a pooled reader connection (autocommit: each statement sees every
        transaction committed before it), reads taking turns by ``key`` (``FairGate``)."""
        if self._closed or self._loop is None:
            raise Unavailable("the store is closed")
        await self._gate.acquire(key)
        fut = self._loop.run_in_executor(self._readers, self._read_in_thread, fn)
        fut.add_done_callback(self._read_done)
        return await asyncio.shield(fut)

    def _read_done(self, fut: asyncio.Future[Any]) -> None:
        self._gate.release()
        if not fut.cancelled():
            fut.exception()

    # -- the log --------------------------------------------------------------------------------

    async def append(self, columns: IngestColumns) -> AppendResult:
        """Append a batch; appends waiting together share a transaction (``_group``)."""
        if self._closed or self._loop is None:
            raise Unavailable("the store is closed")
        fut: asyncio.Future[AppendResult] = self._loop.create_future()
        rows = max(1, len(columns.times))
        self._queue.put(_Job(lambda tx: self._append(tx, columns), fut, rows))
        return await fut

    async def refresh_gone(self) -> None:
        """Read ``gone`` again: the node holding the work lease runs retention, so a resume on
        this node must see what that node removed (a 410 instead of silent loss)."""
        stored = await self.read(retention.load_gone)
        for project_pk, top in stored.items():
            self.gone[project_pk] = max(self.gone.get(project_pk, 0), top)

    async def settle_summaries(self) -> None:
        """Fold every row not summarized yet into the summaries now (waiting for a fold of
        another node to finish first)."""

        def run(conn: Conn) -> None:
            with conn.transaction():
                summaries.lock(conn)
                summaries.fold(conn)

        await self.read(run, key=_FOLD_KEY)

    async def _fold_loop(self) -> None:
        """Every ``FOLD_SECONDS``, fold the rows not summarized yet into the hour summaries
        when the log has not moved since the last look or ``FOLD_LAG`` rows wait,
        ``FOLD_STEP`` rows a transaction, on a reader connection: off the append path, so an
        append pays nothing for the summaries. Every node runs it; ``SUMMARY_LOCK`` (tried,
        not waited for) lets one fold at a time. A failure is logged and retried: reads
        summarize what is not folded yet."""
        failing = False
        last_head = -1
        while not self._closed:
            try:
                done, head = await self.read(summaries.progress, key=_FOLD_KEY)
                quiet, last_head = head == last_head, head
                folded = 0
                if head > done and (quiet or head - done >= FOLD_LAG):
                    folded = await self.read(_fold_step, key=_FOLD_KEY)
            except Exception as exc:  # noqa: BLE001 - the task must outlive any one failure
                if not failing:  # once per outage
                    log.warning("folding the log into the hour summaries failed: %r", exc)
                failing = True
                folded = 0
            else:
                if failing:
                    log.info("folding the log into the hour summaries again")
                failing = False
            if folded < FOLD_STEP:
                await asyncio.sleep(FOLD_SECONDS)

    def index_lag(self) -> int:
        """Always 0: PostgreSQL keeps ``obs_series_time`` in each write's transaction."""
        return 0

    async def append_with(
        self, metadata: Callable[[Tx], object], columns: Callable[[], IngestColumns]
    ) -> AppendResult:
        """Metadata writes and the batch ``columns`` builds after them, in one transaction
        (``store.api.Store.append_with``): the metadata's device and variable puts are applied
        to the registry early (so the rows resolve against them) and undone if it fails."""

        def run(tx: Tx) -> AppendResult:
            metadata(tx)
            reg = self.registry
            undo: list[MetaEvent] = []
            tx.on_rollback.append(functools.partial(_undo, reg, undo))
            for event in tx.events[tx.applied :]:
                undo.append(_inverse(reg, event))
                reg.apply(event)
                tx.applied += 1
            return self._append(tx, columns())

        return await self.write(run)

    def _append(self, tx: Tx, c: IngestColumns) -> AppendResult:
        reg = self.registry
        rules = self.rules
        n = len(c.times)
        # The cluster-wide commit order: ``_run`` read the head after the log lock was granted,
        # so it sees every append committed before.
        head = tx.head
        self._follow(tx.conn, head)  # another process wrote: its rows move our latest and QC
        series, new_series = self._resolve_series(tx, c)
        screen = rules.screen(series, c.times, c.values, reg.latest[series])
        found = (
            _probe(tx.conn, series[screen.probe], c.times[screen.probe])
            if len(screen.probe)
            else {}
        )
        verdict = rules.settle(screen, series, c.times, c.values, found)
        if verdict.conflicts:
            raise Conflict(
                f"{len(verdict.conflicts)} row(s) conflict with stored observations; "
                "nothing was stored",
                verdict.conflicts,
            )
        # Nothing was written so far: a refused batch leaves the transaction as it found it
        # (``_group`` goes on with the next append).
        if new_series:
            self._insert_series(tx, new_series)
        idx = verdict.keep
        accepted = len(idx)
        dups = verdict.duplicates
        if not accepted:
            return AppendResult(0, dups, None, None)
        first = head + 1
        last = head + accepted
        cursors = np.arange(first, last + 1, dtype=np.int64)
        s_keep, t_keep = series[idx], c.times[idx]
        values = [c.values[i] for i in idx.tolist()] if accepted != n else c.values
        numeric = floats(values)
        q_keep = rules.flag(s_keep, t_keep, numeric)
        received = int(time.time() * 1000)
        _copy_rows(tx.conn, cursors, s_keep, t_keep, values, numeric, q_keep, received)
        tx.head = tx.new_head = last  # stored with the commit (``_run``)
        self._writer_head = last  # the next append of a group continues from here
        tx.on_rollback.append(functools.partial(setattr, self, "_writer_head", head))
        # The QC state moves now and is undone if the transaction fails (a commit that failed
        # only on its reply is followed from the log by the next append: ``_follow``).
        moved = np.unique(s_keep)
        before = qcshared.saved(reg.qc_state, moved)
        tx.on_rollback.append(functools.partial(qcshared.restore, reg.qc_state, moved, before))
        rules.advance(s_keep, t_keep, numeric, q_keep)
        self._qc_dirty.update(moved.tolist())
        self._qc_own = True

        def advance() -> None:
            self._writer_head = last
            np.maximum.at(reg.latest, s_keep, t_keep)

        tx.after_commit.append(advance)
        tx.publish.append(
            Batch.committed(c.project_pk, cursors, s_keep, t_keep, values, q_keep, numeric)
        )
        return AppendResult(accepted, dups, first, last)

    def _resolve_series(
        self, tx: Tx, c: IngestColumns
    ) -> tuple[npt.NDArray[np.int64], list[tuple[int, int, int, int, int]]]:
        """Series pk of every row, and the series created (``_insert_series`` stores them
        once the batch is accepted). A series this process does not know is looked up in the
        database (another node may have created it) and otherwise created with a pk from
        ``state.series_end`` (read under the log lock and moved in the same transaction, so
        nodes never give one pk twice; never reused, as in the embedded store)."""
        reg = self.registry
        keys = c.variable_pks * 1024 + c.sets
        uniq, inverse = np.unique(keys, return_inverse=True)
        pks = np.empty(len(uniq), np.int64)
        unknown: list[tuple[int, int, int]] = []  # (position, variable pk, set)
        created: list[tuple[int, int, int, int, int]] = []
        for j, key in enumerate(uniq.tolist()):
            var_pk, set_ = divmod(key, 1024)
            pk = reg.series.get((var_pk, set_))
            if pk is None:
                unknown.append((j, var_pk, set_))
            else:
                pks[j] = pk
        if unknown:
            stored = {
                (int(v), int(s)): int(pk)
                for pk, v, s in tx.execute(
                    "SELECT pk, variable_pk, set_ FROM series "
                    "WHERE (variable_pk, set_) IN (SELECT * FROM unnest(%s::int8[], %s::int8[]))",
                    ([u[1] for u in unknown], [u[2] for u in unknown]),
                )
            }
            end = max(reg.series_end, _state(tx.conn, "series_end"))
            added: list[MetaEvent] = []
            for j, var_pk, set_ in unknown:
                var = reg.variables_by_pk.get(var_pk)
                if var is None:
                    raise NotFound("a variable of this batch was deleted while it was written")
                dev = reg.devices_by_pk[var.device_pk]
                found = stored.get((var_pk, set_))
                pk = end if found is None else found
                event = SeriesAdded(pk, dev.project_pk, dev.pk, var_pk, set_, dev.id, var.id)
                if found is None:  # new: its event is written with this transaction
                    end += 1
                    created.append((pk, dev.project_pk, dev.pk, var_pk, set_))
                    tx.events.append(event)
                added.append(event)
                pks[j] = pk
            # Applied now (``Registry.apply_all``: a column at a time), so the batch's QC has
            # their limits (and their pks are taken); a new one is applied again after the
            # commit (a no-op) or undone if it fails. One another node made is stored with its
            # event already (the meta channel brings it here too: a no-op then).
            if created:
                tx.on_rollback.append(functools.partial(_forget_series, reg, created))
            reg.apply_all(added)
        out: npt.NDArray[np.int64] = pks[inverse.reshape(-1)]
        return out, created

    @staticmethod
    def _insert_series(tx: Tx, created: list[tuple[int, int, int, int, int]]) -> None:
        """Store the series ``_resolve_series`` created, and move ``state.series_end``."""
        tx.execute(
            "INSERT INTO series (pk, project_pk, device_pk, variable_pk, set_) "
            "SELECT * FROM unnest(%s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[])",
            tuple(list(col) for col in zip(*created, strict=True)),
        )
        tx.execute(
            "UPDATE state SET value = greatest(value, %s) WHERE key = 'series_end'",
            (max(row[0] for row in created) + 1,),
        )

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

        def run(conn: Conn) -> tuple[Summaries, Points]:
            with _snapshot(conn):
                return summaries.read(conn, series, lo_ms, hi_ms, qc_remove, plan)

        return await self.read(run, key=project_pk)

    async def latest_rows(self, lo: int = 0, hi: int | None = None) -> Batch:
        """The newest stored row (its greatest time) of every series whose pk is in
        ``[lo, hi)``, in series order: one index seek per series."""
        top = hi if hi is not None else 1 << 62

        def run(conn: Conn) -> Batch:
            with _snapshot(conn):
                rows = conn.execute(
                    "SELECT o.cursor, o.series, o.time, o.num, o.txt, o.qc "
                    "FROM unnest(%s::int8[]) s(pk) CROSS JOIN LATERAL ("
                    "SELECT * FROM obs WHERE series = s.pk ORDER BY time DESC LIMIT 1) o "
                    "ORDER BY o.series",
                    (_log_series(conn, lo, top),),
                ).fetchall()
            return _batch(0, rows)

        return await self.read(run)

    async def newest_passing(self, series: Sequence[int], qc_remove: int) -> Batch:
        """Each of ``series``' newest row without a QC flag of ``qc_remove`` (series order)."""

        def run(conn: Conn) -> Batch:
            rows = conn.execute(
                "SELECT o.cursor, o.series, o.time, o.num, o.txt, o.qc "
                "FROM unnest(%s::int8[]) WITH ORDINALITY s(pk, i) CROSS JOIN LATERAL ("
                "SELECT * FROM obs WHERE series = s.pk AND (qc & %s) = 0"
                " ORDER BY time DESC LIMIT 1) o ORDER BY s.i",
                (list(series), qc_remove),
            ).fetchall()
            return _batch(0, rows)

        return await self.read(run)

    async def expired(self, cutoffs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (series, cutoff ms) pairs of ``cutoffs`` having rows older than the cutoff."""
        return await self.read(lambda conn: retention.expired(conn, cutoffs))

    async def expire(
        self,
        project_pk: int,
        cutoffs: Sequence[tuple[int, int]],
        *,
        keep_summaries: bool,
        max_rows: int,
    ) -> tuple[int, bool]:
        """One bounded step of retention (one write transaction): remove up to ``max_rows``
        rows of the project's series older than their cutoff. Returns (rows removed, done)."""

        def run(tx: Tx) -> tuple[int, bool]:
            removed, top, done = retention.expire_step(
                tx, project_pk, cutoffs, keep_summaries=keep_summaries, max_rows=max_rows
            )
            if top:

                def moved() -> None:
                    self.gone[project_pk] = max(self.gone.get(project_pk, 0), top)

                tx.after_commit.append(moved)
            return removed, done

        return await self.write(run)

    async def read_log(
        self, after: int, upto: int, limit: int, *, project_pk: int | None = None
    ) -> Batch:
        """The log's rows in ``(after, upto]``, every project's (``project_pk`` is a hint the
        SQLite backend uses to skip other projects' ranges; the caller's selection filters)."""

        def run(conn: Conn) -> Batch:
            return _batch(
                project_pk if project_pk is not None else 0,
                conn.execute(
                    "SELECT cursor, series, time, num, txt, qc FROM obs "
                    "WHERE cursor > %s AND cursor <= %s ORDER BY cursor LIMIT %s",
                    (after, upto, limit),
                ).fetchall(),
            )

        return await self.read(run)

    async def cursor_before(self, received_ms: int) -> int:
        """The last cursor committed before ``received_ms`` (0: none): a binary search over
        the log by primary key (commit times follow cursor order)."""

        def run(conn: Conn) -> int:
            row = conn.execute("SELECT value FROM state WHERE key = 'head'").fetchone()
            lo, hi = 0, int(row[0]) if row else 0
            while lo < hi:
                mid = (lo + hi + 1) // 2
                got = conn.execute(
                    "SELECT cursor, received FROM obs WHERE cursor >= %s ORDER BY cursor LIMIT 1",
                    (mid,),
                ).fetchone()
                if got is not None and got[1] < received_ms:
                    lo = max(mid, int(got[0]))
                else:
                    hi = mid - 1
            return lo

        return await self.read(run)

    async def history(self, query: HistoryQuery) -> Batch:
        def run(conn: Conn) -> Batch:
            sql, params = _history_sql(query)
            return _batch(query.project_pk, conn.execute(sql.encode(), params).fetchall())

        return await self.read(run, key=query.project_pk)

    async def next_time(self, query: HistoryQuery) -> int | None:
        """The time of the first row of ``query`` (QC removal aside), or None: one index seek
        per series."""

        def run(conn: Conn) -> int | None:
            sql, params = _next_time_sql(query)
            row = conn.execute(sql.encode(), params).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self.read(run, key=query.project_pk)

    async def history_judged(
        self, query: HistoryQuery, expr: Expr
    ) -> tuple[Batch, tuple[int, int] | None, int]:
        """One page of ``query`` judged by ``expr`` per station report (see the embedded
        store's docstring): the candidates, the project's rows at their times and the judgement
        in one statement, the expression compiled by ``filtersql.to_sql``. The station of each
        series comes from the registry as two array parameters (no temporary table)."""
        keys = self._report_keys()

        def run(conn: Conn) -> tuple[Batch, tuple[int, int] | None, int]:
            sql, params = _judged_history_sql(query, expr, keys)
            rows = conn.execute(sql.encode(), params).fetchall()
            last = (int(rows[-1][2]), int(rows[-1][0])) if rows else None
            passing = [r[:6] for r in rows if r[6]]
            return _batch(query.project_pk, passing), last, len(rows)

        return await self.read(run, key=query.project_pk)

    def _report_keys(self) -> tuple[list[int], list[int], list[str]]:
        """(series, station, sensor) of every series of the registry: a station is a site, or
        a device without one (as a negative number)."""
        return self.registry.series_stations()


@dataclasses.dataclass(slots=True)
class _Job:
    fn: Callable[[Tx], Any]
    fut: asyncio.Future[Any]
    rows: int  # an append's rows (it may share a transaction: ``PgStore._group``), else 0


class _Stale(Exception):
    """The writer connection failed before its transaction did anything (``PgStore._run``)."""

    def __init__(self, unavailable: Unavailable) -> None:
        super().__init__(unavailable.message)
        self.unavailable = unavailable


@dataclasses.dataclass(slots=True)
class _Done:
    tx: Tx
    result: Any
    last_seq: int = 0  # the last metadata event's sequence number (0: no event)

    @property
    def after_commit(self) -> list[Callable[[], None]]:
        return self.tx.after_commit

    @property
    def publish(self) -> list[Batch]:
        return self.tx.publish


def _forget_series(reg: ReadModel, created: list[tuple[int, int, int, int, int]]) -> None:
    for row in created:
        reg.apply(SeriesDropped(row[0]))


def _log_series(conn: Conn, lo: int = 0, hi: int = 1 << 62) -> list[int]:
    """Every series in ``[lo, hi)`` the log has rows of (deleted series' too), by a skip scan
    of the (series, time) index: one index seek per series, never a scan of the log."""
    return [
        int(r[0])
        for r in conn.execute(
            "WITH RECURSIVE s(series) AS ("
            "(SELECT series FROM obs WHERE series >= %s ORDER BY series LIMIT 1) UNION ALL "
            "SELECT (SELECT o.series FROM obs o WHERE o.series > s.series"
            " ORDER BY o.series LIMIT 1) FROM s WHERE s.series < %s) "
            "SELECT series FROM s WHERE series IS NOT NULL AND series < %s",
            (lo, hi, hi),
        )
    ]


@contextlib.contextmanager
def _snapshot(conn: Conn) -> Iterator[None]:
    """One read snapshot for the statements inside (a read-only repeatable-read
    transaction on the autocommit reader connection)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _fold_step(conn: Conn) -> int:
    """One fold of up to ``FOLD_STEP`` rows if no other node is folding; the rows folded."""
    with conn.transaction():
        if not summaries.lock(conn, wait=False):
            return 0
        first, last = summaries.fold(conn, step=FOLD_STEP)
    return last - first


def _last_row(cur: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The row of the last statement of a simple query of several."""
    while cur.nextset():
        pass
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row


def _rollback(conn: Conn) -> None:
    """End the open transaction of a write that failed (nothing to do if the connection is
    gone: the server rolls it back)."""
    if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute(b"ROLLBACK")
    except psycopg.Error as exc:
        log.debug("rolling back failed: %r", exc)


def _state(conn: Conn, key: str) -> int:
    row = conn.execute("SELECT value FROM state WHERE key = %s", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def _succeed(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _copy_rows(
    conn: Conn,
    cursors: npt.NDArray[np.int64],
    series: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    values: list[Any],
    numeric: npt.NDArray[np.float64],
    qc: npt.NDArray[np.int64],
    received: int,
) -> None:
    """Append rows to the log with binary COPY (a number goes to ``num``, a string to
    ``txt``). A batch of numbers only is encoded by numpy in one buffer; others row by row."""
    with conn.cursor() as cur, cur.copy(COPY_SQL.encode()) as copy:
        if all(type(v) is float for v in values):
            copy.write(_copy_numbers(cursors, series, times, numeric, qc, received))
            return
        copy.set_types(COPY_TYPES)
        write = copy.write_row
        for row in zip(
            cursors.tolist(),
            series.tolist(),
            times.tolist(),
            [v if type(v) is float else None for v in values],
            [v if type(v) is str else None for v in values],
            qc.tolist(),
            [received] * len(values),
            strict=True,
        ):
            write(row)


# One row of ``COPY_SQL`` in PostgreSQL's binary format with a number and no text: the field
# count, then each field's byte length and big-endian value (length -1: NULL, no value).
_COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("cursor_len", ">i4"),
        ("cursor", ">i8"),
        ("series_len", ">i4"),
        ("series", ">i8"),
        ("time_len", ">i4"),
        ("time", ">i8"),
        ("num_len", ">i4"),
        ("num", ">f8"),
        ("txt_len", ">i4"),
        ("qc_len", ">i4"),
        ("qc", ">i8"),
        ("received_len", ">i4"),
        ("received", ">i8"),
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"


def _copy_numbers(
    cursors: npt.NDArray[np.int64],
    series: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    numeric: npt.NDArray[np.float64],
    qc: npt.NDArray[np.int64],
    received: int,
) -> bytes:
    """The whole binary COPY stream of rows whose values are all numbers."""
    rows = np.empty(len(cursors), _COPY_ROW)
    rows["fields"] = len(COPY_TYPES)
    for name in ("cursor", "series", "time", "num", "qc", "received"):
        rows[f"{name}_len"] = 8
    rows["txt_len"] = -1
    rows["cursor"], rows["series"], rows["time"] = cursors, series, times
    rows["num"], rows["qc"], rows["received"] = numeric, qc, received
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _probe(
    conn: Conn, series: npt.NDArray[np.int64], times: npt.NDArray[np.int64]
) -> dict[tuple[int, int], Any]:
    """The stored value of each (series, time) of the probe that is stored."""
    return {
        (int(s), int(t)): (txt if txt is not None else num)
        for s, t, num, txt in conn.execute(
            "SELECT o.series, o.time, o.num, o.txt FROM unnest(%s::int8[], %s::int8[]) "
            "AS k(series, time) JOIN obs o ON o.series = k.series AND o.time = k.time",
            (series.tolist(), times.tolist()),
        )
    }


def _batch(project_pk: int, rows: Sequence[Sequence[Any]]) -> Batch:
    """A batch of rows ``(cursor, series, time, num, txt, qc)``."""
    if not rows:
        z = np.zeros(0, np.int64)
        return Batch(project_pk, z, z.copy(), z.copy(), [], z.copy())
    cursors, series, times, nums, txts, qc = zip(*rows, strict=True)
    return Batch(
        project_pk,
        np.array(cursors, np.int64),
        np.array(series, np.int64),
        np.array(times, np.int64),
        [t if t is not None else v for v, t in zip(nums, txts, strict=True)],
        np.array(qc, np.int64),
    )


def _series_sql(q: HistoryQuery) -> tuple[str, list[Any]]:
    """The series a read covers: the project's, or one array parameter."""
    if q.series is None:
        return "SELECT pk FROM series WHERE project_pk = %s", [q.project_pk]
    return "SELECT unnest(%s::int8[])", [list(q.series)]


def _conditions(q: HistoryQuery, extra: Sequence[str] = ()) -> tuple[list[str], list[Any]]:
    """The row conditions of ``q`` as templates over ``{t}`` (time), ``{c}`` (cursor) and
    ``{q}`` (qc); the resume key gives a range as well as the keyset condition, so each
    series' index is entered at the key."""
    conds: list[str] = []
    cparams: list[Any] = []
    if q.start is not None:
        conds.append("{t} >= %s")
        cparams.append(q.start)
    if q.end is not None:
        conds.append("{t} < %s")
        cparams.append(q.end)
    if q.after is not None:
        conds.append("{t} >= %s AND ({t} > %s OR {c} > %s)")
        cparams += [q.after[0], q.after[0], q.after[1]]
    if q.times is not None:
        conds.append("{t} = ANY(%s::int8[])")
        cparams.append(list(q.times))
    conds.extend(extra)  # the caller's code over its CTEs, never user text
    if q.qc_remove:
        conds.append("({q} & %s) = 0")
        cparams.append(q.qc_remove)
    return conds, cparams


def _history_sql(
    q: HistoryQuery, *, ordered: bool = True, extra: Sequence[str] = ()
) -> tuple[str, list[Any]]:
    series_sql, sparams = _series_sql(q)
    conds, cparams = _conditions(q, extra)
    cond = "".join(" AND " + x.format(t="time", c="cursor", q="qc") for x in conds)
    sql = f"SELECT cursor, series, time, num, txt, qc FROM obs WHERE series IN ({series_sql}){cond}"
    params = [*sparams, *cparams]
    if not ordered:
        return sql, params
    return sql + " ORDER BY time, cursor LIMIT %s", [*params, q.limit]


def _next_time_sql(q: HistoryQuery) -> tuple[str, list[Any]]:
    series_sql, sparams = _series_sql(q)
    conds, cparams = _conditions(dataclasses.replace(q, qc_remove=0))
    cond = "".join(" AND " + x.format(t="o.time", c="o.cursor", q="") for x in conds)
    sql = (
        "SELECT min(t) FROM ("
        "SELECT (SELECT o.time FROM obs o "
        f"WHERE o.series = s.pk{cond} ORDER BY o.time LIMIT 1) AS t "
        f"FROM ({series_sql}) AS s(pk)) x"
    )
    return sql, [*cparams, *sparams]


def _judged_history_sql(
    q: HistoryQuery, expr: Expr, keys: tuple[list[int], list[int], list[str]]
) -> tuple[str, list[Any]]:
    """The candidate page ``q``, each row with whether its station report satisfies ``expr``
    (see ``PgStore.history_judged``). Every user value is a bound parameter."""
    cand_sql, cand_params = _history_sql(q)
    population = dataclasses.replace(q, series=None, start=None, end=None, after=None)
    rows_sql, rows_params = _history_sql(
        population, ordered=False, extra=["{t} IN (SELECT time FROM cand)"]
    )
    judged, expr_params = to_sql(expr, report_sql="o.report", table="report_rows")
    sql = (
        "WITH report_keys AS MATERIALIZED (SELECT * FROM "
        "unnest(%s::int8[], %s::int8[], %s::text[]) AS k(series, station, sensor)), "
        f"cand AS MATERIALIZED ({cand_sql}), "
        f"pop AS MATERIALIZED ({rows_sql}), "
        "report_rows AS MATERIALIZED (SELECT k.station::text || ':' || p.time AS report,"
        " k.sensor AS sensor, p.num AS num"
        " FROM pop p JOIN report_keys k ON k.series = p.series) "
        f"SELECT cursor, series, time, num, txt, qc, coalesce(({judged}), false) AS judged "
        "FROM (SELECT c.cursor, c.series, c.time, c.num, c.txt, c.qc,"
        " coalesce(k.station, -1)::text || ':' || c.time AS report"
        " FROM cand c LEFT JOIN report_keys k ON k.series = c.series) o "
        "ORDER BY time, cursor"
    )
    return sql, [*keys, *cand_params, *rows_params, *expr_params]
