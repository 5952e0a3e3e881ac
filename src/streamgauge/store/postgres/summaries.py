"""Per-hour summaries of the log in PostgreSQL (the twin of ``store/sqlite/summaries.py``).

``obs_summary`` holds one row per (series, UTC hour, QC flag set): count, sum, min, max, first
and last of the numeric values. ``add`` folds a batch's accepted rows into it in the batch's own
transaction (one upsert statement over array parameters), so a summary is never behind the log,
whichever node appended. ``read`` returns, in the caller's read snapshot, the summaries of some
series over a time range and the raw rows of the parts whole hours cannot answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from streamgauge.domain.timeseries import (
    F64,
    HOUR_MS,
    I64,
    Points,
    Summaries,
    empty_points,
    summaries_from_rows,
    summarize,
)
from streamgauge.store.postgres.conn import Conn, Tx

_COLUMNS = "series, hour, qc, n, sum, min, max, first_time, first_value, last_time, last_value"
_TYPES = ("int8", "int8", "int8", "int8") + ("float8",) * 3 + ("int8", "float8", "int8", "float8")
_UPSERT = (
    f"INSERT INTO obs_summary ({_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _TYPES)
    + ") ON CONFLICT (series, hour, qc) DO UPDATE SET "
    "n = obs_summary.n + excluded.n, sum = obs_summary.sum + excluded.sum, "
    "min = least(obs_summary.min, excluded.min), max = greatest(obs_summary.max, excluded.max), "
    "first_value = CASE WHEN excluded.first_time < obs_summary.first_time"
    " THEN excluded.first_value ELSE obs_summary.first_value END, "
    "first_time = least(obs_summary.first_time, excluded.first_time), "
    "last_value = CASE WHEN excluded.last_time > obs_summary.last_time"
    " THEN excluded.last_value ELSE obs_summary.last_value END, "
    "last_time = greatest(obs_summary.last_time, excluded.last_time)"
)


def add(tx: Tx, series: I64, times: I64, values: F64, qc: I64) -> None:
    """Fold accepted rows (``values``: NaN where not a number) into the summaries."""
    units = summarize(series, times, values, qc)
    if units:
        tx.execute(_UPSERT, [list(col) for col in zip(*units, strict=True)])


def read_summaries(
    conn: Conn, series: Sequence[int], lo_hour: int, hi_hour: int, qc_remove: int
) -> Summaries:
    """Summary units of ``series`` with ``lo_hour <= hour < hi_hour`` whose QC flags have no
    bit of ``qc_remove``, ordered by series and hour."""
    rows = conn.execute(
        "SELECT series, hour, n, sum, min, max, first_time, first_value, last_time, last_value "
        "FROM obs_summary WHERE series = ANY(%s::int8[]) AND hour >= %s AND hour < %s"
        " AND (qc & %s) = 0 ORDER BY series, hour",
        (list(series), lo_hour, hi_hour, qc_remove),
    ).fetchall()
    return summaries_from_rows([list(r) for r in rows])


def read_points(conn: Conn, ranges: Sequence[tuple[int, int, int]], qc_remove: int) -> Points:
    """Numeric rows of (series, from, to) ranges (``from <= time < to``) without a QC flag of
    ``qc_remove``: one index range per range."""
    if not ranges:
        return empty_points()
    s, a, b = (list(col) for col in zip(*ranges, strict=True))
    rows = conn.execute(
        "SELECT o.series, o.time, o.num FROM unnest(%s::int8[], %s::int8[], %s::int8[])"
        " r(series, lo, hi) JOIN obs o ON o.series = r.series AND o.time >= r.lo"
        " AND o.time < r.hi WHERE o.num IS NOT NULL AND (o.qc & %s) = 0",
        (s, a, b, qc_remove),
    ).fetchall()
    if not rows:
        return empty_points()
    series = np.array([r[0] for r in rows], np.int64)
    times = np.array([r[1] for r in rows], np.int64)
    values = np.array([r[2] for r in rows], np.float64)
    order = np.lexsort((times, series))
    return Points(series[order], times[order], values[order])


def read(
    conn: Conn,
    series: Sequence[int],
    lo_ms: int,
    hi_ms: int,
    qc_remove: int,
    plan: Callable[[Summaries], list[tuple[int, int, int]]],
) -> tuple[Summaries, Points]:
    """The summaries of ``series`` over the hours meeting ``[lo_ms, hi_ms)``, then the raw rows
    of the ranges ``plan`` asks for given them, in the caller's read snapshot."""
    found = read_summaries(conn, series, lo_ms // HOUR_MS, -(-hi_ms // HOUR_MS), qc_remove)
    ranges = plan(found)
    return found, read_points(conn, ranges, qc_remove)


def rebuild(tx: Tx, units: Sequence[tuple[int, int]]) -> None:
    """Recompute the summaries of (series, hour) units from the rows the log holds (after
    retention removed part of an hour)."""
    for series, hour in units:
        tx.execute("DELETE FROM obs_summary WHERE series = %s AND hour = %s", (series, hour))
        rows = tx.execute(
            "SELECT time, num, qc FROM obs WHERE series = %s AND time >= %s AND time < %s",
            (series, hour * HOUR_MS, (hour + 1) * HOUR_MS),
        ).fetchall()
        if not rows:
            continue
        times = np.array([r[0] for r in rows], np.int64)
        values = np.array([np.nan if r[1] is None else float(r[1]) for r in rows], np.float64)
        qcs = np.array([r[2] for r in rows], np.int64)
        add(tx, np.full(len(rows), series, np.int64), times, values, qcs)
