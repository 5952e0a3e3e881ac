"""The duplicate/conflict rule as pure functions (``core.dedupe``): ``screen`` on the batch's
keys and each series' latest stored time, ``settle`` with what the store found."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamgauge.core import qc
from streamgauge.core.dedupe import LogRules, screen, settle
from streamgauge.core.registry import Registry


def cols(*rows: tuple[int, int, Any]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    series, times, values = zip(*rows, strict=True)
    return np.array(series, np.int64), np.array(times, np.int64), list(values)


def test_rows_newer_than_the_latest_are_new_without_a_probe() -> None:
    s, t, v = cols((0, 10, 1.0), (0, 11, 2.0), (1, 5, 3.0))
    sc = screen(s, t, v, np.array([9, 9, 4], np.int64))
    assert sc.keep.tolist() == [True, True, True]
    assert sc.probe.tolist() == [] and sc.conflicts == []
    verdict = settle(sc, s, t, v, {})
    assert verdict.keep.tolist() == [0, 1, 2]
    assert (verdict.duplicates, verdict.conflicts) == (0, [])


def test_a_repeat_inside_the_batch_is_a_duplicate_or_a_conflict() -> None:
    s, t, v = cols((0, 10, 1.0), (0, 10, 1.0), (0, 10, 2.0), (1, 10, 1.0))
    sc = screen(s, t, v, np.full(4, -1, np.int64))
    assert sc.duplicate.tolist() == [False, True, True, False]
    assert sc.conflicts == [{"index": 2, "reason": "repeats row 0 with a different value"}]
    verdict = settle(sc, s, t, v, {})
    assert verdict.keep.tolist() == [0, 3]
    assert verdict.duplicates == 2
    assert [c["index"] for c in verdict.conflicts] == [2]


def test_rows_not_newer_than_the_latest_are_judged_by_what_is_stored() -> None:
    s, t, v = cols((0, 5, 1.0), (0, 6, "x"), (0, 7, 3.0), (0, 20, 4.0))
    sc = screen(s, t, v, np.full(4, 10, np.int64))
    assert sc.probe.tolist() == [0, 1, 2]
    verdict = settle(sc, s, t, v, {(0, 5): 1.0, (0, 6): "y"})  # (0, 7) not stored
    assert verdict.keep.tolist() == [2, 3]
    assert verdict.duplicates == 1
    assert verdict.conflicts == [
        {"index": 1, "reason": "an observation with this key is stored with value 'y'"}
    ]


def test_conflicts_come_sorted_by_row_and_settle_leaves_the_screen_alone() -> None:
    s, t, v = cols((0, 5, 9.0), (0, 20, 1.0), (0, 20, 2.0))
    sc = screen(s, t, v, np.full(3, 10, np.int64))
    verdict = settle(sc, s, t, v, {(0, 5): 1.0})
    assert [c["index"] for c in verdict.conflicts] == [0, 2]
    assert sc.keep.tolist() == [False, True, False]  # not mutated by settle
    assert settle(sc, s, t, v, {}).keep.tolist() == [0, 1]


def test_log_rules_flag_without_moving_the_state_then_advance() -> None:
    reg = Registry()
    reg.qc_limits.set(0, lo=0.0, hi=10.0)
    rules = LogRules(reg)
    s = np.array([0, 0], np.int64)
    t = np.array([1000, 2000], np.int64)
    x = np.array([5.0, 50.0])
    flags = rules.flag(s, t, x)
    assert flags.tolist() == [0, qc.RANGE]
    before = reg.qc_state.last_time.copy()
    rules.flag(s, t, x)
    assert np.array_equal(reg.qc_state.last_time, before)
    rules.advance(s, t, x, flags)
    assert int(reg.qc_state.last_time[0]) == 1000  # the range failure does not move it
    off = LogRules(Registry(), quality_control=False)
    assert off.flag(s, t, x).tolist() == [0, 0]


def test_log_rules_advance_by_plan_or_by_rows_moves_the_state_alike() -> None:
    """``advance`` of the arrays ``flag`` had uses its plan; other arrays (copies, a batch
    flagged long ago) are checked again: the state ends the same either way."""
    states = []
    for same_arrays in (True, False):
        rng = np.random.default_rng(3)  # the same batches both times
        reg = Registry()
        for k in range(4):
            reg.qc_limits.set(k, lo=0.0, hi=10.0, max_rate=2.0, max_persist_ms=3000)
        rules = LogRules(reg)
        for _ in range(40):  # some batches never advanced (their transaction failed)
            s = rng.integers(0, 4, 6).astype(np.int64)
            t = rng.integers(0, 20, 6).astype(np.int64) * 1000
            x = rng.integers(0, 12, 6).astype(np.float64)
            flags = rules.flag(s, t, x)
            if rng.random() < 0.2:
                continue
            if same_arrays:
                rules.advance(s, t, x, flags)
            else:
                rules.advance(s.copy(), t.copy(), x.copy(), flags.copy())
        st = reg.qc_state
        states.append((st.last_time.tolist(), st.last_value.tolist(), st.same_since.tolist()))
        assert len(rules._plans) <= 16
    assert states[0] == states[1]


def test_log_rules_replay_moves_the_state_like_a_commit() -> None:
    reg = Registry()
    rules = LogRules(reg)
    rules.replay(np.array([3], np.int64), np.array([500], np.int64), np.array([1.5]))
    assert int(reg.qc_state.last_time[3]) == 500
    assert float(reg.qc_state.last_value[3]) == 1.5
