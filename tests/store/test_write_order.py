"""The embedded writer's scheduling: small writes go ahead of big appends (``writeq``), a big
append's rows are staged before its transaction and small writes commit between two chunks of
it; through all of it every request is all or nothing, cursors follow commit order, batches
are published in cursor order, and a staged batch is stored exactly as an unstaged one."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import Conflict
from streamgauge.domain.log import HistoryQuery, IngestColumns
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn
from streamgauge.store.sqlite import metadata
from streamgauge.store.sqlite import store as store_mod
from streamgauge.store.sqlite.store import SqliteStore, Tx
from streamgauge.store.sqlite.writeq import BIG_ROWS, CLOSED, IDLE, WriteQueue
from tests.store.rules import log_rules

# -- the queue ---------------------------------------------------------------------------------


def test_small_jobs_go_ahead_of_big_ones_fifo_within_each_kind() -> None:
    q: WriteQueue[str] = WriteQueue(max_wait=60)
    q.put("big1", big=True)
    q.put("small1")
    q.put("big2", big=True)
    q.put("small2")
    assert len(q) == 4 and q.small_waiting() == 2
    assert [q.get(0) for _ in range(4)] == ["small1", "small2", "big1", "big2"]
    assert q.get(0) is IDLE and q.empty()


def test_a_big_job_that_waited_long_enough_goes_first() -> None:
    q: WriteQueue[str] = WriteQueue(max_wait=0)  # every big job has waited long enough
    q.put("big1", big=True)
    q.put("small1")
    q.put("big2", big=True)
    assert [q.get(0) for _ in range(3)] == ["big1", "big2", "small1"]


def test_get_small_takes_only_small_jobs_and_close_waits_for_the_queue() -> None:
    q: WriteQueue[str] = WriteQueue(max_wait=60)
    q.put("big", big=True)
    assert q.get_small() is None
    q.put("small")
    q.close()
    assert q.get_small() == "small"
    assert q.get(0) == "big"  # jobs queued before close are still handed out
    assert q.get(0) is CLOSED


def test_live_while_a_live_job_came_within_live_seconds() -> None:
    q: WriteQueue[str] = WriteQueue(live_seconds=60)
    assert not q.live()
    q.put("big", big=True)
    q.put("metadata")  # a small job that is not live
    assert not q.live()
    q.put("live rows", live=True)
    assert q.live()
    assert [q.get(0) for _ in range(3)] == ["metadata", "live rows", "big"]
    assert q.live()  # for live_seconds after it came, taken or not
    q.live_seconds = 0
    assert not q.live()


def test_get_wakes_up_when_a_job_is_put_from_another_thread() -> None:
    q: WriteQueue[str] = WriteQueue()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(q.get(60)))
    t.start()
    q.put("job")
    t.join(60)
    assert got == ["job"]


# -- the store ---------------------------------------------------------------------------------


async def open_store(path: Path, published: list[Batch]) -> SqliteStore:
    store = SqliteStore(path / "db", rules=log_rules(), registry=Registry())
    await store.open(published.append)
    return store


async def seed(store: SqliteStore) -> tuple[int, list[int]]:
    """A project with two devices of two variables each: d0/t, d0/air_temp, d1/t, d1/air_temp
    (air_temp has range limits, so QC flags some rows)."""
    reg = store.registry
    await store.write(
        lambda tx: metadata.create_projects(
            tx, reg, [ProjectIn(id="p")], skip_existing=False, admin_account=None
        )
    )
    prec = reg.projects["p"]
    devs = [
        DeviceIn(
            id=f"d{i}",
            variables=[VariableIn(id="t", name="t"), VariableIn(id="a", name="air_temp")],
        )
        for i in range(2)
    ]
    await store.write(lambda tx: metadata.create_devices(tx, reg, prec, devs, skip_existing=False))
    return prec.pk, sorted(v.pk for v in reg.variables_by_pk.values())


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


def backfill(project_pk: int, var_pks: list[int], n: int, t0: int) -> IngestColumns:
    """``n`` rows over ``var_pks`` interleaved (each time every variable), newest first, with
    text, null and out-of-range values among the numbers."""
    rows = [(var_pks[i % len(var_pks)], t0 - 1000 * (i // len(var_pks))) for i in range(n)]
    values: list[float | str | None] = []
    for i in range(n):
        if i % 97 == 5:
            values.append(f"text {i} \u00e9")
        elif i % 89 == 7:
            values.append(None)
        elif i % 83 == 11:
            values.append(1e6)  # beyond air_temp's range: flagged where the variable has it
        else:
            values.append(0.1 * i + 1 / 3)
    return cols(project_pk, [r[0] for r in rows], [r[1] for r in rows], values)


class Blocker:
    """A write that holds the writer thread until released, so the test can queue jobs
    behind it in a known order."""

    def __init__(self, store: SqliteStore) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.task = asyncio.create_task(store.write(self._run))

    def _run(self, tx: Tx) -> None:
        self.started.set()
        self.release.wait(60)

    async def __aenter__(self) -> Blocker:
        await asyncio.to_thread(self.started.wait, 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.task


async def queued(coro: Any) -> asyncio.Task[Any]:
    """``coro`` as a task, run up to its first wait (a write is queued by then)."""
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)
    return task


async def test_a_small_append_queued_behind_a_big_one_commits_first(tmp_path: Path) -> None:
    published: list[Batch] = []
    store = await open_store(tmp_path, published)
    try:
        pk, v = await seed(store)
        big = backfill(pk, v, 3 * BIG_ROWS, t0=10_000_000)
        async with Blocker(store):
            big_task = await queued(store.append(big))
            small_task = await queued(store.append(cols(pk, [v[0]], [20_000_000], [1.0])))
        small, large = await small_task, await big_task
        assert (small.first_cursor, small.last_cursor) == (1, 1)
        assert (large.first_cursor, large.last_cursor) == (2, 1 + 3 * BIG_ROWS)
        cursors = np.concatenate([b.cursors for b in published])
        assert cursors.tolist() == list(range(1, store.head + 1))  # published in cursor order
        log = await store.read_log(0, store.head, 10 * BIG_ROWS)
        assert log.cursors.tolist() == list(range(1, 2 + 3 * BIG_ROWS))
    finally:
        await store.close()


async def test_small_writes_commit_between_the_chunks_of_a_staged_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small append that arrives while a big one is being staged commits before it; the
    big one stays whole (contiguous cursors, one published batch)."""
    published: list[Batch] = []
    store = await open_store(tmp_path, published)
    staging = threading.Event()
    go_on = threading.Event()
    fill = store_mod._Stage.fill

    def fill_slowly(self: store_mod._Stage, conn: Any) -> Iterator[None]:
        for k, step in enumerate(fill(self, conn)):
            if k == 0:
                staging.set()
                go_on.wait(60)
            yield step

    monkeypatch.setattr(store_mod._Stage, "fill", fill_slowly)
    monkeypatch.setattr(WriteQueue, "live", lambda self: True)  # else the batch is not staged
    try:
        pk, v = await seed(store)
        big_task = await queued(store.append(backfill(pk, v, 3 * store_mod.STAGE_CHUNK, 10**7)))
        await asyncio.to_thread(staging.wait, 60)
        small_task = await queued(store.append(cols(pk, [v[1]], [2 * 10**7], [2.0])))
        go_on.set()
        small, large = await small_task, await big_task
        assert small.first_cursor == 1
        assert (large.first_cursor, large.last_cursor) == (2, 1 + 3 * store_mod.STAGE_CHUNK)
        assert [len(b) for b in published] == [1, 3 * store_mod.STAGE_CHUNK]
        assert [int(b.cursors[0]) for b in published] == [1, 2]
    finally:
        await store.close()


async def test_a_refused_staged_batch_stores_nothing(tmp_path: Path) -> None:
    """A big batch with one conflicting row is refused whole after it was staged; the small
    write committed meanwhile stays, and the stage does not leak into the next batch."""
    store = await open_store(tmp_path, [])
    try:
        pk, v = await seed(store)
        await store.append(cols(pk, [v[0]], [5_000], [1.0]))
        bad = backfill(pk, [v[0]], 2 * BIG_ROWS, t0=5_000 + 1000 * (2 * BIG_ROWS - 1))
        bad.values[-1] = 99.0  # time 5,000 of v[0]: stored with another value
        async with Blocker(store):
            bad_task = await queued(store.append(bad))
            ok_task = await queued(store.append(cols(pk, [v[1]], [5_000], [3.0])))
        assert (await ok_task).first_cursor == 2
        with pytest.raises(Conflict):
            await bad_task
        assert store.head == 2
        hist = await store.history(HistoryQuery(pk, limit=10 * BIG_ROWS))
        assert sorted(hist.cursors.tolist()) == [1, 2]
        good = backfill(pk, [v[2]], BIG_ROWS, t0=10**7)
        r = await store.append(good)
        log = await store.read_log(2, store.head, 10 * BIG_ROWS)
        assert (r.first_cursor, r.last_cursor, len(log)) == (3, 2 + BIG_ROWS, BIG_ROWS)
        assert log.times.tolist() == good.times.tolist()
        assert [(type(x), x) for x in log.values] == [(type(x), x) for x in good.values]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("nul", "live", "insert_rows"),
    [(False, True, 1000), (True, True, 1000), (False, False, 1000), (False, False, 7)],
)
async def test_a_staged_batch_is_stored_as_an_unstaged_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nul: bool, live: bool, insert_rows: int
) -> None:
    """The same rows as one big staged batch and as small unstaged batches: the same series,
    times, values (type and all) and QC flags, in the same order; so after a restart. With
    a NUL in a text value the big batch is not staged (SQLite's JSON stops at a NUL), nor
    when no live write came lately (a bulk load: its transaction inserts the rows, in
    statements of ``INSERT_ROWS`` rows, the last one shorter)."""
    monkeypatch.setattr(WriteQueue, "live", lambda self: live)
    monkeypatch.setattr(store_mod, "INSERT_ROWS", insert_rows)
    staged_inserts: list[int] = []
    insert_staged = store_mod._insert_staged

    def spy(conn: Any, stage: Any, first: int, *args: Any) -> None:
        staged_inserts.append(first)
        insert_staged(conn, stage, first, *args)

    monkeypatch.setattr(store_mod, "_insert_staged", spy)
    big_dir, small_dir = tmp_path / "big", tmp_path / "small"
    rows = 4 * BIG_ROWS + 7
    results = []
    for where, step in ((big_dir, rows), (small_dir, BIG_ROWS - 1)):
        store = await open_store(where, [])
        pk, v = await seed(store)
        batch = backfill(pk, v, rows, t0=10**8)
        if nul:
            batch.values[3] = "a\x00b"
        for k in range(0, rows, step):
            part = IngestColumns(
                pk,
                batch.variable_pks[k : k + step],
                batch.sets[k : k + step],
                batch.times[k : k + step],
                batch.values[k : k + step],
                batch.qc[k : k + step],
            )
            await store.append(part)
        await store.close()
        store = await open_store(where, [])
        try:
            log = await store.read_log(0, store.head, 10 * rows)
        finally:
            await store.close()
        results.append(log)
    staged, unstaged = results
    assert staged_inserts == ([1] if live and not nul else [])
    assert len(staged) == rows and staged.cursors.tolist() == list(range(1, rows + 1))
    assert staged.series.tolist() == unstaged.series.tolist()
    assert len(set(staged.series.tolist())) == 4
    assert staged.times.tolist() == unstaged.times.tolist()
    assert [(type(x), x) for x in staged.values] == [(type(x), x) for x in unstaged.values]
    assert staged.qc.tolist() == unstaged.qc.tolist()
    assert staged.qc.any()  # some rows flagged, so the flags were written


# -- group commit (a bulk load) ----------------------------------------------------------------


def grouped(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """No live write lately (a bulk load), and the size of each group run, recorded."""
    monkeypatch.setattr(WriteQueue, "live", lambda self: False)
    sizes: list[int] = []
    run_group = SqliteStore._run_group

    def spy(self: SqliteStore, conn: Any, jobs: list[Any]) -> None:
        sizes.append(len(jobs))
        run_group(self, conn, jobs)

    monkeypatch.setattr(SqliteStore, "_run_group", spy)
    return sizes


async def test_big_appends_queued_in_a_bulk_load_commit_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big appends of different series waiting together share one transaction; each is
    answered with its own contiguous cursors in queue order, published in cursor order, and
    stored as if committed alone (so after a restart)."""
    sizes = grouped(monkeypatch)
    published: list[Batch] = []
    store = await open_store(tmp_path, published)
    try:
        pk, v = await seed(store)
        parts = [backfill(pk, [v[k]], BIG_ROWS + k, t0=10**8) for k in range(3)]
        async with Blocker(store):
            tasks = [await queued(store.append(p)) for p in parts]
        results = [await t for t in tasks]
        assert sizes == [3]
        first = 1
        for part, r in zip(parts, results, strict=True):
            assert (r.accepted, r.duplicates) == (len(part.times), 0)
            assert (r.first_cursor, r.last_cursor) == (first, first + len(part.times) - 1)
            first += len(part.times)
        cursors = np.concatenate([b.cursors for b in published])
        assert cursors.tolist() == list(range(1, store.head + 1))
        assert store.head == first - 1
        # the same rows again: every one a duplicate, nothing stored
        again = [await store.append(p) for p in parts]
        assert [(r.accepted, r.duplicates) for r in again] == [(0, len(p.times)) for p in parts]
    finally:
        await store.close()
    store = await open_store(tmp_path, [])
    try:
        log = await store.read_log(0, store.head, 10 * BIG_ROWS)
        assert log.cursors.tolist() == list(range(1, first))
        assert log.times.tolist() == np.concatenate([p.times for p in parts]).tolist()
        assert [(type(x), x) for x in log.values] == [(type(x), x) for p in parts for x in p.values]
        assert log.qc.any()  # air_temp's range flags, as an append alone gives them
    finally:
        await store.close()


async def test_a_refused_append_of_a_group_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One append of a group conflicts: it is refused and stores nothing; the ones before and
    after it commit, numbered without a gap."""
    sizes = grouped(monkeypatch)
    published: list[Batch] = []
    store = await open_store(tmp_path, published)
    try:
        pk, v = await seed(store)
        await store.append(cols(pk, [v[1]], [5_000], [1.0]))
        ok1 = backfill(pk, [v[0]], BIG_ROWS, t0=10**8)
        bad = backfill(pk, [v[1]], BIG_ROWS, t0=5_000 + 1000 * (BIG_ROWS - 1))
        bad.values[-1] = 99.0  # time 5,000 of v[1]: stored with another value
        ok2 = backfill(pk, [v[2]], BIG_ROWS, t0=10**8)
        async with Blocker(store):
            tasks = [await queued(store.append(p)) for p in (ok1, bad, ok2)]
        r1 = await tasks[0]
        with pytest.raises(Conflict):
            await tasks[1]
        r2 = await tasks[2]
        assert sizes == [3]
        assert (r1.first_cursor, r1.last_cursor) == (2, 1 + BIG_ROWS)
        assert (r2.first_cursor, r2.last_cursor) == (2 + BIG_ROWS, 1 + 2 * BIG_ROWS)
        assert store.head == 1 + 2 * BIG_ROWS
        cursors = np.concatenate([b.cursors for b in published])
        assert cursors.tolist() == list(range(1, store.head + 1))
        hist = await store.history(HistoryQuery(pk, series=None, limit=10 * BIG_ROWS))
        assert len(hist) == 1 + 2 * BIG_ROWS
    finally:
        await store.close()


async def test_appends_of_the_same_series_are_not_grouped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append sharing a series with the one before it waits for that one's commit (it must
    see its rows): the same rows queued twice are stored once, the second all duplicates."""
    sizes = grouped(monkeypatch)
    store = await open_store(tmp_path, [])
    try:
        pk, v = await seed(store)
        part = backfill(pk, v[:2], BIG_ROWS, t0=10**8)
        other = backfill(pk, v[2:], BIG_ROWS, t0=10**8)
        async with Blocker(store):
            tasks = [await queued(store.append(p)) for p in (part, part, other)]
        results = [await t for t in tasks]
        assert [(r.accepted, r.duplicates) for r in results] == [
            (BIG_ROWS, 0),
            (0, BIG_ROWS),
            (BIG_ROWS, 0),
        ]
        assert sizes == [2]  # the copy and the other series' append, after the first's commit
        assert store.head == 2 * BIG_ROWS
    finally:
        await store.close()


async def test_a_group_whose_commit_fails_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared commit fails: every append of the group gets the error, no cursor is taken,
    the series they created are forgotten, and the same appends sent again are stored whole."""
    sizes = grouped(monkeypatch)
    store = await open_store(tmp_path, [])
    commit = SqliteStore._commit
    calls: list[int] = []

    def failing(self: SqliteStore, conn: Any) -> None:
        calls.append(len(calls))
        if len(calls) == 2:  # the blocker's commit, then the group's
            raise sqlite3.OperationalError("disk I/O error")
        commit(self, conn)

    try:
        pk, v = await seed(store)
        series_before = dict(store.registry.series)
        parts = [backfill(pk, [v[k]], BIG_ROWS, t0=10**8) for k in range(2)]
        monkeypatch.setattr(SqliteStore, "_commit", failing)
        async with Blocker(store):
            tasks = [await queued(store.append(p)) for p in parts]
        for t in tasks:
            with pytest.raises(sqlite3.OperationalError):
                await t
        assert sizes == [2] and store.head == 0
        assert store.registry.series == series_before
        results = [await store.append(p) for p in parts]
        assert [(r.first_cursor, r.last_cursor) for r in results] == [
            (1, BIG_ROWS),
            (BIG_ROWS + 1, 2 * BIG_ROWS),
        ]
        log = await store.read_log(0, store.head, 10 * BIG_ROWS)
        assert log.cursors.tolist() == list(range(1, 2 * BIG_ROWS + 1))
    finally:
        await store.close()
