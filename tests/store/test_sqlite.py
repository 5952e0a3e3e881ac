"""The embedded store: cursors in commit order, cheap duplicate checks, sealed-chunk index,
history reads across sealed and unsealed rows, and a restart that rebuilds its state."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import Conflict, NotFound
from streamgauge.domain.events import SeriesAdded
from streamgauge.domain.log import HistoryQuery, IngestColumns
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn
from streamgauge.store.sqlite import metadata
from streamgauge.store.sqlite.store import SqliteStore, index_path
from tests.store.rules import log_rules


async def open_store(path: Path, published: list[Batch], chunk: int = 8) -> SqliteStore:
    store = SqliteStore(path / "db", index_chunk_rows=chunk, rules=log_rules(), registry=Registry())
    await store.open(published.append)
    return store


async def seed(store: SqliteStore) -> tuple[int, list[int]]:
    reg = store.registry
    [proj] = await store.write(
        lambda tx: metadata.create_projects(
            tx, reg, [ProjectIn(id="p")], skip_existing=False, admin_account=None
        )
    )
    prec = reg.projects["p"]
    devs = [
        DeviceIn(id=f"d{i}", variables=[VariableIn(name="t"), VariableIn(name="w")])
        for i in range(2)
    ]
    await store.write(lambda tx: metadata.create_devices(tx, reg, prec, devs, skip_existing=False))
    var_pks = sorted(v.pk for v in reg.variables_by_pk.values())
    return prec.pk, var_pks


def cols(
    project_pk: int, var_pks: list[int], times: list[int], values: list[float | str | None]
) -> IngestColumns:
    n = len(times)
    return IngestColumns(
        project_pk,
        np.array(var_pks, np.int64),
        np.ones(n, np.int64),
        np.array(times, np.int64),
        list(values),
        np.zeros(n, np.int64),
    )


def series_of(store: SqliteStore, device: str, variable: str | None = None) -> tuple[int, ...]:
    reg = store.registry
    return tuple(
        s.pk
        for s in reg.series_by_pk.values()
        if s.device_id == device and variable in (None, s.variable_id)
    )


async def test_cursors_follow_commit_order_and_batches_are_published(tmp_path: Path) -> None:
    published: list[Batch] = []
    store = await open_store(tmp_path, published)
    try:
        pk, v = await seed(store)
        r1 = await store.append(cols(pk, [v[0], v[1]], [1000, 1000], [1.0, 2.0]))
        r2 = await store.append(cols(pk, [v[0]], [2000], [3.0]))
        assert (r1.first_cursor, r1.last_cursor, r2.first_cursor, r2.last_cursor) == (1, 2, 3, 3)
        assert [b.cursors.tolist() for b in published] == [[1, 2], [3]]
        assert store.head == 3
    finally:
        await store.close()


async def test_rows_go_to_the_series_the_registry_has_for_their_key(tmp_path: Path) -> None:
    """The writer remembers the series of the keys it looked up; when the registry's series of
    a key changes without a metadata version bump (a replayed SeriesAdded giving the key a new
    pk), the next batch's rows go to the registry's series of the key now."""
    store = await open_store(tmp_path, [])
    try:
        pk, v = await seed(store)
        reg = store.registry
        await store.append(cols(pk, [v[0], v[1]], [1000, 1000], [1.0, 1.0]))  # created
        await store.append(cols(pk, [v[0], v[1]], [1500, 1500], [1.0, 1.0]))  # looked up
        old = reg.series[(v[0], 1)]
        rec = reg.series_by_pk[old]
        new = reg.series_end
        reg.apply(
            SeriesAdded(new, pk, rec.device_pk, v[0], 1, rec.device_id, rec.variable_id)
        )  # the same key again: the new pk wins
        assert reg.series[(v[0], 1)] == new
        other = reg.series[(v[1], 1)]
        await store.append(cols(pk, [v[0], v[1]], [2000, 2000], [2.0, 2.0]))
        log = await store.read_log(0, store.head, 10)
        assert log.series.tolist() == [old, other, old, other, new, other]
    finally:
        await store.close()


async def test_callers_are_answered_before_the_fan_out_their_commits_schedule(
    tmp_path: Path,
) -> None:
    """Every caller whose job has committed resumes before the fan-out round that handing its
    batch on scheduled (the hub's ``call_soon``), and finds its batch handed on (the head): the
    reply does not wait for the writes to every subscriber. Two jobs committed while the event
    loop was busy are answered together, both before the first round."""
    loop = asyncio.get_running_loop()
    order: list[str] = []

    def publish(batch: Batch) -> None:
        loop.call_soon(order.append, f"round {batch.last}")

    store = SqliteStore(tmp_path / "db", index_chunk_rows=8, rules=log_rules(), registry=Registry())
    await store.open(publish)
    try:
        pk, v = await seed(store)
        order.clear()

        async def ingest(t: int) -> None:
            r = await store.append(cols(pk, [v[0]], [t], [1.0]))
            order.append(f"answered {r.last_cursor} at head {store.head}")

        await ingest(1000)
        await asyncio.sleep(0)  # the round
        assert order == ["answered 1 at head 1", "round 1"]
        order.clear()
        tasks = [asyncio.create_task(ingest(t)) for t in (2000, 3000)]
        await asyncio.sleep(0)  # both queued
        deadline = time.monotonic() + 10
        while len(store._outbox) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)  # the loop busy: the writer commits both meanwhile
        await asyncio.gather(*tasks)
        await asyncio.sleep(0)
        assert order == [
            "answered 2 at head 3",
            "answered 3 at head 3",
            "round 2",
            "round 3",
        ]
    finally:
        await store.close()


async def test_duplicates_and_conflicts(tmp_path: Path) -> None:
    store = await open_store(tmp_path, [])
    try:
        pk, v = await seed(store)
        await store.append(cols(pk, [v[0], v[0]], [1000, 2000], [1.0, "x"]))
        again = await store.append(
            cols(pk, [v[0], v[0], v[0]], [1000, 2000, 3000], [1.0, "x", 5.0])
        )
        assert (again.accepted, again.duplicates, again.first_cursor) == (1, 2, 3)
        with pytest.raises(Conflict) as err:
            await store.append(cols(pk, [v[1], v[0]], [5000, 1000], [1.0, 7.0]))
        assert [d["index"] for d in err.value.details] == [1]
        # nothing of the rejected batch was stored
        hist = await store.history(HistoryQuery(pk, limit=100))
        assert hist.cursors.tolist() == [1, 2, 3] and 5000 not in hist.times.tolist()
        # a repeat inside one batch: same value -> duplicate, different -> conflict
        r = await store.append(cols(pk, [v[1], v[1]], [7000, 7000], [2.0, 2.0]))
        assert (r.accepted, r.duplicates) == (1, 1)
        with pytest.raises(Conflict) as err:
            await store.append(cols(pk, [v[1], v[1]], [8000, 8000], [2.0, 3.0]))
        assert err.value.details[0]["index"] == 1
    finally:
        await store.close()


async def test_out_of_order_rows_and_sealed_index(tmp_path: Path) -> None:
    store = await open_store(tmp_path, [], chunk=8)
    try:
        pk, v = await seed(store)
        # 20 rows in time order, then backfill older rows: both parts of the log are probed
        await store.append(
            cols(
                pk, [v[0]] * 20, [1000 * (i + 10) for i in range(20)], [float(i) for i in range(20)]
            )
        )
        r = await store.append(cols(pk, [v[0]] * 3, [1000, 2000, 12000], [0.5, 0.6, 2.0]))
        assert (r.accepted, r.duplicates) == (2, 1)
        with pytest.raises(Conflict):
            await store.append(cols(pk, [v[0]], [15000], [99.0]))  # sealed row, other value
        await store.append(cols(pk, [v[2]] * 3, [1000, 2000, 3000], [1.0, None, "ok"]))
        hist = await store.history(HistoryQuery(pk, series=series_of(store, "d0", "t"), limit=1000))
        assert hist.times.tolist() == sorted(hist.times.tolist())
        assert len(hist) == 22
        page1 = await store.history(HistoryQuery(pk, limit=5))
        key = (int(page1.times[-1]), int(page1.cursors[-1]))
        page2 = await store.history(HistoryQuery(pk, after=key, limit=1000))
        assert len(page1) + len(page2) == 25
        assert set(page1.cursors.tolist()).isdisjoint(page2.cursors.tolist())
        window = await store.history(HistoryQuery(pk, start=2000, end=12000, limit=1000))
        assert all(2000 <= t < 12000 for t in window.times.tolist())
        mixed = await store.history(HistoryQuery(pk, series=series_of(store, "d1"), limit=10))
        assert mixed.values == [1.0, None, "ok"]
    finally:
        await store.close()


async def test_restart_rebuilds_head_latest_and_registry(tmp_path: Path) -> None:
    store = await open_store(tmp_path, [], chunk=4)
    pk, v = await seed(store)
    await store.append(cols(pk, [v[0]] * 6, [1000 * i for i in range(6)], [1.0] * 6))
    await store.close()
    again = await open_store(tmp_path, [], chunk=4)
    try:
        assert again.head == 6
        assert "d0" in {d.doc.id for d in again.registry.devices_by_pk.values()}
        r = await again.append(cols(pk, [v[0], v[0]], [5000, 6000], [1.0, 2.0]))
        assert (r.accepted, r.duplicates, r.first_cursor) == (1, 1, 7)
        assert len(await again.history(HistoryQuery(pk, limit=100))) == 7
    finally:
        await again.close()


async def test_rollback_forgets_series_created_by_the_failed_batch(tmp_path: Path) -> None:
    store = await open_store(tmp_path, [])
    try:
        pk, v = await seed(store)
        await store.append(cols(pk, [v[0]], [1000], [1.0]))
        with pytest.raises(Conflict):  # creates the series of v[2], then conflicts on v[0]
            await store.append(cols(pk, [v[2], v[0]], [1000, 1000], [1.0, 2.0]))
        assert {s.variable_pk for s in store.registry.series_by_pk.values()} == {v[0]}
        r = await store.append(cols(pk, [v[2]], [1000], [1.0]))
        assert r.accepted == 1
        hist = await store.history(HistoryQuery(pk, limit=10))
        assert len(hist) == 2  # the series row exists, so the row is readable
    finally:
        await store.close()


async def test_a_batch_naming_a_variable_that_is_gone_writes_nothing(tmp_path: Path) -> None:
    """A variable deleted while its batch was queued: 404, no row, no series, no event."""
    store = await open_store(tmp_path, [])
    try:
        pk, v = await seed(store)
        reg = store.registry
        before = (reg.series_count, reg.series_end, store.head)
        with pytest.raises(NotFound):
            await store.append(cols(pk, [v[0], v[1], 9999], [1000] * 3, [1.0] * 3))
        assert (reg.series_count, reg.series_end, store.head) == before
        events = await store.read(lambda c: metadata.read_events(c))
        assert not any(isinstance(e, SeriesAdded) for _, e in events)
    finally:
        await store.close()


async def test_many_series_first_seen_in_one_batch_reopen_as_they_were_applied(
    tmp_path: Path,
) -> None:
    """A batch that meets many series for the first time applies them a column at a time
    (``Registry.apply_all``); a restart loads the same series, and the stored events rebuild
    them too."""
    store = await open_store(tmp_path, [])
    try:
        pk, _ = await seed(store)
        reg = store.registry
        devs = [
            DeviceIn(id=f"m{i}", variables=[VariableIn(name="t"), VariableIn(name="w")])
            for i in range(10)
        ]
        prec = reg.projects["p"]
        await store.write(
            lambda tx: metadata.create_devices(tx, reg, prec, devs, skip_existing=False)
        )
        v = sorted(var.pk for var in reg.variables_by_pk.values())
        await store.append(cols(pk, v[:1], [1000], [1.0]))
        applied: list[int] = []
        original = reg._add_new_series
        reg._add_new_series = lambda run: applied.append(len(run)) or original(run)  # type: ignore[method-assign]
        await store.append(cols(pk, v, [2000] * len(v), [1.0] * len(v)))
        assert applied == [len(v) - 1]  # the column path took them
        live = {
            s.pk: (s.variable_pk, s.device_id, s.variable_id)
            for s in store.registry.series_by_pk.values()
        }
        events = await store.read(lambda c: metadata.read_events(c))
    finally:
        await store.close()
    assert len(live) == len(v)
    rebuilt = Registry()
    rebuilt.apply_all([e for _, e in events])
    store = await open_store(tmp_path, [])
    try:
        for reg in (store.registry, rebuilt):
            got = {
                s.pk: (s.variable_pk, s.device_id, s.variable_id) for s in reg.series_by_pk.values()
            }
            assert got == live
            assert all(reg.series[(var, 1)] == spk for spk, (var, _, _) in live.items())
    finally:
        await store.close()


VALUES: list[float | str | None] = [
    0.1 + 0.2,  # needs all 17 digits
    (71.3 - 32) * 5 / 9,
    1e300,
    5.0,
    -2.5e-5,
    None,
    'a "quoted" \\ string',
    "\u2028 line separator, \U0001f600 and é",
    "",
    "a\x00NUL inside",  # written row by row and read row by row (SQLite's functions stop at NUL)
]


@pytest.mark.parametrize("with_nul", [False, True])
async def test_values_come_back_exactly_as_written(tmp_path: Path, with_nul: bool) -> None:
    """Regression: the log is written in one statement and read as one JSON value (a row per
    sqlite3 step handed the GIL over per row), so every value must survive both exactly."""
    store = await open_store(tmp_path, [], chunk=4)
    try:
        pk, v = await seed(store)
        values = VALUES if with_nul else VALUES[:-1]
        times = [1000 * (i + 1) for i in range(len(values))]
        await store.append(cols(pk, [v[0]] * len(values), times, values))
        log = await store.read_log(0, store.head, 100)
        hist = await store.history(HistoryQuery(pk, series=series_of(store, "d0", "t")))
        for batch in (log, hist):
            assert batch.cursors.tolist() == list(range(1, len(values) + 1))
            assert batch.times.tolist() == times
            assert [(type(x), x) for x in batch.values] == [(type(x), x) for x in values]
    finally:
        await store.close()


@pytest.mark.parametrize("restart", [False, True])
async def test_a_deleted_series_pk_is_never_given_to_a_new_series(
    tmp_path: Path, restart: bool
) -> None:
    """Regression: series pks were SQLite's max(pk) + 1, so deleting the device of the newest
    series and creating another gave the new series the old pk, and with it the old series'
    rows, which the append-only log keeps."""
    store = await open_store(tmp_path, [])
    try:
        pk, v = await seed(store)
        await store.append(cols(pk, [v[0], v[3]], [1000, 1000], [1.0, 9.0]))  # d0/t, d1/w
        reg = store.registry
        old = max(reg.series_by_pk)
        dev = reg.devices[(pk, "d1")]
        await store.write(lambda tx: metadata.delete_device(tx, reg, dev))
        if restart:
            await store.close()
            store = await open_store(tmp_path, [])
            reg = store.registry
        prec = reg.projects["p"]
        new_dev = [DeviceIn(id="d2", variables=[VariableIn(name="t")])]
        await store.write(
            lambda tx: metadata.create_devices(tx, reg, prec, new_dev, skip_existing=False)
        )
        var = next(x for x in reg.variables_by_pk.values() if x.doc.device == "d2")
        await store.append(cols(pk, [var.pk], [2000], [5.0]))
        [new] = series_of(store, "d2")
        assert new > old
        rows = await store.history(HistoryQuery(pk, series=(new,), limit=10))
        assert rows.values == [5.0]
    finally:
        await store.close()


async def test_restart_restores_latest_times_and_rows_from_the_index_and_the_tail(
    tmp_path: Path,
) -> None:
    """Each series' latest time and newest row come back after a restart from one index seek
    per series plus the unindexed tail (issue 17: the index was scanned, a cost growing with
    the log); a deleted series' indexed rows still keep its pk from being given again."""
    store = await open_store(tmp_path, [], chunk=4)
    pk, v = await seed(store)
    # d0/t: rows in the index, then an older backfill row; d0/w: indexed; d1/t: one row left
    # in the tail; d1/w (the newest series): indexed, then its device deleted.
    await store.append(cols(pk, [v[0]] * 5, [1000 * i for i in range(1, 6)], [1.0] * 5))
    await store.append(cols(pk, [v[1]] * 4, [10, 20, 40, 30], [1.0, 2.0, 4.0, 3.0]))
    await store.append(cols(pk, [v[3]] * 4, [1, 2, 3, 4], [5.0, 6.0, 7.0, 8.0]))
    await store.index_all()
    assert store.index_lag() == 0
    await store.append(cols(pk, [v[0], v[2]], [500, 7], ["old", 7]))
    assert store._sealed < store.head  # the last append is in the tail
    assert store.index_lag() == 2  # (/metrics: streamgauge_index_lag_rows)
    reg = store.registry
    gone = max(reg.series_by_pk)
    await store.write(lambda tx: metadata.delete_device(tx, reg, reg.devices[(pk, "d1")]))
    latest = {s: int(reg.latest[s]) for s in reg.series_by_pk}
    rows = await store.latest_rows()
    await store.close()
    again = await open_store(tmp_path, [], chunk=4)
    try:
        reg = again.registry
        assert {s: int(reg.latest[s]) for s in reg.series_by_pk} == latest
        assert latest == {series_of(again, "d0", "t")[0]: 5000, series_of(again, "d0", "w")[0]: 40}
        got = await again.latest_rows()

        def live(b: Batch) -> list[tuple[int, int, int, Any]]:  # deleted series' rows aside
            return [
                r
                for r in zip(
                    b.series.tolist(), b.times.tolist(), b.cursors.tolist(), b.values, strict=True
                )
                if r[0] in reg.series_by_pk
            ]

        assert live(got) == live(rows)
        assert [r[:2] for r in live(got)] == [(1, 5000), (2, 40)]
        assert reg.series_end > gone
    finally:
        await again.close()


async def test_an_idle_writer_checkpoints_qc_after_a_long_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The QC state is checkpointed once the writer is idle and the log has grown past
    ``QC_CHECKPOINT_ROWS`` since the last checkpoint, before it summarizes (which can keep an
    idle writer busy for minutes after a backfill): a restart replays the log after the
    checkpoint. (The index is the indexer thread's, beside it.)"""
    from streamgauge.store.sqlite import store as sqlite_store

    monkeypatch.setattr(sqlite_store, "QC_CHECKPOINT_ROWS", 3)
    store = await open_store(tmp_path, [], chunk=1000)
    try:
        pk, v = await seed(store)
        order: list[str] = []
        checkpointed = asyncio.Event()
        loop = asyncio.get_running_loop()
        checkpoint, fold = store._checkpoint_qc, store._fold

        def checkpoint_qc(conn: Any) -> None:
            order.append(f"checkpoint {store._summarized}")
            checkpoint(conn)
            loop.call_soon_threadsafe(checkpointed.set)

        def fold_(conn: Any, upto: int) -> None:
            order.append("fold")
            fold(conn, upto)

        monkeypatch.setattr(store, "_checkpoint_qc", checkpoint_qc)
        monkeypatch.setattr(store, "_fold", fold_)
        await store.append(cols(pk, [v[0]] * 5, [1000 * i for i in range(5)], [1.0] * 5))
        await checkpointed.wait()
        assert order[0] == "checkpoint 0"  # before the 5 rows were summarized
        assert store._qc_cursor == 5
    finally:
        await store.close()


async def test_the_index_file_commits_without_fsync_and_appends_keep_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With durability full, the indexer's transactions (in the index file, derived from the
    log, rebuilt if lost) commit with synchronous=NORMAL; every write of the log still commits
    with FULL. An index step that failed is retried; reads are exact meanwhile."""
    store = SqliteStore(
        tmp_path / "db",
        durability="full",
        index_chunk_rows=8,
        rules=log_rules(),
        registry=Registry(),
    )
    seen: list[tuple[int, int]] = []
    seal_sql = SqliteStore._seal_sql
    failed = [False]

    def spy(self: SqliteStore, conn: Any, upto: int) -> None:
        seen.append(
            (
                int(conn.execute("PRAGMA ix.synchronous").fetchone()[0]),
                int(conn.execute("PRAGMA main.synchronous").fetchone()[0]),
            )
        )
        if not failed[0]:
            failed[0] = True
            raise sqlite3.OperationalError("disk I/O error")  # logged, retried later
        seal_sql(self, conn, upto)

    monkeypatch.setattr(SqliteStore, "_seal_sql", spy)
    await store.open(lambda b: None)
    try:
        pk, v = await seed(store)
        await store.append(cols(pk, [v[0]] * 10, [1000 * i for i in range(10)], [1.0] * 10))
        assert await store.write(lambda tx: tx.execute("PRAGMA synchronous").fetchone()[0]) == 2
        assert len(await store.history(HistoryQuery(pk, limit=100))) == 10
        await store.append(cols(pk, [v[1]] * 10, [1000 * i for i in range(10)], [1.0] * 10))
        await store.index_all()
        assert await store.write(lambda tx: tx.execute("PRAGMA synchronous").fetchone()[0]) == 2
        assert len(seen) >= 2 and {ix for ix, _ in seen} == {1}  # NORMAL, the failed one too
        assert store._sealed == store.head == 20
        hist = await store.history(HistoryQuery(pk, limit=100))
        assert len(hist) == 20
    finally:
        await store.close()


async def test_appends_commit_while_an_index_step_holds_the_index_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indexer's step is a transaction of the index file only: while one is open (its
    rows written, not committed), the writer commits appends, and a duplicate probe and a
    history read see every row exactly once, indexed or in the tail."""
    store = await open_store(tmp_path, [], chunk=10_000)
    pk, v = await seed(store)
    holding, release = threading.Event(), threading.Event()
    seal_sql = SqliteStore._seal_sql

    def held(self: SqliteStore, conn: Any, upto: int) -> None:
        seal_sql(self, conn, upto)  # the index file's write lock is now taken
        holding.set()
        release.wait()

    try:
        await store.append(cols(pk, [v[0]] * 10, [1000 * i for i in range(10)], [1.0] * 10))
        monkeypatch.setattr(SqliteStore, "_seal_sql", held)
        indexing = asyncio.ensure_future(store.index_all())
        await asyncio.to_thread(holding.wait)
        # during the step: new rows, a duplicate of a row being indexed, a conflict with one
        r = await store.append(cols(pk, [v[0]] * 3, [3000, 20_000, 21_000], [1.0, 2.0, 2.0]))
        assert (r.accepted, r.duplicates) == (2, 1)
        with pytest.raises(Conflict):
            await store.append(cols(pk, [v[0]], [4000], [9.0]))
        hist = await store.history(HistoryQuery(pk, limit=100))
        assert hist.times.tolist() == [1000 * i for i in range(10)] + [20_000, 21_000]
        assert not indexing.done() and store._sealed == 0
        release.set()
        await indexing
        assert store._sealed >= 10
        await store.index_all()
        assert store._sealed == store.head == 12
        again = await store.history(HistoryQuery(pk, limit=100))
        assert again.times.tolist() == hist.times.tolist()
    finally:
        release.set()
        await store.close()


@pytest.mark.parametrize("damage", ["missing", "another log", "ahead", "unreadable"])
async def test_an_index_file_that_does_not_fit_the_log_is_built_again(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On open, an index file that is missing, of another log, ahead of the log, or not a
    database is set aside and the log indexed again; reads are exact all along."""
    store = await open_store(tmp_path, [], chunk=8)
    pk, v = await seed(store)
    await store.append(cols(pk, [v[0]] * 20, [1000 * i for i in range(20)], [1.0] * 20))
    await store.index_all()
    before = await store.history(HistoryQuery(pk, limit=100))
    await store.close()
    ix = index_path(tmp_path / "db")
    if damage == "missing":
        ix.unlink()
    elif damage in ("another log", "ahead"):
        with sqlite3.connect(ix) as c:
            if damage == "another log":
                c.execute("UPDATE index_state SET value = 'x' WHERE key = 'log'")
            else:  # rows indexed that the log lost (a power cut, durability=normal)
                c.execute("UPDATE index_state SET value = 99 WHERE key = 'sealed'")
        c.close()
    else:
        for suffix in ("-wal", "-shm"):
            ix.with_name(ix.name + suffix).unlink(missing_ok=True)
        ix.write_bytes(b"not a database" * 100)
    caplog.clear()
    again = await open_store(tmp_path, [], chunk=8)
    try:
        anew = [r.getMessage() for r in caplog.records if "indexing the log anew" in r.getMessage()]
        assert len(anew) == (damage != "missing")
        got = await again.history(HistoryQuery(pk, limit=100))
        assert got.cursors.tolist() == before.cursors.tolist()
        r = await again.append(cols(pk, [v[0]] * 2, [5000, 50_000], [1.0, 1.0]))
        assert (r.accepted, r.duplicates) == (1, 1)
        await again.index_all()
        assert again._sealed == again.head == 21
        with sqlite3.connect(ix) as c:
            assert c.execute("SELECT count(*) FROM obs_index").fetchone()[0] == 21
        c.close()
    finally:
        await again.close()


async def test_the_indexer_thread_runs_at_a_lower_priority(tmp_path: Path) -> None:
    """Index steps are background work: the indexer thread has INDEXER_NICE more niceness
    than the process (Linux: each thread has its own)."""
    import os

    from streamgauge.store.sqlite.store import INDEXER_NICE

    store = await open_store(tmp_path, [])
    try:
        assert store._indexing is not None and store._indexing.native_id is not None
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, store._indexing.native_id) == min(
            19, base + INDEXER_NICE
        )
    finally:
        await store.close()


def test_the_index_file_is_named_beside_the_database() -> None:
    """``serve`` looks for the index file by name (``config.INDEX_NAME``) before it launches its
    workers early; the store names it from the database's path."""
    from streamgauge.config import DB_NAME, INDEX_NAME

    assert index_path(Path("data") / DB_NAME) == Path("data") / INDEX_NAME
