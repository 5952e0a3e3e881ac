"""History reads: (time, cursor) order, keyset paging, time windows, series selection, times,
QC removal, one project only."""

from __future__ import annotations

from streamgauge.core import qc
from streamgauge.core.filterlang import parse_filter_on
from streamgauge.store.api import HistoryQuery
from tests.store.conformance.harness import Harness, Seeded, cols, rows, seed


async def fill(h: Harness) -> Seeded:
    """Rows of both projects, times out of order across batches, two sets of one variable."""
    s = await seed(h)
    v, store = s.var, h.store
    await store.append(
        cols(s.project_pk, [v["d0.t"]] * 4, [4000, 1000, 3000, 2000], [4.0, 1.0, 3.0, 2.0])
    )
    await store.append(cols(s.other_pk, [s.other_var] * 3, [1000, 2000, 3000], [7.0] * 3))
    await store.append(cols(s.project_pk, [v["d1.t"]] * 3, [2000, 3000, 5000], [20.0, 30.0, 50.0]))
    await store.append(cols(s.project_pk, [v["d0.w"]] * 2, [1000, 1000], ["a", "b"], [1, 2]))
    await store.append(cols(s.project_pk, [v["d0.t"]], [500], [0.5]))
    return s


def series_of(h: Harness, var_pk: int, set_: int = 1) -> int:
    return h.store.registry.series[(var_pk, set_)]


async def test_history_is_one_project_in_time_then_cursor_order(backend: Harness) -> None:
    s = await fill(backend)
    got = rows(await backend.store.history(HistoryQuery(s.project_pk, limit=100)))
    keys = [(t, c) for c, _, t, _ in got]
    assert keys == sorted(keys) and len(got) == 10
    other = {series_of(backend, s.other_var)}
    assert not other & {sr for _, sr, _, _ in got}
    batch = await backend.store.history(HistoryQuery(s.other_pk, limit=100))
    assert batch.project_pk == s.other_pk and batch.times.tolist() == [1000, 2000, 3000]


async def test_keyset_paging_reads_every_row_once(backend: Harness) -> None:
    s = await fill(backend)
    store = backend.store
    full = rows(await store.history(HistoryQuery(s.project_pk, limit=100)))
    for size in (1, 2, 5):
        paged: list[tuple[int, int, int, object]] = []
        after: tuple[int, int] | None = None
        while True:
            page = rows(await store.history(HistoryQuery(s.project_pk, after=after, limit=size)))
            assert len(page) <= size
            if not page:
                break
            paged += page
            after = (page[-1][2], page[-1][0])
        assert paged == full


async def test_time_windows_and_times(backend: Harness) -> None:
    s = await fill(backend)
    store = backend.store

    async def times(**kw: object) -> list[int]:
        batch = await store.history(HistoryQuery(s.project_pk, limit=100, **kw))  # type: ignore[arg-type]
        return batch.times.tolist()

    assert await times(start=2000, end=4000) == [2000, 2000, 3000, 3000]  # [start, end)
    assert await times(start=4000) == [4000, 5000]
    assert await times(end=1000) == [500]
    assert await times(times=(1000, 5000)) == [1000, 1000, 1000, 5000]
    assert await times(start=6000) == []


async def test_series_selection(backend: Harness) -> None:
    s = await fill(backend)
    store = backend.store
    d1 = series_of(backend, s.var["d1.t"])
    w2 = series_of(backend, s.var["d0.w"], 2)
    got = rows(await store.history(HistoryQuery(s.project_pk, series=(d1, w2), limit=100)))
    assert [(sr, t, x) for _, sr, t, x in got] == [
        (w2, 1000, "b"),
        (d1, 2000, 20.0),
        (d1, 3000, 30.0),
        (d1, 5000, 50.0),
    ]
    assert len(await store.history(HistoryQuery(s.project_pk, series=(), limit=100))) == 0
    assert len(await store.history(HistoryQuery(s.project_pk, series=(10**9,), limit=100))) == 0


async def test_qc_flags_are_stored_and_qc_removal_leaves_rows_out(backend: Harness) -> None:
    s = await seed(backend)
    store = backend.store
    t = s.var["d0.t"]  # range -50..60
    await store.append(
        cols(s.project_pk, [t] * 4, [1000, 2000, 3000, 4000], [10.0, 99.0, 20.0, -70.0])
    )
    batch = await store.history(HistoryQuery(s.project_pk, limit=100))
    flags = dict(zip(batch.times.tolist(), batch.qc.tolist(), strict=True))
    assert flags[2000] & qc.RANGE and flags[4000] & qc.RANGE
    assert not flags[1000] & qc.RANGE and not flags[3000] & qc.RANGE
    kept = await store.history(HistoryQuery(s.project_pk, qc_remove=qc.RANGE, limit=100))
    assert kept.times.tolist() == [1000, 3000]
    # the flags published with the batch are the stored ones
    assert backend.published[-1].qc.tolist() == batch.qc.tolist()
    store = await backend.reopen()
    again = await store.history(HistoryQuery(s.project_pk, qc_remove=qc.RANGE, limit=100))
    assert again.times.tolist() == [1000, 3000]


async def test_history_judged_pages_candidates_by_station_report(backend: Harness) -> None:
    s = await fill(backend)
    store = backend.store
    expr = parse_filter_on("(t > 2)")  # a station report: a device's rows at one time
    full = rows(await store.history(HistoryQuery(s.project_pk, limit=100)))
    passing, last, candidates = await store.history_judged(
        HistoryQuery(s.project_pk, limit=100), expr
    )
    d1 = series_of(backend, s.var["d1.t"])
    d0 = series_of(backend, s.var["d0.t"])
    assert candidates == 10 and last == (full[-1][2], full[-1][0])
    assert [(sr, t) for _, sr, t, _ in rows(passing)] == [
        (d1, 2000),
        (d0, 3000),
        (d1, 3000),
        (d0, 4000),
        (d1, 5000),
    ]
    # one page of 4 candidates (times 500 and 1000): none passes, the page still moves on
    passing, last, candidates = await store.history_judged(
        HistoryQuery(s.project_pk, limit=4), expr
    )
    assert (len(passing), candidates, last) == (0, 4, (full[3][2], full[3][0]))
    passing, last, candidates = await store.history_judged(
        HistoryQuery(s.project_pk, start=6000, limit=4), expr
    )
    assert (len(passing), candidates, last) == (0, 0, None)
