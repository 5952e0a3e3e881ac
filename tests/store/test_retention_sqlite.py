"""Retention and backfill in the SQLite backend, checked against the database itself.

A retention pass (dense: by index ranges then cursor windows of the log; sparse: per series by
key, then the unindexed tail) leaves exactly the rows at or after each series' cutoff, an
index that matches the log, hour summaries equal to summaries recomputed from the rows left,
and ``gone`` at the highest cursor removed; each step removes at most its bound, and rows
written between steps are never lost. The backfill probe (per series first, then per key)
still finds every stored duplicate and conflict, indexed or in the tail."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from streamgauge.domain.errors import Conflict
from streamgauge.domain.timeseries import summarize
from streamgauge.store.sqlite import retention
from streamgauge.store.sqlite.store import SqliteStore, index_path
from tests.store.test_sqlite import cols, open_store, seed

MIN = 60_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def db(store: SqliteStore) -> sqlite3.Connection:
    """The log with its index file attached, as the store's own connections see them."""
    conn = sqlite3.connect(store.path)
    conn.execute("ATTACH ? AS ix", (str(index_path(store.path)),))
    return conn


def sealed_in(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT value FROM index_state WHERE key = 'sealed'").fetchone()[0])


def rows(store: SqliteStore) -> dict[int, tuple[int, int, float]]:
    with db(store) as c:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in c.execute("SELECT cursor, series, time, value FROM obs")
        }


def check_consistent(store: SqliteStore) -> None:
    """The index holds exactly the sealed rows of the log; the summaries are those of the rows
    up to ``summarized`` (later rows are summarized at read time, folded in when idle)."""
    with db(store) as c:
        sealed = sealed_in(c)
        index = set(c.execute("SELECT series, time, cursor FROM obs_index"))
        logged = set(c.execute("SELECT series, time, cursor FROM obs WHERE cursor <= ?", (sealed,)))
        assert index == logged
        got = sorted(c.execute("SELECT series, hour, qc, n, sum, min, max FROM obs_summary"))
        upto = int(c.execute("SELECT value FROM state WHERE key = 'summarized'").fetchone()[0])
        left = c.execute(
            "SELECT series, time, value, qc FROM obs WHERE cursor <= ?", (upto,)
        ).fetchall()
    s, t, v, q = (np.array([r[k] for r in left]) for k in range(4))
    want = sorted(
        u[:7]
        for u in summarize(
            s.astype(np.int64), t.astype(np.int64), v.astype(np.float64), q.astype(np.int64)
        )
    )
    assert [g[:4] for g in got] == [w[:4] for w in want]
    assert np.allclose([g[4:] for g in got], [w[4:] for w in want]) if got else True


async def run_pass(
    store: SqliteStore, pk: int, cutoffs: list[tuple[int, int]], max_rows: int, keep: bool = False
) -> tuple[int, int]:
    """One pass as the service runs it; returns (rows removed, steps)."""
    await store.settle_summaries()
    expired = await store.expired(cutoffs)
    removed = steps = 0
    while expired:
        n, done = await store.expire(pk, expired, keep_summaries=keep, max_rows=max_rows)
        assert n <= max_rows
        removed += n
        steps += 1
        if done:
            break
    return removed, steps


async def interleaved(store: SqliteStore, pk: int, v: list[int], steps: int) -> None:
    """``steps`` minutes of every series, written ten minutes (of all series) per batch, as a
    network reports: each series' rows are spread over the whole log."""
    for k in range(0, steps, 10):
        ts = [T0 + j * MIN for j in range(k, min(steps, k + 10)) for _ in v]
        vs = [float(j % 7) for j in range(k, min(steps, k + 10)) for _ in v]
        await store.append(cols(pk, v * (len(ts) // len(v)), ts, vs))


def sorted_pairs(store: SqliteStore, v: list[int], cuts: list[int]) -> list[tuple[int, int]]:
    reg = store.registry
    return sorted((reg.series[(var, 1)], cut) for var, cut in zip(v, cuts, strict=True))


async def test_dense_pass_removes_exactly_the_old_rows_in_bounded_steps(tmp_path: Path) -> None:
    store = await open_store(tmp_path, [], chunk=64)
    try:
        pk, v = await seed(store)
        await interleaved(store, pk, v, 300)
        before = rows(store)
        # per series cutoffs, mid-hour (the cutoff hour is recomputed) and on an hour
        cuts = [T0 + 150 * MIN + 30_000, T0 + 120 * MIN, T0 + 200 * MIN + 1, T0 + 10 * MIN]
        pairs = sorted_pairs(store, v, cuts)
        with db(store) as c:
            plan = retention.expired(c, sealed_in(c), pairs)
        assert retention.Pass(pk, plan, False).dense
        cut_of = dict(pairs)
        old = {cur for cur, (s, t, _) in before.items() if t < cut_of[s]}
        assert plan.rows == len(old)
        removed, steps = await run_pass(store, pk, pairs, max_rows=50)
        assert removed == len(old)
        assert steps >= len(old) // 50
        after = rows(store)
        assert set(after) == set(before) - old
        assert store.gone[pk] == max(old)
        check_consistent(store)
        # nothing left to do: the next pass finds nothing
        assert await store.expired(pairs) == []
    finally:
        await store.close()


async def test_sparse_pass_and_the_unindexed_tail(tmp_path: Path) -> None:
    store = await open_store(tmp_path, [], chunk=64)
    try:
        pk, v = await seed(store)
        await interleaved(store, pk, v, 400)
        await store.index_all()
        # old rows backfilled late: far from the other expired rows in the log, one of them
        # still in the unindexed tail
        await store.append(cols(pk, [v[0], v[1]], [T0 - 5 * MIN, T0 - 4 * MIN], [1.0, 2.0]))
        await store.append(cols(pk, [v[2]], [T0 - 3 * MIN], ["text"]))
        before = rows(store)
        pairs = sorted_pairs(store, v, [T0 + 3 * MIN + 1] * 4)
        with db(store) as c:
            plan = retention.expired(c, sealed_in(c), pairs)
        assert not retention.Pass(pk, plan, False).dense
        cut_of = dict(pairs)
        old = {cur for cur, (s, t, _) in before.items() if t < cut_of[s]}
        assert plan.rows == len(old) == 4 * 4 + 3
        removed, _ = await run_pass(store, pk, pairs, max_rows=5)
        assert removed == len(old)
        assert set(rows(store)) == set(before) - old
        assert store.gone[pk] == max(old)
        check_consistent(store)
    finally:
        await store.close()


async def test_rollup_keeps_summaries_and_writes_between_steps_survive(tmp_path: Path) -> None:
    store = await open_store(tmp_path, [], chunk=64)
    try:
        pk, v = await seed(store)
        await interleaved(store, pk, v, 240)
        await store.settle_summaries()  # as a retention pass starts (TimeSeries.run_retention)
        with db(store) as c:
            summaries_before = sorted(c.execute("SELECT * FROM obs_summary"))
        pairs = sorted_pairs(store, v, [T0 + 90 * MIN + 7] * 4)
        expired = await store.expired(pairs)
        steps = 0
        written: list[int] = []
        while True:
            n, done = await store.expire(pk, expired, keep_summaries=True, max_rows=40)
            steps += 1
            if done:
                break
            if steps % 3 == 0:  # ingest between steps: new rows and old (backfilled) ones
                t_new = T0 + (240 + steps) * MIN
                r = await store.append(
                    cols(pk, [v[0], v[1]], [t_new, T0 + steps * 1000 + 1], [1.0, 2.0])
                )
                assert r.accepted == 2 and r.first_cursor is not None
                written += [r.first_cursor, r.first_cursor + 1]
        left = rows(store)
        assert all(cur in left for cur in written)  # written after the plan: kept this pass
        with db(store) as c:
            sealed = sealed_in(c)
            index = set(c.execute("SELECT series, time, cursor FROM obs_index"))
            logged = set(
                c.execute("SELECT series, time, cursor FROM obs WHERE cursor <= ?", (sealed,))
            )
        assert logged <= index  # every sealed row is reachable through the index
        # the rollup: the removed hours' summaries are kept as they were (the series not
        # written meanwhile)
        quiet = {store.registry.series[(var, 1)] for var in v[2:]}
        with db(store) as c:
            summaries_after = sorted(c.execute("SELECT * FROM obs_summary"))
        assert [s for s in summaries_before if s[0] in quiet] == [
            s for s in summaries_after if s[0] in quiet
        ]
        # the next pass takes the old rows written meanwhile
        await run_pass(store, pk, pairs, max_rows=40, keep=True)
        cut_of = dict(pairs)
        assert all(t >= cut_of[s] for s, t, _ in rows(store).values())
    finally:
        await store.close()


async def test_backfill_probe_finds_duplicates_and_conflicts_indexed_or_in_the_tail(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, [], chunk=32)
    try:
        pk, v = await seed(store)
        await store.append(cols(pk, [v[0]] * 100, [T0 + i * MIN for i in range(100)], [1.0] * 100))
        # newest first, older than everything: no row stored in the span, all new
        r = await store.append(
            cols(pk, [v[0]] * 50, [T0 - i * MIN for i in range(1, 51)], [2.0] * 50)
        )
        assert (r.accepted, r.duplicates) == (50, 0)
        await store.index_all()
        await store.append(cols(pk, [v[3]], [T0], [0.0]))
        tail = [T0 + i * MIN for i in range(100, 110)]
        await store.append(cols(pk, [v[0]] * 10, tail, [1.0] * 10))
        with db(store) as c:
            sealed = sealed_in(c)
        assert sealed >= 150  # the first 150 rows are indexed; the last ones (likely) not
        # into the stored span: repeats of an indexed row, a backfilled one and a tail row,
        # and two new rows
        r = await store.append(
            cols(
                pk,
                [v[0]] * 5,
                [T0 + 3 * MIN, T0 - 10 * MIN, T0 + 105 * MIN, T0 + 3 * MIN + 1, T0 - 60 * MIN],
                [1.0, 2.0, 1.0, 3.0, 4.0],
            )
        )
        assert (r.accepted, r.duplicates) == (2, 3)
        for t in (T0 + 5 * MIN, T0 - 20 * MIN, T0 + 107 * MIN):
            with pytest.raises(Conflict):
                await store.append(cols(pk, [v[0], v[1]], [t, t], [9.0, 1.0]))
        # another series' span does not hide this one's stored rows
        r = await store.append(cols(pk, [v[1], v[0]], [T0 - 1, T0 + 7 * MIN], [1.0, 1.0]))
        assert (r.accepted, r.duplicates) == (1, 1)
        check_consistent(store)
    finally:
        await store.close()


async def test_summaries_read_the_same_folded_or_not(tmp_path: Path) -> None:
    """Rows not folded into the stored summaries yet are summarized at read time: an aggregate
    read gives the same units before and after the writer folds them, and the stored
    summaries after folding are those of every row (nothing counted twice or left out)."""
    store = await open_store(tmp_path, [], chunk=64)
    try:
        pk, v = await seed(store)
        await interleaved(store, pk, v, 180)
        series = sorted(store.registry.series[(var, 1)] for var in v)

        async def units() -> list[tuple[float, ...]]:
            found, _ = await store.aggregate_inputs(
                pk, series, T0, T0 + 4 * 60 * MIN, 0, lambda found: []
            )
            per: dict[tuple[int, int], list[float]] = {}
            for i in range(len(found.series)):
                key = (int(found.series[i]), int(found.hour[i]))
                n, total = per.get(key, [0, 0.0])
                per[key] = [n + int(found.n[i]), total + float(found.sum[i])]
            return sorted((k[0], k[1], n, round(t, 6)) for k, (n, t) in per.items())

        with db(store) as c:
            c.execute("UPDATE state SET value = 0 WHERE key = 'summarized'")  # as if unfolded
            c.execute("DELETE FROM obs_summary")
            c.commit()
        store._summarized = 0
        before = await units()
        assert sum(u[2] for u in before) == 180 * len(v)
        await store.settle_summaries()
        assert await units() == before
        check_consistent(store)
    finally:
        await store.close()
