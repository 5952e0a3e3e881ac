"""Per-hour summaries of the log in PostgreSQL (the twin of ``store/sqlite/summaries.py``).

``obs_summary`` holds one row per (series, UTC hour, QC flag set): count, sum, min, max, first
and last of the numeric values of the log up to the cursor ``summarized`` (``state``). An append
pays nothing for them: ``fold`` adds the rows of a cursor range in one grouped statement, run
off the append path (``PgStore``'s fold task, on whichever node takes ``SUMMARY_LOCK``; one
fold at a time across the cluster, and retention steps take the same lock). ``read`` returns,
in the caller's read snapshot, the stored summaries plus those of the rows after
``summarized`` (``tail_units``), and the raw rows of the parts whole hours cannot answer. So a
read is never behind the log, and no row is counted twice: a row is folded or after
``summarized``, never both, in any one snapshot.
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
from streamgauge.store.postgres.conn import Conn, Tx, one
from streamgauge.store.postgres.schema import LOCK_CLASS, SUMMARY_LOCK

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


# The hour of a time in ms, floored like numpy's ``//`` (times before 1970 included).
_HOUR = "((time - (((time %% 3600000) + 3600000) %% 3600000)) / 3600000)"
# The rows (after, upto] of the log folded into the summaries by (series, hour, qc), one
# statement; the numbers only (text and null have no ``num``; NaN and infinities are left out,
# as ``domain.timeseries.summarize`` leaves them out).
_FOLD = (
    f"INSERT INTO obs_summary ({_COLUMNS}) "
    f"SELECT series, {_HOUR} AS h, qc, count(*), sum(num), min(num), max(num), min(time),"
    " (array_agg(num ORDER BY time))[1], max(time), (array_agg(num ORDER BY time DESC))[1]"
    " FROM obs WHERE cursor > %s AND cursor <= %s AND num IS NOT NULL"
    " AND num NOT IN ('NaN', 'Infinity', '-Infinity') GROUP BY series, h, qc "
    + _UPSERT[_UPSERT.index("ON CONFLICT") :]
)


def lock(conn: Conn, *, wait: bool = True) -> bool:
    """Take ``SUMMARY_LOCK`` for the caller's transaction (``wait``: until it is free; else
    only if it is free now). Held while rows are folded, and by retention steps, so a fold
    never meets a retention step half done, and two nodes never fold the same rows."""
    if wait:
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, SUMMARY_LOCK))
        return True
    got = one(conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCK_CLASS, SUMMARY_LOCK)))
    return bool(got[0])


def progress(conn: Conn) -> tuple[int, int]:
    """(summarized, head): the cursor up to which the summaries hold the log, and the log's
    head, from one statement."""
    row = one(
        conn.execute(
            "SELECT (SELECT value FROM state WHERE key = 'summarized'),"
            " (SELECT value FROM state WHERE key = 'head')"
        )
    )
    return int(row[0]), int(row[1])


def fold(conn: Conn, upto: int | None = None, step: int | None = None) -> tuple[int, int]:
    """Fold the log's rows after ``summarized`` into the summaries, up to ``upto`` (default:
    the head), at most ``step`` rows, and move ``summarized``; in the caller's transaction,
    which holds ``SUMMARY_LOCK`` and runs at READ COMMITTED (each statement sees every append
    committed before it: every row up to the head read here). Returns (from, to) cursors."""
    done, head = progress(conn)
    end = head if upto is None else min(upto, head)
    if step is not None:
        end = min(end, done + step)
    if end > done:
        conn.execute(_FOLD.encode(), (done, end))
        conn.execute("UPDATE state SET value = %s WHERE key = 'summarized'", (end,))
    return done, max(done, end)


def add(tx: Tx, series: I64, times: I64, values: F64, qc: I64) -> None:
    """Fold accepted rows (``values``: NaN where not a number) into the summaries."""
    units = summarize(series, times, values, qc)
    if units:
        tx.execute(_UPSERT, [list(col) for col in zip(*units, strict=True)])


def read_summaries(
    conn: Conn,
    series: Sequence[int],
    lo_hour: int,
    hi_hour: int,
    qc_remove: int,
    with_tail: bool = False,
) -> Summaries:
    """Summary units of ``series`` with ``lo_hour <= hour < hi_hour`` whose QC flags have no
    bit of ``qc_remove``, ordered by series and hour; ``with_tail``: those of the rows not
    folded yet too (``tail_units``; a unit of the same hour may then come twice, which
    ``combine`` adds up like units of different QC flag sets). Call it in one read snapshot."""
    rows: list[list[float]] = [
        list(r)
        for r in conn.execute(
            "SELECT series, hour, n, sum, min, max, first_time, first_value, last_time,"
            " last_value FROM obs_summary WHERE series = ANY(%s::int8[]) AND hour >= %s"
            " AND hour < %s AND (qc & %s) = 0 ORDER BY series, hour",
            (list(series), lo_hour, hi_hour, qc_remove),
        ).fetchall()
    ]
    if with_tail:
        done, _ = progress(conn)
        tail = tail_units(conn, done, series, lo_hour, hi_hour, qc_remove)
        if tail:
            rows = sorted([*rows, *tail], key=lambda r: (r[0], r[1]))
    return summaries_from_rows(rows)


def tail_units(
    conn: Conn,
    after: int,
    series: Sequence[int],
    lo_hour: int,
    hi_hour: int,
    qc_remove: int,
) -> list[list[float]]:
    """Summary rows (``SUMMARY_FIELDS`` order) of the numeric rows after cursor ``after`` (not
    folded yet) of ``series`` in ``lo_hour <= hour < hi_hour`` whose QC flags have no bit of
    ``qc_remove``. ``after`` is a parameter, so the planner weighs the cursor range (the rows
    not folded yet: a few seconds of ingest) against the (series, time) ranges."""
    rows = conn.execute(
        "SELECT series, time, num, qc FROM obs WHERE cursor > %s AND series = ANY(%s::int8[])"
        " AND time >= %s AND time < %s AND num IS NOT NULL AND (qc & %s) = 0",
        (after, list(series), lo_hour * HOUR_MS, hi_hour * HOUR_MS, qc_remove),
    ).fetchall()
    if not rows:
        return []
    units = summarize(
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.float64),
        np.array([r[3] for r in rows], np.int64),
    )
    return [[u[0], u[1], *u[3:]] for u in units]  # without the qc column, as stored ones read


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
    found = read_summaries(
        conn, series, lo_ms // HOUR_MS, -(-hi_ms // HOUR_MS), qc_remove, with_tail=True
    )
    ranges = plan(found)
    return found, read_points(conn, ranges, qc_remove)


def rebuild(tx: Tx, units: Sequence[tuple[int, int]]) -> None:
    """Recompute the summaries of (series, hour) units from the rows the log holds up to
    ``summarized`` (after retention removed part of an hour; later rows are folded in later).
    The caller's transaction holds ``SUMMARY_LOCK``."""
    upto = progress(tx.conn)[0] if units else 0
    for series, hour in units:
        tx.execute("DELETE FROM obs_summary WHERE series = %s AND hour = %s", (series, hour))
        rows = tx.execute(
            "SELECT time, num, qc FROM obs WHERE series = %s AND time >= %s AND time < %s"
            " AND cursor <= %s",
            (series, hour * HOUR_MS, (hour + 1) * HOUR_MS, upto),
        ).fetchall()
        if not rows:
            continue
        times = np.array([r[0] for r in rows], np.int64)
        values = np.array([np.nan if r[1] is None else float(r[1]) for r in rows], np.float64)
        qcs = np.array([r[2] for r in rows], np.int64)
        add(tx, np.full(len(rows), series, np.int64), times, values, qcs)
