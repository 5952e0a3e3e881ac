"""The alert rule engine, pure: (state, observations, now) -> (state, firings). No I/O, no clock.

A trigger's lifecycle is a table (``TRANSITIONS``), as h11 keeps its states::

    state     BREACH    HELD      CLEAR
    OK        PENDING   -         OK
    PENDING   PENDING   FIRING    OK
    FIRING    FIRING    FIRING    RESOLVED
    RESOLVED  FIRING    -         OK

* BREACH: a sample satisfies the condition. HELD: it has been satisfied for the trigger's
  ``for_ms`` (0: at once, so OK -> PENDING -> FIRING on one sample). CLEAR: a sample does not.
* Entering FIRING fires an alert, unless the trigger's ``cooldown_ms`` has not passed since its
  last alert (a value hovering at the threshold does not flood receivers). Staying FIRING does
  not fire again (edge-triggered).
* Hysteresis (ordering operators): once FIRING, a sample clears only beyond the threshold moved
  by ``hysteresis`` toward the OK side (``> 90`` with hysteresis 2 clears below 88).
* Deadman: BREACH when no data arrived for ``seconds`` (judged on ``tick``), CLEAR on data.
  Across a restart the clock pauses for the time the server was down (``resume_deadman``).

Times: ``now_ms`` (the caller's clock) decides pending and cooldown; each firing reports the
observation's own time and value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from streamgauge.core.filterlang import evaluate, sensors
from streamgauge.domain.alerts import State as State  # re-exported: the rules' state types
from streamgauge.domain.alerts import TriggerState as TriggerState
from streamgauge.domain.filters import Cond, Expr, Op


class Event(StrEnum):
    BREACH = "BREACH"
    HELD = "HELD"
    CLEAR = "CLEAR"


class IllegalTransition(ValueError):
    pass


TRANSITIONS: Mapping[tuple[State, Event], State] = {
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


def transition(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event.value} is not allowed in state {state.value}") from None


# -- conditions ---------------------------------------------------------------------------------

ORDERING: frozenset[str] = frozenset({">", ">=", "<", "<="})


@dataclass(frozen=True, slots=True)
class Threshold:
    op: Op
    value: float
    hysteresis: float = 0.0

    def held_value(self) -> float:
        """The threshold a FIRING trigger is judged against (moved toward the OK side)."""
        if self.op in (">", ">="):
            return self.value - self.hysteresis
        if self.op in ("<", "<="):
            return self.value + self.hysteresis
        return self.value


@dataclass(frozen=True, slots=True)
class Expression:
    expr: Expr  # over the variable ids of one instrument, judged per report (one time)


@dataclass(frozen=True, slots=True)
class Deadman:
    seconds: float


Condition = Threshold | Expression | Deadman


@dataclass(frozen=True, slots=True)
class Rule:
    condition: Condition
    for_ms: int = 0
    cooldown_ms: int = 0


@dataclass(frozen=True, slots=True)
class Firing:
    index: int  # of the sample in the input (-1: a deadman tick)
    time_ms: int  # the observation's time (deadman: now)
    value: float | str | None
    sensor: str | None = None  # expression triggers: the sensor whose value is reported


@dataclass(frozen=True, slots=True)
class Step:
    state: TriggerState
    fired: bool
    suppressed: bool = False  # entered FIRING inside the cooldown


def step(rule: Rule, st: TriggerState, satisfied: bool, now_ms: int) -> Step:
    """One sample (or tick) through the table."""
    if not satisfied:
        return Step(replace(st, state=transition(st.state, Event.CLEAR), since_ms=None), False)
    state = transition(st.state, Event.BREACH)
    since = st.since_ms if st.since_ms is not None else now_ms
    fired = suppressed = False
    last = st.last_alert_ms
    if state is State.PENDING and now_ms - since >= rule.for_ms:
        state = transition(state, Event.HELD)
    if state is State.FIRING and st.state is not State.FIRING:
        if last is None or now_ms - last >= rule.cooldown_ms:
            fired, last = True, now_ms
        else:
            suppressed = True
    return Step(TriggerState(state, since, last, st.last_seen_ms), fired, suppressed)


# -- batches ------------------------------------------------------------------------------------

_COMPARE = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
    "=": np.equal,
    "!=": np.not_equal,
}


def compare(op: str, values: npt.NDArray[np.float64], threshold: float) -> npt.NDArray[np.bool_]:
    """``values op threshold`` per element; NaN (text, null) never satisfies."""
    with np.errstate(invalid="ignore"):
        out: npt.NDArray[np.bool_] = _COMPARE[op](values, threshold) & ~np.isnan(values)
    return out


@dataclass
class Outcome:
    state: TriggerState
    firings: list[Firing] = field(default_factory=list)
    suppressed: int = 0


def run_threshold(
    rule: Rule,
    st: TriggerState,
    numeric: npt.NDArray[np.float64],
    raw: Sequence[float | str | None],
    times: npt.NDArray[np.int64],
    now_ms: int,
) -> Outcome:
    """A threshold trigger over its samples (in arrival order). Vectorized comparisons; the
    table is walked only when a sample can change the state."""
    cond = rule.condition
    assert isinstance(cond, Threshold)
    strict = compare(cond.op, numeric, cond.value)
    held = compare(cond.op, numeric, cond.held_value()) if cond.hysteresis else strict
    out = Outcome(st)
    if st.state is State.OK and not strict.any():
        return out
    if st.state is State.FIRING and held.all():
        return out
    for i in range(len(numeric)):
        s = out.state
        satisfied = bool(held[i]) if s.state is State.FIRING else bool(strict[i])
        r = step(rule, s, satisfied, now_ms)
        out.state = r.state
        if r.fired:
            out.firings.append(Firing(i, int(times[i]), raw[i]))
        out.suppressed += r.suppressed
    return out


def run_expression(
    rule: Rule,
    st: TriggerState,
    sensor_names: Sequence[str],
    numeric: npt.NDArray[np.float64],
    raw: Sequence[float | str | None],
    times: npt.NDArray[np.int64],
    now_ms: int,
) -> Outcome:
    """An expression trigger over one instrument's samples: each distinct time is a report,
    judged by the filter language's columnar ``evaluate``, reports in time order."""
    cond = rule.condition
    assert isinstance(cond, Expression)
    out = Outcome(st)
    if not len(times):
        return out
    uniq, report = np.unique(times, return_inverse=True)
    codes: dict[str, int] = {}
    sensor_codes = np.array([codes.setdefault(n, len(codes)) for n in sensor_names], np.int64)
    passing = evaluate(cond.expr, report, sensor_codes, codes, numeric, len(uniq))
    first = _first_sensor(cond.expr)
    for r in range(len(uniq)):
        rows = np.flatnonzero(report == r)
        r_ok = bool(passing[rows[0]])
        res = step(rule, out.state, r_ok, now_ms)
        out.state = res.state
        if res.fired:
            pick = next((i for i in rows.tolist() if sensor_names[i] == first), int(rows[0]))
            out.firings.append(Firing(pick, int(uniq[r]), raw[pick], sensor_names[pick]))
        out.suppressed += res.suppressed
    return out


def _first_sensor(expr: Expr) -> str:
    while not isinstance(expr, Cond):
        expr = expr.left
    return expr.sensor


def expression_sensors(expr: Expr) -> set[str]:
    return sensors(expr)


def seen(st: TriggerState, now_ms: int) -> TriggerState:
    """Deadman: data arrived now (clears a breach)."""
    r = replace(st, last_seen_ms=now_ms)
    if st.state is State.OK:
        return r
    return replace(r, state=transition(st.state, Event.CLEAR), since_ms=None)


def tick_deadman(rule: Rule, st: TriggerState, now_ms: int) -> Outcome:
    """Deadman on a clock tick: BREACH when nothing arrived for ``seconds``."""
    cond = rule.condition
    assert isinstance(cond, Deadman)
    last = st.last_seen_ms if st.last_seen_ms is not None else now_ms
    if st.last_seen_ms is None:
        st = replace(st, last_seen_ms=now_ms)
    if now_ms - last < cond.seconds * 1000:
        return Outcome(st)
    if st.state is State.FIRING:
        return Outcome(st)
    r = step(rule, st, True, now_ms)
    out = Outcome(r.state, suppressed=int(r.suppressed))
    if r.fired:
        out.firings.append(Firing(-1, now_ms, None))
    return out


def resume_deadman(st: TriggerState, paused_ms: int) -> TriggerState:
    """Deadman after a restart: the server was down for ``paused_ms``. Down time is not counted
    as silence (the clock pauses): a source silent for 50 of its 60 minutes when the server
    stopped fires 10 minutes after the restart, and a long outage does not fire every deadman
    at once (sources could not deliver while the server was down)."""
    if st.last_seen_ms is None or paused_ms <= 0:
        return st
    return replace(st, last_seen_ms=st.last_seen_ms + paused_ms)


def parse_duration(text: object, field: str) -> float:
    """``30s``, ``5m``, ``1h``, ``2d``, ``1w``, ``500ms`` (Tapis/InfluxDB durations; ``mo``/``y``
    as 30 and 365 days) or a number of seconds -> seconds."""
    from streamgauge.domain.errors import Invalid

    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    units |= {"d": 86400.0, "w": 604800.0, "mo": 2592000.0, "y": 31536000.0}
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        s = text.strip()
        num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = s[len(num) :] or "s"
        try:
            seconds = float(num) * units[unit]
        except (ValueError, KeyError):
            raise Invalid(
                f"bad duration {text!r}",
                [{"field": field, "reason": "a number and one of ns us ms s m h d w mo y"}],
            ) from None
    else:
        raise Invalid(f"bad duration {text!r}", [{"field": field, "reason": "e.g. 30s or 5m"}])
    if not math.isfinite(seconds) or seconds < 0:
        raise Invalid(
            f"bad duration {text!r}", [{"field": field, "reason": "finite, not negative"}]
        )
    return seconds
