"""The hour summaries of the PostgreSQL backend, folded off the append path by cursor range.

An aggregate read is the same whether the rows are folded into ``obs_summary`` or not yet (the
rows after ``summarized`` are summarized at read time, in the same snapshot); folds by two
nodes at once, while both append, count every row exactly once; a rollup's retention step
folds the rows it removes before it removes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import psycopg
import pytest

from streamgauge.core.registry import Registry
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn
from streamgauge.domain.timeseries import summarize
from streamgauge.store.postgres import metadata, summaries
from streamgauge.store.postgres import store as pgstore
from streamgauge.store.postgres.conn import Conn, Tx
from streamgauge.store.postgres.store import PgStore
from tests.pg import fresh_database
from tests.store.rules import log_rules
from tests.store.test_sqlite import cols

MIN = 60_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as u:
        yield u


@pytest.fixture
def no_fold_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stores' fold task looks once at open, then not for an hour: the test folds."""
    monkeypatch.setattr(pgstore, "FOLD_SECONDS", 3600.0)


async def open_store(url: str) -> PgStore:
    store = PgStore(url, rules=log_rules(), registry=Registry())
    await store.open(lambda batch: None)
    return store


@pytest.fixture
async def store(url: str, no_fold_task: None) -> AsyncIterator[PgStore]:
    s = await open_store(url)
    try:
        yield s
    finally:
        await s.close()


async def seed(store: PgStore) -> tuple[int, list[int]]:
    reg = store.registry

    def run(tx: Tx) -> None:
        metadata.create_projects(
            tx, reg, [ProjectIn(id="p")], skip_existing=False, admin_account=None
        )

    await store.write(run)
    prec = reg.projects["p"]
    devs = [
        DeviceIn(id=f"d{i}", variables=[VariableIn(name="t"), VariableIn(name="w")])
        for i in range(2)
    ]
    await store.write(lambda tx: metadata.create_devices(tx, reg, prec, devs, skip_existing=False))
    return prec.pk, sorted(v.pk for v in reg.variables_by_pk.values())


async def write_minutes(store: PgStore, pk: int, v: list[int], lo: int, hi: int) -> None:
    """Minutes ``lo..hi`` of every variable, ten minutes a batch, a text value now and then
    (left out of the summaries)."""
    for k in range(lo, hi, 10):
        minutes = range(k, min(hi, k + 10))
        ts = [T0 + j * MIN for j in minutes for _ in v]
        vs: list[float | str | None] = [
            "n/a" if j % 23 == 0 else float((j * 7 + i) % 11) - 3.5
            for j in minutes
            for i in range(len(v))
        ]
        await store.append(cols(pk, v * len(minutes), ts, vs))


def summarized(url: str) -> int:
    with psycopg.connect(url) as c:
        row = c.execute("SELECT value FROM state WHERE key = 'summarized'").fetchone()
    assert row is not None
    return int(row[0])


def stored_vs_log(url: str, upto: int | None = None) -> tuple[list[tuple[float, ...]], ...]:
    """The stored summaries, and those recomputed from the log's rows up to ``upto`` (default:
    ``summarized``)."""
    upto = summarized(url) if upto is None else upto
    with psycopg.connect(url) as c:
        got = c.execute(
            "SELECT series, hour, qc, n, sum, min, max, first_time, first_value, last_time,"
            " last_value FROM obs_summary ORDER BY series, hour, qc"
        ).fetchall()
        rows = c.execute(
            "SELECT series, time, coalesce(num, 'NaN'), qc FROM obs WHERE cursor <= %s", (upto,)
        ).fetchall()
    s, t, v, q = (np.array([r[k] for r in rows]) for k in range(4))
    want = summarize(
        s.astype(np.int64), t.astype(np.int64), v.astype(np.float64), q.astype(np.int64)
    )
    return [tuple(r) for r in got], sorted(want)


async def units(store: PgStore, pk: int, series: list[int], hours: int) -> list[tuple[float, ...]]:
    """The aggregate read's units, added up per (series, hour)."""
    found, _ = await store.aggregate_inputs(
        pk, series, T0, T0 + hours * 60 * MIN, 0, lambda found: []
    )
    per: dict[tuple[int, int], list[float]] = {}
    for i in range(len(found.series)):
        key = (int(found.series[i]), int(found.hour[i]))
        n, total, lo, hi = per.get(key, [0, 0.0, np.inf, -np.inf])
        per[key] = [
            n + int(found.n[i]),
            total + float(found.sum[i]),
            min(lo, float(found.min[i])),
            max(hi, float(found.max[i])),
        ]
    return sorted((k[0], k[1], n, round(t, 6), a, b) for k, (n, t, a, b) in per.items())


async def fold_to(store: PgStore, upto: int) -> None:
    def run(conn: Conn) -> None:
        with conn.transaction():
            assert summaries.lock(conn, wait=False)
            summaries.fold(conn, upto=upto)

    await store.read(run)


async def test_a_read_is_the_same_folded_or_not(url: str, store: PgStore) -> None:
    pk, v = await seed(store)
    await write_minutes(store, pk, v, 0, 150)
    series = sorted(store.registry.series[(var, 1)] for var in v)
    assert summarized(url) == 0  # nothing folded on the append path
    not_folded = await units(store, pk, series, 4)
    assert sum(u[2] for u in not_folded) == sum(1 for j in range(150) if j % 23) * len(v)
    await fold_to(store, store.head // 3)  # part of the log folded: a unit on both sides
    assert await units(store, pk, series, 4) == not_folded
    got, want = stored_vs_log(url)
    assert summarized(url) == store.head // 3 and got == want
    await store.settle_summaries()
    assert summarized(url) == store.head
    assert await units(store, pk, series, 4) == not_folded
    got, want = stored_vs_log(url)
    assert got == want
    # a backfill into folded hours, not folded yet: read at once, then folded once
    await write_minutes(store, pk, v, 150, 200)
    both = await units(store, pk, series, 4)
    assert sum(u[2] for u in both) == sum(1 for j in range(200) if j % 23) * len(v)
    await store.settle_summaries()
    assert await units(store, pk, series, 4) == both
    got, want = stored_vs_log(url)
    assert got == want


async def test_two_nodes_folding_while_appending_count_every_row_once(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgstore, "FOLD_SECONDS", 0.001)
    monkeypatch.setattr(pgstore, "FOLD_STEP", 7)  # many small folds, racing between nodes
    monkeypatch.setattr(pgstore, "FOLD_LAG", 7)
    a = await open_store(url)
    b: PgStore | None = None
    try:
        pk, v = await seed(a)
        b = await open_store(url)  # loads the devices a made
        await asyncio.gather(write_minutes(a, pk, v, 0, 120), write_minutes(b, pk, v, 120, 240))
        series = sorted(a.registry.series[(var, 1)] for var in v)
        while summarized(url) < await a.durable_head():  # the fold tasks catch up
            await asyncio.sleep(0.05)
        got, want = stored_vs_log(url)
        assert got == want
        assert sum(r[3] for r in got) == sum(1 for j in range(240) if j % 23) * len(v)
        assert await units(a, pk, series, 5) == await units(b, pk, series, 5)
    finally:
        await a.close()
        if b is not None:
            await b.close()


async def test_a_rollup_step_folds_the_rows_it_removes(url: str, store: PgStore) -> None:
    pk, v = await seed(store)
    await write_minutes(store, pk, v, 0, 120)
    assert summarized(url) == 0
    kept = await units(store, pk, sorted(store.registry.series[(x, 1)] for x in v), 2)
    cutoffs = sorted((store.registry.series[(var, 1)], T0 + 90 * MIN) for var in v)
    removed, done = await store.expire(pk, cutoffs, keep_summaries=True, max_rows=10_000)
    assert done and removed == 90 * len(v)
    assert summarized(url) == store.head
    got, _ = stored_vs_log(url, 0)
    per: dict[tuple[int, int], list[float]] = {}
    for r in got:
        n, total = per.get((int(r[0]), int(r[1])), [0, 0.0])
        per[(int(r[0]), int(r[1]))] = [n + int(r[3]), total + float(r[4])]
    assert [(k[0], k[1], n, round(t, 6)) for k, (n, t) in sorted(per.items())] == [
        u[:4] for u in kept
    ]
