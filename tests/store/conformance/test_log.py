"""The log: cursors gapless and in commit order, duplicates, conflicts, all-or-nothing
batches, ``read_log`` ranges and limits, ``cursor_before``, and a reopen that keeps it all."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import Conflict, Unavailable
from streamgauge.store.api import HistoryQuery
from tests.store.conformance.harness import NAMES, Harness, cols, fresh, rows, seed


def published_cursors(h: Harness) -> list[int]:
    return [c for b in h.published for c in b.cursors.tolist()]


async def test_an_empty_log(backend: Harness) -> None:
    store = backend.store
    assert store.head == 0
    assert len(await store.read_log(0, 10, 10)) == 0
    assert await store.cursor_before(int(time.time() * 1000) + 60_000) == 0


async def test_cursors_are_gapless_in_commit_order_and_published_in_order(
    backend: Harness,
) -> None:
    s = await seed(backend)
    v = s.var
    store = backend.store
    r1 = await store.append(cols(s.project_pk, [v["d0.t"], v["d0.w"]], [1000, 1000], [1.0, 2.0]))
    r2 = await store.append(cols(s.other_pk, [s.other_var], [1000], [9.0]))
    r3 = await store.append(
        cols(s.project_pk, [v["d1.t"]] * 3, [3000, 2000, 1000], [1.0, "text", None])
    )
    assert (r1.accepted, r1.duplicates, r1.first_cursor, r1.last_cursor) == (2, 0, 1, 2)
    assert (r2.first_cursor, r2.last_cursor) == (3, 3)
    assert (r3.first_cursor, r3.last_cursor) == (4, 6)
    assert store.head == 6
    assert [b.cursors.tolist() for b in backend.published] == [[1, 2], [3], [4, 5, 6]]
    assert [b.project_pk for b in backend.published] == [s.project_pk, s.other_pk, s.project_pk]
    log = rows(await store.read_log(0, store.head, 100))
    assert [r[0] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r[2:] for r in log[3:]] == [(3000, 1.0), (2000, "text"), (1000, None)]
    # a batch's rows keep their order in the batch; the published batch is the stored one
    assert rows(backend.published[2]) == log[3:]


async def test_concurrent_appends_get_distinct_gapless_cursors(backend: Harness) -> None:
    s = await seed(backend)
    store = backend.store
    batches = [
        cols(s.project_pk, [s.var["d0.w"]] * 5, [k * 100 + i for i in range(5)], [1.0] * 5)
        for k in range(20)
    ]
    results = await asyncio.gather(*(store.append(b) for b in batches))
    spans = sorted((r.first_cursor, r.last_cursor) for r in results)
    assert spans == [(1 + 5 * k, 5 + 5 * k) for k in range(20)]
    assert published_cursors(backend) == list(range(1, 101))
    assert store.head == 100


async def test_same_key_same_value_is_a_duplicate(backend: Harness) -> None:
    s = await seed(backend)
    t = s.var["d0.t"]
    store = backend.store
    await store.append(cols(s.project_pk, [t, t], [1000, 2000], [1.0, "x"]))
    again = await store.append(cols(s.project_pk, [t, t, t], [1000, 2000, 3000], [1.0, "x", 5.0]))
    assert (again.accepted, again.duplicates, again.first_cursor, again.last_cursor) == (1, 2, 3, 3)
    only = await store.append(cols(s.project_pk, [t], [2000], ["x"]))
    assert (only.accepted, only.duplicates, only.first_cursor, only.last_cursor) == (
        0,
        1,
        None,
        None,
    )
    assert store.head == 3 and published_cursors(backend) == [1, 2, 3]
    # repeated inside one batch with the same value: the first occurrence stands for the key
    r = await store.append(cols(s.project_pk, [t, t, t], [7000, 7000, 7000], [2.0, 2.0, 2.0]))
    assert (r.accepted, r.duplicates) == (1, 2)
    # the same time in another set, or of another variable, is another key
    r = await store.append(
        cols(s.project_pk, [t, t, s.var["d1.t"]], [7000, 7000, 7000], [3.0, 3.0, 3.0], [2, 3, 1])
    )
    assert (r.accepted, r.duplicates) == (3, 0)


async def test_a_conflict_names_the_rows_and_writes_nothing(backend: Harness) -> None:
    s = await seed(backend)
    t, w = s.var["d0.t"], s.var["d0.w"]
    store = backend.store
    await store.append(cols(s.project_pk, [t, t], [1000, 2000], [1.0, 2.0]))
    before = rows(await store.read_log(0, 100, 100))
    batch = cols(s.project_pk, [w, t, w, t], [5000, 2000, 6000, 1000], [1.0, 2.5, 2.0, 1.5])
    with pytest.raises(Conflict) as err:
        await store.append(batch)
    assert [d["index"] for d in err.value.details] == [1, 3]
    assert all(d["reason"] for d in err.value.details)
    assert store.head == 2 and published_cursors(backend) == [1, 2]
    assert rows(await store.read_log(0, 100, 100)) == before
    # the batch's new rows were not written: they are new, not duplicates, afterwards
    r = await store.append(cols(s.project_pk, [w, w], [5000, 6000], [1.0, 2.0]))
    assert (r.accepted, r.duplicates, r.first_cursor) == (2, 0, 3)


async def test_a_repeat_inside_a_batch_with_another_value_is_a_conflict(backend: Harness) -> None:
    s = await seed(backend)
    t = s.var["d0.t"]
    store = backend.store
    with pytest.raises(Conflict) as err:
        await store.append(cols(s.project_pk, [t, t, t], [8000, 9000, 8000], [2.0, 1.0, 3.0]))
    assert [d["index"] for d in err.value.details] == [2]
    assert store.head == 0 and backend.published == []


async def test_read_log_ranges_and_limits(backend: Harness) -> None:
    s = await seed(backend)
    store = backend.store
    for k in range(5):  # 5 batches of 4 rows, alternating projects
        pk, var = (s.project_pk, s.var["d0.w"]) if k % 2 == 0 else (s.other_pk, s.other_var)
        await store.append(cols(pk, [var] * 4, [k * 10 + i for i in range(4)], [float(k)] * 4))
    assert store.head == 20

    async def cursors(after: int, upto: int, limit: int) -> list[int]:
        batch = await store.read_log(after, upto, limit)
        return batch.cursors.tolist()

    assert await cursors(0, 20, 100) == list(range(1, 21))
    assert await cursors(0, 20, 7) == list(range(1, 8))  # the first ``limit`` rows
    assert await cursors(5, 9, 100) == [6, 7, 8, 9]  # after < cursor <= upto
    assert await cursors(5, 5, 100) == []
    assert await cursors(18, 50, 100) == [19, 20]  # nothing past the head
    assert await cursors(20, 30, 100) == []
    batch = await store.read_log(3, 6, 10)
    assert batch.project_pk == 0  # rows of every project
    assert rows(batch) == [r for b in backend.published for r in rows(b) if 3 < r[0] <= 6]


async def test_cursor_before_finds_where_a_replay_starts(backend: Harness) -> None:
    s = await seed(backend)
    store = backend.store
    await store.append(cols(s.project_pk, [s.var["d0.w"]] * 3, [1, 2, 3], [1.0] * 3))
    mid = int(time.time() * 1000)
    while int(time.time() * 1000) <= mid:  # the next batch is received after ``mid``
        await asyncio.sleep(0.001)
    await store.append(cols(s.project_pk, [s.var["d0.w"]] * 2, [4, 5], [1.0] * 2))
    assert await store.cursor_before(0) == 0
    assert await store.cursor_before(mid + 1) == 3
    assert await store.cursor_before(int(time.time() * 1000) + 60_000) == 5


async def test_reopen_keeps_the_log_and_its_keys(backend: Harness) -> None:
    s = await seed(backend)
    t, w = s.var["d0.t"], s.var["d0.w"]
    store = backend.store
    for k in range(6):  # more rows than an index chunk, some out of time order
        await store.append(
            cols(s.project_pk, [t, w], [1000 * (6 - k), 1000 * k], [k + 0.5, -k - 0.5])
        )
    log = rows(await store.read_log(0, 100, 100))
    hist = rows(await store.history(HistoryQuery(s.project_pk, limit=100)))
    store = await backend.reopen()
    assert store.head == 12
    assert rows(await store.read_log(0, 100, 100)) == log
    assert rows(await store.history(HistoryQuery(s.project_pk, limit=100))) == hist
    # duplicates and conflicts are still found against what was stored before the reopen
    r = await store.append(cols(s.project_pk, [t, w, w], [1000, 0, 9000], [5.5, -0.5, 1.0]))
    assert (r.accepted, r.duplicates, r.first_cursor, r.last_cursor) == (1, 2, 13, 13)
    with pytest.raises(Conflict):
        await store.append(cols(s.project_pk, [t], [6000], [1.5]))
    assert backend.published[0].cursors.tolist() == [13]


async def test_a_closed_store_refuses_work(backend: Harness) -> None:
    s = await seed(backend)
    store = backend.store
    await backend.close()
    await backend.close()  # idempotent
    with pytest.raises(Unavailable):
        await store.append(cols(s.project_pk, [s.var["d0.w"]], [1], [1.0]))
    with pytest.raises(Unavailable):
        await store.read_log(0, 10, 10)


# -- a property: random batches against a model of the keys ----------------------------------

Row = tuple[int, int, float]  # (variable index, time, value)
batches_st = st.lists(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 5), st.sampled_from([0.0, 1.0, 2.5])),
        min_size=1,
        max_size=8,
    ),
    min_size=1,
    max_size=10,
)


def expected(stored: dict[tuple[int, int], float], batch: list[Row]) -> list[Row] | None:
    """The rows of ``batch`` the log takes, in batch order (None: the batch conflicts)."""
    seen: dict[tuple[int, int], float] = {}
    new: list[Row] = []
    for var, t, value in batch:
        before = seen.get((var, t), stored.get((var, t)))
        if before is None:
            new.append((var, t, value))
            seen[(var, t)] = value
        elif before != value:
            return None
    return new


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st)
def test_cursor_order_under_random_batches(name: str, batches: list[list[Row]]) -> None:
    asyncio.run(_random_batches(name, batches))


async def _random_batches(name: str, batches: list[list[Row]]) -> None:
    with fresh(name) as h:
        store = await h.open()
        try:
            s = await seed(h)
            var_pks = [s.var["d0.t"], s.var["d0.w"], s.var["d1.w"]]
            stored: dict[tuple[int, int], float] = {}
            log: list[Row] = []
            for batch in batches:
                want = expected(stored, batch)
                c = cols(
                    s.project_pk,
                    [var_pks[v] for v, _, _ in batch],
                    [t for _, t, _ in batch],
                    [x for _, _, x in batch],
                )
                if want is None:
                    with pytest.raises(Conflict):
                        await store.append(c)
                    continue
                r = await store.append(c)
                assert (r.accepted, r.duplicates) == (len(want), len(batch) - len(want))
                if want:
                    assert (r.first_cursor, r.last_cursor) == (len(log) + 1, len(log) + len(want))
                stored.update({(v, t): x for v, t, x in want})
                log += want
            assert store.head == len(log)
            assert published_cursors(h) == list(range(1, len(log) + 1))
            got = rows(await store.read_log(0, store.head, len(log) + 1))
            series = {pk: i for i, pk in enumerate(var_pks)}
            by_series = {
                sp: series[v] for (v, _), sp in store.registry.series.items() if v in series
            }
            assert [(by_series[sr], t, x) for _, sr, t, x in got] == log
        finally:
            await h.close()


async def test_latest_rows_of_a_series_range(backend: Harness) -> None:
    """``latest_rows(lo, hi)``: the newest row of each series with a pk in ``[lo, hi)``; the
    ranges that cover every pk give together what one read of all gives (the latest-row
    cache loads a range at a time)."""
    s = await seed(backend)
    v = s.var
    store = backend.store
    await store.append(cols(s.project_pk, [v["d0.t"]] * 3, [1000, 3000, 2000], [1.0, 3.0, 2.0]))
    await store.append(cols(s.project_pk, [v["d0.w"], v["d1.t"]], [500, 700], ["x", None]))
    await store.append(cols(s.other_pk, [s.other_var], [900], [9.0]))

    def newest(b: Batch) -> list[tuple[int, int, object]]:
        return list(zip(b.series.tolist(), b.times.tolist(), b.values, strict=True))

    everything = newest(await store.latest_rows())
    pks = sorted(r[0] for r in everything)
    assert len(pks) == 4 and (v["d0.t"], 3000, 3.0) in everything
    cut = pks[1] + 1  # two series below, two from here on
    low, high = await store.latest_rows(0, cut), await store.latest_rows(cut)
    assert [r[0] for r in newest(low)] == pks[:2]
    assert newest(low) + newest(high) == everything
    assert newest(await store.latest_rows(pks[-1] + 1)) == []
