"""Vectorized quality control of observation batches (pure: numpy in, numpy out).

The five basic checks, as bits of the stored flag mask (the order of ``batch.QC_NAMES``):

====================  =====  ===============================================================
``RANGE``             1      ``sl_range_check``: ``value < lo`` or ``value > hi``.
``RATE``              2      ``sl_rate_check``: ``|value - prev| / dt_seconds > max_rate``.
``PERS``              4      ``sl_pers_check``: ``value == prev`` and
                             ``time - same_since > max_persist_ms``.
``MAXGUST``           8      ``sl_windspd_maxgust_check``: wind speed > wind gust.
``GUSTFACTOR``        16     ``sl_wind_gust_factor_check``: gust > factor * speed.
====================  =====  ===============================================================

Semantics (decisions, all covered by ``tests/core/test_qc.py``):

* NaN values (null or non-numeric observations) get no flags and take no part in any check.
* Range is the single entry point: a row that fails it gets only ``RANGE``, and takes no further
  part in QC (it is not the "previous value" of the next row, does not pair in the wind checks, and
  never moves the state). NaN limits mean no limit.
* The *chain* of a series is its QC-eligible rows (finite, range-passed) in time order; rows of
  one batch may come in any order and with several times per series (ties keep input order).
  ``prev`` of a row is the row before it in the chain; for the first row of a batch it is the
  state's last value (carried across batches), if the row is not older than the state.
* Backfill: rows older than the state's ``last_time`` are checked against their neighbours within
  the batch only (the oldest of them has no ``prev``) and never move the state. A row at exactly
  ``last_time`` is not backfill (it continues the chain, with ``dt == 0``).
* Rate: skipped when ``dt <= 0`` or ``max_rate`` is NaN; evaluated as
  ``|value - prev| * 1000 > max_rate * dt_ms`` (``max_rate`` is per second).
* Persistence: ``same_since`` is the time of the first row of the current run of exactly equal
  values (carried across batches by the state); the first row of a run is never flagged;
  ``max_persist_ms == 0`` disables the check.
* Wind: rows with ``role`` 1 (speed) and 2 (gust) pair when they share ``group`` (the device) and
  time *within one batch* (a device's observations of one time arrive together). Every violating
  pair flags BOTH rows: ``MAXGUST`` when speed > gust; ``GUSTFACTOR`` when
  ``gust > gust_factor * speed`` and ``speed >= gust_min_speed`` (defaults 2.5 and 2.5, in the
  stored unit, m/s). With several speeds or gusts at one (group, time), every pair is considered.
* ``check(commit=False)`` never mutates anything; ``advance(..., flags)`` then moves the state
  exactly as ``check(commit=True)`` would have. ``rebuild`` resets the series it is given and
  replays their rows, which equals running ``check(commit=True)`` over them in time order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from streamgauge.domain.qcstate import NO_TIME as NO_TIME
from streamgauge.domain.qcstate import QCState as QCState
from streamgauge.domain.qcstate import grow as _grow

RANGE, RATE, PERS, MAXGUST, GUSTFACTOR = 1, 2, 4, 8, 16

ROLE_OTHER, ROLE_WIND_SPEED, ROLE_WIND_GUST = 0, 1, 2


I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
Bool = npt.NDArray[np.bool_]

_S = TypeVar("_S", bound=np.generic)


def _take(arr: npt.NDArray[_S], idx: I64, fill: Any) -> npt.NDArray[_S]:
    """``arr[idx]``, with ``fill`` for indices beyond the end (series not yet configured)."""
    inside = idx < len(arr)
    if inside.all():
        return arr[idx]
    out = np.full(len(idx), fill, dtype=arr.dtype)
    out[inside] = arr[idx[inside]]
    return out


@dataclass
class Limits:
    """Per-series QC configuration, indexed by series pk (dense ints)."""

    lo: F64 = field(default_factory=lambda: np.empty(0, np.float64))
    hi: F64 = field(default_factory=lambda: np.empty(0, np.float64))
    max_rate: F64 = field(default_factory=lambda: np.empty(0, np.float64))
    max_persist_ms: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    role: I8 = field(default_factory=lambda: np.empty(0, np.int8))
    group: I64 = field(default_factory=lambda: np.empty(0, np.int64))

    def ensure(self, size: int) -> None:
        """Grow the arrays to hold at least ``size`` series (new series: no limits)."""
        self.lo = _grow(self.lo, size, np.nan)
        self.hi = _grow(self.hi, size, np.nan)
        self.max_rate = _grow(self.max_rate, size, np.nan)
        self.max_persist_ms = _grow(self.max_persist_ms, size, 0)
        self.role = _grow(self.role, size, ROLE_OTHER)
        self.group = _grow(self.group, size, -1)

    def set(
        self,
        series_pk: int,
        lo: float = np.nan,
        hi: float = np.nan,
        max_rate: float = np.nan,
        max_persist_ms: int = 0,
        role: int = ROLE_OTHER,
        group: int = -1,
    ) -> None:
        """Configure one series (NaN / 0 = no limit; role 0 other, 1 wind speed, 2 wind gust)."""
        if series_pk < 0:
            raise ValueError(f"series pk must be >= 0, got {series_pk}")
        if role not in (ROLE_OTHER, ROLE_WIND_SPEED, ROLE_WIND_GUST):
            raise ValueError(f"role must be 0, 1 or 2, got {role}")
        if max_persist_ms < 0:
            raise ValueError(f"max_persist_ms must be >= 0, got {max_persist_ms}")
        self.ensure(series_pk + 1)
        self.lo[series_pk] = lo
        self.hi[series_pk] = hi
        self.max_rate[series_pk] = max_rate
        self.max_persist_ms[series_pk] = max_persist_ms
        self.role[series_pk] = role
        self.group[series_pk] = group


class _Chain(NamedTuple):
    """The QC-eligible rows of a batch sorted by (series, time), with their predecessors."""

    rows: I64  # index into the batch
    series: I64
    times: I64
    values: F64
    forward: Bool  # not older than the state's last_time (may move the state)
    has_prev: Bool
    prev_time: I64
    prev_value: F64
    same: Bool  # value == prev value
    since: I64  # same_since of this row


def _columns(
    series: npt.ArrayLike, times: npt.ArrayLike, values: npt.ArrayLike
) -> tuple[I64, I64, F64]:
    s = np.asarray(series, dtype=np.int64)
    t = np.asarray(times, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    if not (s.ndim == t.ndim == v.ndim == 1 and len(s) == len(t) == len(v)):
        raise ValueError("series, times and values must be 1-d arrays of one length")
    if len(s) and s.min() < 0:
        raise ValueError("series pks must be >= 0")
    return s, t, v


def _chain(state: QCState, series: I64, times: I64, values: F64, eligible: Bool) -> _Chain:
    rows = np.flatnonzero(eligible).astype(np.int64)
    order = np.lexsort((times[rows], series[rows]))  # stable: ties keep input order
    rows = rows[order]
    s, t, v = series[rows], times[rows], values[rows]
    n = len(rows)
    st_time = _take(state.last_time, s, NO_TIME)
    forward = t >= st_time
    first = np.ones(n, dtype=np.bool_)
    first[1:] = (s[1:] != s[:-1]) | (forward[1:] != forward[:-1])
    from_state = first & forward & (st_time != NO_TIME)
    prev_time = np.empty(n, dtype=np.int64)
    prev_value = np.empty(n, dtype=np.float64)
    prev_time[1:] = t[:-1]
    prev_value[1:] = v[:-1]
    prev_time[from_state] = st_time[from_state]
    prev_value[from_state] = _take(state.last_value, s[from_state], np.nan)
    has_prev = ~first | from_state
    same = has_prev & (v == prev_value)
    # A run of equal values starts at an anchor: a row unequal to its prev, or the first row of a
    # chain segment (which carries the state's same_since when it continues the state's run).
    anchor = first | ~same
    anchor_since = t.copy()
    cont = first & same
    anchor_since[cont] = _take(state.same_since, s[cont], NO_TIME)
    pos = np.maximum.accumulate(np.where(anchor, np.arange(n), 0)) if n else np.empty(0, np.int64)
    since = anchor_since[pos]
    return _Chain(rows, s, t, v, forward, has_prev, prev_time, prev_value, same, since)


def _commit(state: QCState, chain: _Chain) -> None:
    s = chain.series
    if not len(s):
        return
    last = np.ones(len(s), dtype=np.bool_)
    last[:-1] = s[:-1] != s[1:]
    last &= chain.forward  # backfill rows sort before forward ones: never move the state
    state.ensure(int(s.max()) + 1)
    ls = s[last]
    state.last_time[ls] = chain.times[last]
    state.last_value[ls] = chain.values[last]
    state.same_since[ls] = chain.since[last]


def _range_fail(limits: Limits, series: I64, values: F64) -> Bool:
    lo = _take(limits.lo, series, np.nan)
    hi = _take(limits.hi, series, np.nan)
    fail: Bool = (values < lo) | (values > hi)  # NaN on either side compares False
    return fail


def _wind(
    limits: Limits,
    series: I64,
    times: I64,
    values: F64,
    eligible: Bool,
    gust_factor: float,
    gust_min_speed: float,
) -> I64:
    flags = np.zeros(len(series), dtype=np.int64)
    role = _take(limits.role, series, ROLE_OTHER)
    rows = np.flatnonzero(eligible & (role != ROLE_OTHER))
    if not len(rows):
        return flags
    g = _take(limits.group, series[rows], -1)
    t = times[rows]
    order = np.lexsort((t, g))
    rows, g, t = rows[order], g[order], t[order]
    v = values[rows]
    is_speed = role[rows] == ROLE_WIND_SPEED
    is_gust = ~is_speed
    boundary = np.ones(len(rows), dtype=np.bool_)
    boundary[1:] = (g[1:] != g[:-1]) | (t[1:] != t[:-1])
    starts = np.flatnonzero(boundary)
    key = np.cumsum(boundary) - 1
    inf = np.inf
    min_gust = np.minimum.reduceat(np.where(is_gust, v, inf), starts)[key]
    max_gust = np.maximum.reduceat(np.where(is_gust, v, -inf), starts)[key]
    max_speed = np.maximum.reduceat(np.where(is_speed, v, -inf), starts)[key]
    windy = is_speed & (v >= gust_min_speed)
    min_windy_speed = np.minimum.reduceat(np.where(windy, v, inf), starts)[key]
    maxgust = (is_speed & (v > min_gust)) | (is_gust & (v < max_speed))
    factor = (windy & (max_gust > gust_factor * v)) | (
        is_gust & (v > gust_factor * min_windy_speed)
    )
    flags[rows] = np.where(maxgust, MAXGUST, 0) | np.where(factor, GUSTFACTOR, 0)
    return flags


def check(
    state: QCState,
    limits: Limits,
    series: npt.ArrayLike,
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    *,
    gust_factor: float = 2.5,
    gust_min_speed: float = 2.5,
    commit: bool = True,
) -> I64:
    """The QC flag mask of each row (int64, bits ``RANGE``..``GUSTFACTOR``; 0 = passed).

    ``times`` are epoch ms; ``values`` NaN for null/non-numeric rows (never flagged). With
    ``commit`` the state advances past the batch; without it nothing is mutated (call
    ``advance(state, series, times, values, flags)`` once the batch is committed).
    """
    flags, _ = check_planned(
        state,
        limits,
        series,
        times,
        values,
        gust_factor=gust_factor,
        gust_min_speed=gust_min_speed,
        commit=commit,
    )
    return flags


class Plan(NamedTuple):
    """How the state moves past a batch (``check_planned``), as ``advance`` would find it
    while the state of the batch's series has not moved since."""

    chain: _Chain


def check_planned(
    state: QCState,
    limits: Limits,
    series: npt.ArrayLike,
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    *,
    gust_factor: float = 2.5,
    gust_min_speed: float = 2.5,
    commit: bool = False,
) -> tuple[I64, Plan]:
    """``check``, and the plan ``advance_planned`` moves the state by once the batch is
    committed: the same move as ``advance`` with these flags, without ordering the batch's
    rows again, if nothing moved the state of its series in between."""
    s, t, v = _columns(series, times, values)
    flags = np.zeros(len(s), dtype=np.int64)
    finite = ~np.isnan(v)
    range_fail = finite & _range_fail(limits, s, v)
    flags[range_fail] = RANGE
    eligible = finite & ~range_fail

    chain = _chain(state, s, t, v, eligible)
    cs = chain.series
    dt = chain.times - chain.prev_time
    max_rate = _take(limits.max_rate, cs, np.nan)
    moved = np.abs(chain.values - chain.prev_value) * 1000.0
    rate = chain.has_prev & (dt > 0) & (moved > max_rate * dt)
    max_persist = _take(limits.max_persist_ms, cs, 0)
    pers = chain.same & (max_persist > 0) & (chain.times - chain.since > max_persist)
    flags[chain.rows] |= np.where(rate, RATE, 0) | np.where(pers, PERS, 0)

    flags |= _wind(limits, s, t, v, eligible, gust_factor, gust_min_speed)
    if commit:
        _commit(state, chain)
    return flags, Plan(chain)


def advance_planned(state: QCState, plan: Plan) -> None:
    """Move the state past a committed batch by the plan ``check_planned`` gave for it."""
    _commit(state, plan.chain)


def advance(
    state: QCState,
    series: npt.ArrayLike,
    times: npt.ArrayLike,
    values: npt.ArrayLike,
    flags: npt.ArrayLike,
) -> None:
    """Move the state past a committed batch, given the ``flags`` ``check(commit=False)`` gave.

    The flags are needed because range failures take no part in the chain; only their ``RANGE``
    bit is read. Equivalent to having called ``check(commit=True)`` on the batch.
    """
    s, t, v = _columns(series, times, values)
    f = np.asarray(flags, dtype=np.int64)
    if f.shape != s.shape:
        raise ValueError("flags must have one entry per row")
    _commit(state, _chain(state, s, t, v, ~np.isnan(v) & (f & RANGE == 0)))


def rebuild(
    state: QCState,
    limits: Limits,
    series: npt.ArrayLike,
    times: npt.ArrayLike,
    values: npt.ArrayLike,
) -> None:
    """Rebuild the state of the series present in the rows from their history (any order).

    The state of those series is reset first, then it equals what ``check(commit=True)`` over the
    same rows in time order (in any batches) would have left. Other series are untouched.
    """
    s, t, v = _columns(series, times, values)
    state.reset(np.unique(s))
    finite = ~np.isnan(v)
    eligible = finite & ~_range_fail(limits, s, v)
    _commit(state, _chain(state, s, t, v, eligible))
