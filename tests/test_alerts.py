"""The pure rule engine: the lifecycle table, thresholds with every operator, hysteresis,
cooldown, pending (for), expressions and deadman; no loop, no socket, no clock."""

from __future__ import annotations

import numpy as np
import pytest

from streamgauge.core import alerts as a
from streamgauge.core.alerts import Event, State
from streamgauge.core.filterlang import parse_filter_on
from streamgauge.domain.errors import Invalid


def test_the_table_lists_every_legal_transition_and_refuses_the_rest() -> None:
    assert a.TRANSITIONS == {
        (State.OK, Event.BREACH): State.PENDING,
        (State.OK, Event.CLEAR): State.OK,
        (State.PENDING, Event.BREACH): State.PENDING,
        (State.PENDING, Event.HELD): State.FIRING,
        (State.PENDING, Event.CLEAR): State.OK,
        (State.FIRING, Event.BREACH): State.FIRING,
        (State.FIRING, Event.HELD): State.FIRING,
        (State.FIRING, Event.CLEAR): State.RESOLVED,
        (State.RESOLVED, Event.BREACH): State.FIRING,
        (State.RESOLVED, Event.CLEAR): State.OK,
    }
    for state, event in [(State.OK, Event.HELD), (State.RESOLVED, Event.HELD)]:
        with pytest.raises(a.IllegalTransition):
            a.transition(state, event)


def run(
    rule: a.Rule, values: list[float], st: a.TriggerState | None = None, now: int = 0
) -> a.Outcome:
    arr = np.array(values, np.float64)
    times = np.arange(len(values), dtype=np.int64) * 1000
    return a.run_threshold(rule, st or a.TriggerState(), arr, list(values), times, now)


@pytest.mark.parametrize(
    ("op", "threshold", "values", "fired_at"),
    [
        (">", 90, [80, 90, 91, 95], [2]),
        (">=", 90, [80, 90, 91], [1]),
        ("<", 10, [20, 10, 9], [2]),
        ("<=", 10, [20, 10, 9], [1]),
        ("=", 5, [4, 5, 5, 6, 5], [1, 4]),
        ("!=", 5, [5, 6, 7, 5, 4], [1, 4]),
    ],
)
def test_threshold_every_operator_fires_on_entering(
    op: a.Op, threshold: float, values: list[float], fired_at: list[int]
) -> None:
    out = run(a.Rule(a.Threshold(op, threshold)), values)
    assert [f.index for f in out.firings] == fired_at
    assert [f.value for f in out.firings] == [values[i] for i in fired_at]


def test_text_and_nan_never_satisfy() -> None:
    out = a.run_threshold(
        a.Rule(a.Threshold("!=", 1)),
        a.TriggerState(),
        np.array([np.nan, np.nan]),
        ["text", None],
        np.array([0, 1000]),
        0,
    )
    assert out.firings == [] and out.state.state is State.OK


def test_firing_resolves_then_fires_again_when_it_breaches_again() -> None:
    out = run(a.Rule(a.Threshold(">", 90)), [95, 96, 80, 81, 99])
    assert [f.index for f in out.firings] == [0, 4]
    assert out.state.state is State.FIRING
    out = run(a.Rule(a.Threshold(">", 90)), [95, 80])
    assert out.state.state is State.RESOLVED
    out = run(a.Rule(a.Threshold(">", 90)), [95, 80, 80])
    assert out.state.state is State.OK


def test_hysteresis_keeps_a_hovering_value_from_flapping() -> None:
    hovering = [91, 89.5, 90.5, 89, 91, 87.9, 91]
    plain = run(a.Rule(a.Threshold(">", 90)), hovering)
    assert [f.index for f in plain.firings] == [0, 2, 4, 6]
    damped = run(a.Rule(a.Threshold(">", 90, hysteresis=2)), hovering)
    assert [f.index for f in damped.firings] == [0, 6]  # cleared only below 88 (index 5)
    below = run(a.Rule(a.Threshold("<", 10, hysteresis=1)), [9, 10.5, 9.5, 11.5, 9])
    assert [f.index for f in below.firings] == [0, 4]


def test_cooldown_suppresses_refiring_until_it_has_passed() -> None:
    rule = a.Rule(a.Threshold(">", 90), cooldown_ms=60_000)
    out = run(rule, [95, 80, 95], now=1_000)
    assert [f.index for f in out.firings] == [0]
    assert out.suppressed == 1 and out.state.state is State.FIRING
    later = run(rule, [80, 80, 95], st=out.state, now=62_000)
    assert [f.index for f in later.firings] == [2]


def test_pending_until_the_condition_has_held_for_its_duration() -> None:
    rule = a.Rule(a.Threshold(">", 90), for_ms=10_000)
    first = run(rule, [95], now=0)
    assert first.state.state is State.PENDING and first.firings == []
    held = run(rule, [96], st=first.state, now=10_000)
    assert held.state.state is State.FIRING and len(held.firings) == 1
    cleared = run(rule, [95, 80], now=0)
    assert cleared.state.state is State.OK


def test_step_reports_one_transition() -> None:
    rule = a.Rule(a.Threshold(">", 1))
    r = a.step(rule, a.TriggerState(), True, 5)
    assert r.fired and r.state.state is State.FIRING and r.state.last_alert_ms == 5


def test_expression_is_judged_per_report() -> None:
    rule = a.Rule(a.Expression(parse_filter_on("(temp > 90) and (batv < 11)")))
    names = ["temp", "batv", "temp", "batv", "temp", "batv"]
    values = np.array([95, 12, 95, 10, 80, 10], np.float64)
    times = np.array([0, 0, 1000, 1000, 2000, 2000], np.int64)
    out = a.run_expression(rule, a.TriggerState(), names, values, list(values), times, 0)
    assert [(f.time_ms, f.sensor, f.value) for f in out.firings] == [(1000, "temp", 95.0)]
    assert out.state.state is State.RESOLVED


def test_deadman_fires_once_after_silence_and_clears_on_data() -> None:
    rule = a.Rule(a.Deadman(seconds=30))
    st = a.tick_deadman(rule, a.TriggerState(), 0).state  # the clock starts now
    assert a.tick_deadman(rule, st, 29_000).firings == []
    out = a.tick_deadman(rule, st, 30_000)
    assert [(f.index, f.time_ms) for f in out.firings] == [(-1, 30_000)]
    assert a.tick_deadman(rule, out.state, 40_000).firings == []  # still firing: no repeat
    back = a.seen(out.state, 41_000)
    assert back.state is State.RESOLVED
    assert a.tick_deadman(rule, back, 60_000).firings == []
    again = a.tick_deadman(rule, back, 71_000)
    assert len(again.firings) == 1


def test_deadman_clock_pauses_while_the_server_is_down() -> None:
    rule = a.Rule(a.Deadman(60))
    st = a.seen(a.TriggerState(), 0)
    assert a.tick_deadman(rule, st, 50_000).firings == []  # silent 50 s, then the server stops
    # Down for an hour: the clock resumes at 50 s, not at an hour and 50 s ...
    resumed = a.resume_deadman(st, 3_600_000)
    assert a.tick_deadman(rule, resumed, 3_650_000).firings == []
    # ... and fires 10 s after the restart.
    assert [f.time_ms for f in a.tick_deadman(rule, resumed, 3_660_000).firings] == [3_660_000]
    fresh = a.TriggerState()
    assert a.resume_deadman(fresh, 1000) == fresh  # no data seen yet: nothing to move


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("500ms", 0.5), (12, 12)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert a.parse_duration(text, "f") == seconds


@pytest.mark.parametrize("text", ["5x", "", "-1s", None, "s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(Invalid):
        a.parse_duration(text, "f")
