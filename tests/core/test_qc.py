"""Tests of the vectorized QC core: each check, combinations, state, and properties against a
plain-Python reference model."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core import qc
from streamgauge.core.batch import QC_NAMES, qc_names
from streamgauge.core.qc import GUSTFACTOR, MAXGUST, PERS, RANGE, RATE, Limits, QCState

NAN = math.nan
SPEED, GUST = qc.ROLE_WIND_SPEED, qc.ROLE_WIND_GUST


def run(
    state: QCState,
    limits: Limits,
    rows: Sequence[tuple[int, int, float]],
    *,
    gust_factor: float = 2.5,
    gust_min_speed: float = 2.5,
    commit: bool = True,
) -> list[int]:
    s = np.array([r[0] for r in rows], dtype=np.int64)
    t = np.array([r[1] for r in rows], dtype=np.int64)
    v = np.array([r[2] for r in rows], dtype=np.float64)
    flags = qc.check(
        state,
        limits,
        s,
        t,
        v,
        gust_factor=gust_factor,
        gust_min_speed=gust_min_speed,
        commit=commit,
    )
    return [int(f) for f in flags]


def snapshot(state: QCState, n: int) -> list[tuple[int, float | None, int]]:
    """The state of the first ``n`` series (None for a NaN value, to compare equal)."""
    state.ensure(n)
    return [
        (
            int(state.last_time[i]),
            None if math.isnan(state.last_value[i]) else float(state.last_value[i]),
            int(state.same_since[i]),
        )
        for i in range(n)
    ]


# -- bits ------------------------------------------------------------------------------------


def test_bits_follow_qc_names_order() -> None:
    assert [RANGE, RATE, PERS, MAXGUST, GUSTFACTOR] == [1 << i for i in range(len(QC_NAMES))]
    assert qc_names(RANGE) == ["sl_range_check"]
    assert qc_names(RATE) == ["sl_rate_check"]
    assert qc_names(PERS) == ["sl_pers_check"]
    assert qc_names(MAXGUST) == ["sl_windspd_maxgust_check"]
    assert qc_names(GUSTFACTOR) == ["sl_wind_gust_factor_check"]


# -- range -----------------------------------------------------------------------------------


def test_range_alone() -> None:
    lim = Limits()
    lim.set(0, lo=-10.0, hi=10.0)
    flags = run(QCState(), lim, [(0, 1, -10.0), (0, 2, 10.0), (0, 3, -10.5), (0, 4, 11.0)])
    assert flags == [0, 0, RANGE, RANGE]


def test_range_one_sided_and_unlimited() -> None:
    lim = Limits()
    lim.set(0, lo=0.0)
    lim.set(1, hi=5.0)
    lim.set(2)
    rows = [(0, 1, -1.0), (0, 2, 1e9), (1, 1, -1e9), (1, 2, 6.0), (2, 1, -1e300), (2, 2, 1e300)]
    assert run(QCState(), lim, rows) == [RANGE, 0, 0, RANGE, 0, 0]


def test_unconfigured_series_beyond_limits_get_no_flags() -> None:
    lim = Limits()
    lim.set(0, lo=0.0, hi=1.0)
    state = QCState()
    assert run(state, lim, [(7, 1, 1e9), (7, 2, 1e9), (7, 3, -5.0)]) == [0, 0, 0]
    assert state.last_time[7] == 3


def test_range_failure_is_single_entry_point() -> None:
    """A range failure gets no other flag and is not the predecessor of the next value."""
    lim = Limits()
    lim.set(0, lo=0.0, hi=100.0, max_rate=1.0, max_persist_ms=1)
    state = QCState()
    rows = [(0, 0, 50.0), (0, 1000, 9999.0), (0, 2000, 50.5), (0, 3000, 9999.0)]
    assert run(state, lim, rows) == [0, RANGE, 0, RANGE]
    assert (state.last_time[0], state.last_value[0]) == (2000, 50.5)
    # the stuck out-of-range value never enters the chain: no rate or persistence flags
    assert run(state, lim, [(0, 4000, 9999.0), (0, 5000, 51.0)]) == [RANGE, 0]


# -- rate ------------------------------------------------------------------------------------


def test_rate_alone_within_batch() -> None:
    lim = Limits()
    lim.set(0, max_rate=0.5)  # per second
    rows = [(0, 0, 0.0), (0, 2000, 1.0), (0, 3000, 1.6), (0, 4000, 1.1)]
    assert run(QCState(), lim, rows) == [0, 0, RATE, 0]


def test_rate_first_row_has_no_prev_and_uses_state_afterwards() -> None:
    lim = Limits()
    lim.set(0, max_rate=1.0)
    state = QCState()
    assert run(state, lim, [(0, 0, 100.0)]) == [0]
    assert run(state, lim, [(0, 1000, 102.0)]) == [RATE]
    assert run(state, lim, [(0, 3000, 103.0)]) == [0]  # prev is the flagged 102.0


def test_rate_skips_non_positive_dt() -> None:
    lim = Limits()
    lim.set(0, max_rate=0.001)
    state = QCState()
    assert run(state, lim, [(0, 1000, 1.0), (0, 1000, 50.0)]) == [0, 0]
    assert run(state, lim, [(0, 1000, 80.0)]) == [0]  # same time as the state: dt == 0


def test_rate_decreasing_values_and_boundary() -> None:
    lim = Limits()
    lim.set(0, max_rate=2.0)
    rows = [(0, 0, 10.0), (0, 1000, 8.0), (0, 2000, 5.0)]
    assert run(QCState(), lim, rows) == [0, 0, RATE]  # exactly max_rate passes


# -- persistence -----------------------------------------------------------------------------


def test_persistence_alone() -> None:
    lim = Limits()
    lim.set(0, max_persist_ms=2000)
    rows = [(0, t, 5.0) for t in (0, 1000, 2000, 3000, 4000)] + [(0, 5000, 6.0), (0, 6000, 6.0)]
    assert run(QCState(), lim, rows) == [0, 0, 0, PERS, PERS, 0, 0]


def test_persistence_carries_same_since_across_batches() -> None:
    lim = Limits()
    lim.set(0, max_persist_ms=2500)
    state = QCState()
    assert run(state, lim, [(0, 0, 1.0), (0, 1000, 1.0)]) == [0, 0]
    assert state.same_since[0] == 0
    assert run(state, lim, [(0, 2000, 1.0)]) == [0]
    assert run(state, lim, [(0, 3000, 1.0)]) == [PERS]
    assert run(state, lim, [(0, 4000, 1.5), (0, 5000, 1.5)]) == [0, 0]
    assert state.same_since[0] == 4000


def test_persistence_disabled_by_zero() -> None:
    lim = Limits()
    lim.set(0, max_persist_ms=0)
    assert run(QCState(), lim, [(0, t * 10**9, 3.0) for t in range(5)]) == [0] * 5


def test_persistence_run_is_broken_by_a_different_value_not_by_nan() -> None:
    lim = Limits()
    lim.set(0, max_persist_ms=1500)
    rows = [(0, 0, 2.0), (0, 1000, NAN), (0, 2000, 2.0), (0, 3000, 2.5), (0, 4000, 2.0)]
    assert run(QCState(), lim, rows) == [0, 0, PERS, 0, 0]


# -- wind ------------------------------------------------------------------------------------


def wind_limits() -> Limits:
    lim = Limits()
    lim.set(0, role=SPEED, group=10)
    lim.set(1, role=GUST, group=10)
    lim.set(2, role=SPEED, group=11)
    lim.set(3, role=GUST, group=11)
    return lim


def test_maxgust_flags_both_rows() -> None:
    rows = [(0, 0, 6.0), (1, 0, 5.0), (2, 0, 5.0), (3, 0, 5.0)]
    assert run(QCState(), wind_limits(), rows) == [MAXGUST, MAXGUST, 0, 0]


def test_wind_pairs_need_same_group_and_time() -> None:
    rows = [(0, 0, 6.0), (1, 1000, 5.0), (2, 0, 9.0), (3, 1000, 1.0), (1, 0, NAN)]
    assert run(QCState(), wind_limits(), rows) == [0, 0, 0, 0, 0]


def test_gust_factor_flags_both_rows_above_min_speed() -> None:
    rows = [(0, 0, 3.0), (1, 0, 7.6), (2, 0, 2.0), (3, 0, 9.0)]  # group 11: speed below minimum
    assert run(QCState(), wind_limits(), rows) == [GUSTFACTOR, GUSTFACTOR, 0, 0]
    rows = [(0, 0, 3.0), (1, 0, 7.5)]  # exactly factor * speed passes
    assert run(QCState(), wind_limits(), rows) == [0, 0]
    rows = [(0, 0, 2.5), (1, 0, 6.3)]  # speed exactly at the minimum is checked
    assert run(QCState(), wind_limits(), rows) == [GUSTFACTOR, GUSTFACTOR]


def test_gust_factor_parameters() -> None:
    rows = [(0, 0, 2.0), (1, 0, 5.0), (2, 0, 4.0), (3, 0, 8.5)]
    assert run(QCState(), wind_limits(), rows, gust_factor=2.0, gust_min_speed=1.0) == [
        GUSTFACTOR,
        GUSTFACTOR,
        GUSTFACTOR,
        GUSTFACTOR,
    ]
    assert run(QCState(), wind_limits(), rows, gust_factor=3.0, gust_min_speed=1.0) == [0] * 4


def test_wind_several_rows_per_key_every_pair() -> None:
    lim = wind_limits()
    lim.set(4, role=SPEED, group=10)  # a second speed sensor on device 10
    rows = [(0, 0, 4.0), (4, 0, 7.0), (1, 0, 6.0)]
    assert run(QCState(), lim, rows) == [0, MAXGUST, MAXGUST]
    lim.set(5, role=GUST, group=10)
    rows = [(0, 0, 3.0), (4, 0, 5.0), (1, 0, 10.0), (5, 0, 4.0)]
    # 3.0 vs 10.0 gust factor; 5.0 > 4.0 max gust
    assert run(QCState(), lim, rows) == [GUSTFACTOR, MAXGUST, GUSTFACTOR, MAXGUST]


def test_range_failed_wind_rows_do_not_pair() -> None:
    lim = wind_limits()
    lim.set(1, lo=0.0, hi=50.0, role=GUST, group=10)
    rows = [(0, 0, 6.0), (1, 0, -1.0)]
    assert run(QCState(), lim, rows) == [0, RANGE]


# -- combinations ----------------------------------------------------------------------------


def test_combinations_on_one_row() -> None:
    lim = Limits()
    lim.set(0, max_rate=0.1, max_persist_ms=500, role=SPEED, group=1)
    lim.set(1, role=GUST, group=1)
    rows = [(0, 0, 0.0), (0, 1000, 9.0), (1, 1000, 8.0), (0, 2000, 9.0), (1, 2000, 30.0)]
    assert run(QCState(), lim, rows) == [
        0,
        RATE | MAXGUST,
        MAXGUST,
        PERS | GUSTFACTOR,
        GUSTFACTOR,
    ]


def test_many_series_independent() -> None:
    lim = Limits()
    lim.set(0, max_rate=1.0)
    lim.set(1, max_rate=1.0)
    rows = [(0, 0, 0.0), (1, 0, 100.0), (0, 1000, 100.0), (1, 1000, 100.5)]
    assert run(QCState(), lim, rows) == [0, 0, RATE, 0]


# -- NaN, order, backfill --------------------------------------------------------------------


def test_nan_rows_get_no_flags_and_do_not_move_state() -> None:
    lim = Limits()
    lim.set(0, lo=0.0, hi=1.0, max_rate=0.0, max_persist_ms=1, role=SPEED, group=1)
    lim.set(1, role=GUST, group=1)
    state = QCState()
    assert run(state, lim, [(0, 0, 0.5)]) == [0]
    assert run(state, lim, [(0, 5000, NAN), (1, 5000, NAN)]) == [0, 0]
    assert snapshot(state, 2) == [(0, 0.5, 0), (qc.NO_TIME, None, qc.NO_TIME)]


def test_out_of_order_rows_equal_sorted() -> None:
    lim = Limits()
    lim.set(0, max_rate=1.0, max_persist_ms=1500)
    rows = [(0, 3000, 5.0), (0, 0, 0.0), (0, 2000, 5.0), (0, 1000, 0.5), (0, 4000, 5.0)]
    flags = run(QCState(), lim, rows)
    # sorted: 0 @0, 0.5 @1000, 5 @2000 (rate), 5 @3000, 5 @4000 (pers: 2000 ms > 1500)
    assert flags == [0, 0, RATE, 0, PERS]


def test_backfill_checked_within_batch_and_does_not_move_state() -> None:
    lim = Limits()
    lim.set(0, max_rate=1.0)
    state = QCState()
    assert run(state, lim, [(0, 10_000, 50.0)]) == [0]
    # backfill rows: the oldest has no prev (not compared with the state's 50.0), the next one
    # is compared with it; the forward row continues from the state
    rows = [(0, 2000, 0.0), (0, 1000, 0.0), (0, 11_000, 50.5), (0, 3000, 10.0)]
    assert run(state, lim, rows) == [0, 0, 0, RATE]
    assert (state.last_time[0], state.last_value[0]) == (11_000, 50.5)
    assert run(state, lim, [(0, 500, 99.0)]) == [0]
    assert (state.last_time[0], state.last_value[0]) == (11_000, 50.5)


def test_backfill_does_not_continue_the_state_run() -> None:
    lim = Limits()
    lim.set(0, max_persist_ms=1000)
    state = QCState()
    run(state, lim, [(0, 0, 5.0), (0, 10_000, 5.0)])
    assert run(state, lim, [(0, 10_000, 5.0)]) == [PERS]
    # equal to the state's value, but older than it: the run of the state does not apply
    assert run(state, lim, [(0, 5000, 5.0)]) == [0]
    assert run(state, lim, [(0, 5000, 5.0), (0, 7000, 5.0)]) == [0, PERS]
    assert snapshot(state, 1) == [(10_000, 5.0, 0)]


def test_row_at_state_time_is_not_backfill() -> None:
    lim = Limits()
    lim.set(0, max_persist_ms=100)
    state = QCState()
    run(state, lim, [(0, 0, 1.0), (0, 1000, 1.0)])
    assert run(state, lim, [(0, 1000, 1.0)]) == [PERS]
    assert run(state, lim, [(0, 1000, 2.0)]) == [0]
    assert (state.last_value[0], state.same_since[0]) == (2.0, 1000)


# -- commit / advance / rebuild --------------------------------------------------------------


def test_commit_false_never_mutates_and_advance_matches_commit() -> None:
    lim = Limits()
    lim.set(0, lo=0.0, hi=10.0, max_rate=1.0, max_persist_ms=1000)
    a, b = QCState(), QCState()
    first = [(0, 0, 1.0)]
    run(a, lim, first)
    run(b, lim, first)
    before = snapshot(a, 1)
    arrays = (a.last_time, a.last_value, a.same_since)
    rows = [(0, 1000, 1.0), (0, 2000, 50.0), (0, 3000, 1.0), (3, 0, 5.0)]
    flags = run(a, lim, rows, commit=False)
    assert snapshot(a, 1) == before
    assert all(
        x is y for x, y in zip(arrays, (a.last_time, a.last_value, a.same_since), strict=True)
    )
    assert flags == run(b, lim, rows)
    s, t, v = (np.array([r[i] for r in rows]) for i in range(3))
    qc.advance(a, s, t, v, np.array(flags))
    assert snapshot(a, 4) == snapshot(b, 4)
    assert (a.last_time[0], a.last_value[0]) == (3000, 1.0)  # 50.0 failed range


def test_advance_validates_flags_length() -> None:
    with pytest.raises(ValueError):
        qc.advance(QCState(), np.array([0]), np.array([0]), np.array([1.0]), np.array([0, 0]))


def test_rebuild_resets_only_given_series() -> None:
    lim = Limits()
    lim.set(0, hi=10.0)
    state = QCState()
    run(state, lim, [(0, 100, 1.0), (1, 100, 2.0)])
    qc.rebuild(state, lim, np.array([0, 0, 0]), np.array([5, 1, 3]), np.array([3.0, 2.0, 99.0]))
    assert snapshot(state, 2) == [(5, 3.0, 5), (100, 2.0, 100)]


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        qc.check(QCState(), Limits(), np.array([0, 1]), np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError):
        qc.check(QCState(), Limits(), np.array([-1]), np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError):
        Limits().set(-1)
    with pytest.raises(ValueError):
        Limits().set(0, role=3)
    with pytest.raises(ValueError):
        Limits().set(0, max_persist_ms=-1)


def test_empty_batch() -> None:
    state = QCState()
    out = qc.check(state, Limits(), np.array([], np.int64), np.array([], np.int64), np.array([]))
    assert out.dtype == np.int64 and out.shape == (0,)
    qc.rebuild(state, Limits(), [], [], [])
    qc.advance(state, [], [], [], [])


def test_ensure_grows_and_keeps_entries() -> None:
    lim = Limits()
    lim.set(2, lo=1.0)
    lim.ensure(100)
    assert len(lim.lo) >= 100 and lim.lo[2] == 1.0 and math.isnan(lim.lo[50])
    state = QCState()
    state.ensure(10)
    assert len(state.last_time) >= 10 and (state.last_time == qc.NO_TIME).all()


def test_vectorized_speed() -> None:
    rng = np.random.default_rng(1)
    n_series, n = 5000, 400_000
    lim = Limits()
    lim.ensure(n_series)
    lim.lo[:] = -50.0
    lim.hi[:] = 50.0
    lim.max_rate[:] = 1.0
    lim.max_persist_ms[:] = 60_000
    lim.role[: n_series // 2 : 2] = SPEED
    lim.role[1 : n_series // 2 : 2] = GUST
    lim.group[:] = np.arange(n_series) // 2
    s = rng.integers(0, n_series, n)
    t = rng.integers(0, 3_600_000, n) // 1000 * 1000
    v = np.round(rng.normal(0, 20, n))
    state = QCState()
    start = time.perf_counter()
    flags = qc.check(state, lim, s, t, v)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert set(np.unique(flags & RANGE)) == {0, RANGE}


# -- reference model and properties ----------------------------------------------------------


@dataclass
class Cfg:
    lo: float
    hi: float
    max_rate: float
    max_persist_ms: int
    role: int
    group: int


def model_batch(
    state: dict[int, tuple[int, float, int]],
    cfg: dict[int, Cfg],
    rows: list[tuple[int, int, float]],
    factor: float = 2.5,
    min_speed: float = 2.5,
) -> list[int]:
    """A plain-Python statement of the QC semantics (one batch; mutates ``state``)."""
    none = Cfg(NAN, NAN, NAN, 0, 0, -1)
    flags = [0] * len(rows)
    ok: list[int] = []
    for i, (s, _, v) in enumerate(rows):
        c = cfg.get(s, none)
        if math.isnan(v):
            continue
        if v < c.lo or v > c.hi:
            flags[i] = RANGE
        else:
            ok.append(i)
    for s in sorted({rows[i][0] for i in ok}):
        c = cfg.get(s, none)
        mine = sorted((i for i in ok if rows[i][0] == s), key=lambda i: (rows[i][1], i))
        st_ = state.get(s)
        back = [i for i in mine if st_ is not None and rows[i][1] < st_[0]]
        fwd = [i for i in mine if i not in back]
        for seq, prev in ((back, None), (fwd, st_)):
            for i in seq:
                _, t, v = rows[i]
                since = t
                if prev is not None:
                    pt, pv, ps = prev
                    dt = t - pt
                    if dt > 0 and abs(v - pv) * 1000.0 > c.max_rate * dt:
                        flags[i] |= RATE
                    if v == pv:
                        since = ps
                        if c.max_persist_ms > 0 and t - since > c.max_persist_ms:
                            flags[i] |= PERS
                prev = (t, v, since)
            if seq is fwd and prev is not None:
                state[s] = prev
    for i in ok:
        for j in ok:
            ci, cj = cfg.get(rows[i][0], none), cfg.get(rows[j][0], none)
            if not (ci.role == SPEED and cj.role == GUST):
                continue
            if ci.group != cj.group or rows[i][1] != rows[j][1]:
                continue
            sp, gu = rows[i][2], rows[j][2]
            if sp > gu:
                flags[i] |= MAXGUST
                flags[j] |= MAXGUST
            if sp >= min_speed and gu > factor * sp:
                flags[i] |= GUSTFACTOR
                flags[j] |= GUSTFACTOR
    return flags


N_SERIES = 6
maybe_nan = st.one_of(st.just(NAN), st.floats(-20, 20, allow_nan=False))
cfgs = st.builds(
    Cfg,
    lo=maybe_nan,
    hi=maybe_nan,
    max_rate=st.one_of(st.just(NAN), st.sampled_from([0.0, 0.5, 1.0, 3.0])),
    max_persist_ms=st.sampled_from([0, 0, 1000, 2500]),
    role=st.sampled_from([0, SPEED, GUST]),
    group=st.integers(0, 1),
)
row = st.tuples(
    st.integers(0, N_SERIES),  # N_SERIES itself is never configured
    st.integers(0, 12).map(lambda t: t * 500),
    st.one_of(st.just(NAN), st.integers(-8, 12).map(lambda x: x / 2)),
)


def make_limits(cfg: dict[int, Cfg]) -> Limits:
    lim = Limits()
    for s, c in cfg.items():
        lim.set(s, c.lo, c.hi, c.max_rate, c.max_persist_ms, c.role, c.group)
    return lim


def as_arrays(rows: Sequence[tuple[int, int, float]]) -> tuple[np.ndarray, ...]:
    return (
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
    )


def model_state_matches(state: QCState, model: dict[int, tuple[int, float, int]]) -> None:
    state.ensure(N_SERIES + 1)
    for s in range(N_SERIES + 1):
        got = (int(state.last_time[s]), float(state.last_value[s]), int(state.same_since[s]))
        if s in model:
            assert got == model[s]
        else:
            assert got[0] == qc.NO_TIME


@settings(max_examples=100, deadline=None)
@given(
    cfg=st.lists(cfgs, min_size=N_SERIES, max_size=N_SERIES),
    batches=st.lists(st.lists(row, max_size=14), max_size=5),
    commit_later=st.sampled_from(["now", "advance", "planned"]),
)
def test_matches_reference_model(
    cfg: list[Cfg], batches: list[list[tuple[int, int, float]]], commit_later: str
) -> None:
    """Arbitrary batches (unordered, with backfill, NaN, ties) agree with the reference model,
    the state moved by ``check``, by ``advance`` after it, or by the plan ``check_planned``
    gave (``advance_planned``)."""
    config = dict(enumerate(cfg))
    lim = make_limits(config)
    state = QCState()
    model: dict[int, tuple[int, float, int]] = {}
    for batch in batches:
        expected = model_batch(model, config, batch)
        s, t, v = as_arrays(batch)
        if commit_later == "advance":
            flags = qc.check(state, lim, s, t, v, commit=False)
            qc.advance(state, s, t, v, flags)
        elif commit_later == "planned":
            flags, plan = qc.check_planned(state, lim, s, t, v)
            qc.advance_planned(state, plan)
        else:
            flags = qc.check(state, lim, s, t, v)
        assert flags.tolist() == expected
        model_state_matches(state, model)


def split(
    rows: list[tuple[int, int, float]], cuts: list[int]
) -> list[list[tuple[int, int, float]]]:
    bounds = [0, *sorted(c % (len(rows) + 1) for c in cuts), len(rows)]
    return [rows[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def stream_flags(lim: Limits, batches: list[list[tuple[int, int, float]]]) -> list[int]:
    state = QCState()
    out: list[int] = []
    for b in batches:
        out += qc.check(state, lim, *as_arrays(b)).tolist()
    return out


@settings(max_examples=100, deadline=None)
@given(
    cfg=st.lists(cfgs, min_size=N_SERIES, max_size=N_SERIES),
    rows=st.lists(row, max_size=40),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
)
def test_batch_splitting_property(
    cfg: list[Cfg], rows: list[tuple[int, int, float]], cuts: list[int]
) -> None:
    """A time-ordered stream gives the same flags however it is cut into batches (wind pairs are
    per batch, so without wind roles the cuts are arbitrary, with them they fall between times),
    and rebuild() from a prefix then checking the rest gives the uninterrupted run's flags."""
    rows = sorted(rows, key=lambda r: r[1])  # stable: ties keep their order
    config = dict(enumerate(cfg))
    no_wind = {s: Cfg(c.lo, c.hi, c.max_rate, c.max_persist_ms, 0, 0) for s, c in config.items()}
    for conf, time_cuts in ((no_wind, False), (config, True)):
        lim = make_limits(conf)
        whole = stream_flags(lim, [rows])
        if time_cuts:
            starts = [i for i in range(1, len(rows)) if rows[i][1] != rows[i - 1][1]]
            my_cuts = [starts[c % len(starts)] for c in cuts] if starts else []
        else:
            my_cuts = cuts
        assert stream_flags(lim, split(rows, my_cuts)) == whole
        for cut in my_cuts or [0]:
            k = cut % (len(rows) + 1)
            state = QCState()
            qc.rebuild(state, lim, *as_arrays(rows[:k]))
            rest = qc.check(state, lim, *as_arrays(rows[k:])).tolist() if rows[k:] else []
            assert rest == whole[k:]
