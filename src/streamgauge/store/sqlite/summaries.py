"""Per-hour summaries of the log, kept in the writer's transaction, and the reads of aggregates.

``obs_summary`` holds one row per (series, UTC hour, QC flag set): count, sum, min, max, first
and last of the numeric values (migrations 8 and 11) of the log up to the cursor ``summarized``
(``state``): ``fold`` adds rows by cursor range, one grouped statement per step, run by the
writer when it is idle (or far behind), never on the ingest path: an append pays nothing for
summaries. The rows after ``summarized`` are summarized at read time: ``read`` returns, from
one read snapshot, the stored summaries plus those of the rows not folded yet
(``tail_units``), and the raw rows of the parts the caller cannot answer from whole hours (the
edges of a bucket that does not end on an hour). So a summary is never behind the log, a
backfilled or out-of-order row included, and no row is counted twice (a row is folded or
after ``summarized``, never both).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

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
from streamgauge.store.sqlite.schema import sealed_in

_UPSERT = (
    "INSERT INTO obs_summary (series, hour, qc, n, sum, min, max, first_time, first_value,"
    " last_time, last_value) "
    "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,"
    " value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10 FROM json_each(?) WHERE 1 "
    "ON CONFLICT (series, hour, qc) DO UPDATE SET "
    "n = n + excluded.n, sum = sum + excluded.sum, "
    "min = min(min, excluded.min), max = max(max, excluded.max), "
    "first_value = CASE WHEN excluded.first_time < first_time"
    " THEN excluded.first_value ELSE first_value END, "
    "first_time = min(first_time, excluded.first_time), "
    "last_value = CASE WHEN excluded.last_time > last_time"
    " THEN excluded.last_value ELSE last_value END, "
    "last_time = max(last_time, excluded.last_time)"
)

_R = "printf('%!.17g', {})"  # a real as text that parses back to the same double
_SUMMARY_ROW = (
    "'[' || series || ',' || hour || ',' || n || ',' || "
    + " || ',' || ".join(_R.format(c) for c in ("sum", "min", "max"))
    + " || ',' || first_time || ',' || "
    + _R.format("first_value")
    + " || ',' || last_time || ',' || "
    + _R.format("last_value")
    + " || ']'"
)


# The rows (after, upto] of the log folded into the summaries by (series, hour, qc): one statement
# (first and last values by window, as in migration 8).
_FOLD = (
    "INSERT INTO obs_summary (series, hour, qc, n, sum, min, max, first_time, first_value,"
    " last_time, last_value) "
    "SELECT * FROM (SELECT series, h, qc, count(*), sum(v), min(v), max(v), min(time),"
    " max(fv), max(time), max(lv) FROM ("
    " SELECT series, (time - (((time % 3600000) + 3600000) % 3600000)) / 3600000 AS h, qc,"
    " value AS v, time, first_value(value) OVER w AS fv,"
    " last_value(value) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS lv"
    " FROM obs WHERE cursor > ? AND cursor <= ? AND typeof(value) IN ('real', 'integer')"
    " WINDOW w AS (PARTITION BY series,"
    " (time - (((time % 3600000) + 3600000) % 3600000)) / 3600000, qc ORDER BY time)"
    ") GROUP BY series, h, qc) WHERE true " + _UPSERT[_UPSERT.index("ON CONFLICT") :]
)


def fold(conn: sqlite3.Connection, after: int, upto: int) -> None:
    """Add the log's rows ``after < cursor <= upto`` (being indexed now) to the summaries."""
    conn.execute(_FOLD, (after, upto))


def summarized(conn: sqlite3.Connection) -> int:
    """The cursor up to which the stored summaries hold the log (in the caller's snapshot)."""
    return int(conn.execute("SELECT value FROM state WHERE key = 'summarized'").fetchone()[0])


def tail_units(
    conn: sqlite3.Connection,
    after: int,
    series: Sequence[int],
    lo_hour: int,
    hi_hour: int,
    qc_remove: int,
) -> list[list[float]]:
    """Summary rows (``SUMMARY_FIELDS`` order) of the numeric rows after cursor ``after`` (not
    folded yet) of ``series`` in ``lo_hour <= hour < hi_hour`` whose QC flags have no bit of
    ``qc_remove``: the indexed ones through the (series, time) index, the unindexed tail by its
    cursor range, so a long stretch not folded yet costs index seeks, not a scan."""
    sealed = sealed_in(conn)
    doc = orjson.dumps(list(series)).decode()
    row = "'[' || series || ',' || time || ',' || " + _R.format("value") + " || ',' || qc || ']'"
    cols = "o.series AS series, o.time AS time, o.value AS value, o.qc AS qc"
    numeric = "typeof(o.value) IN ('real', 'integer') AND (o.qc & ?) = 0"
    lo, hi = lo_hour * HOUR_MS, hi_hour * HOUR_MS
    rows: list[Any] = []
    if after < sealed:
        rows = _fetch_json(
            conn,
            row,
            f"SELECT {cols} FROM json_each(?) s"
            " JOIN obs_index i ON i.series = s.value AND i.time >= ? AND i.time < ?"
            f" JOIN obs o ON o.cursor = i.cursor WHERE i.cursor > ? AND {numeric}",
            (doc, lo, hi, after, qc_remove),
        )
    rows += _fetch_json(
        conn,
        row,
        f"SELECT {cols} FROM obs o WHERE o.cursor > ?"
        " AND o.series IN (SELECT value FROM json_each(?)) AND o.time >= ? AND o.time < ?"
        f" AND {numeric}",
        (max(after, sealed), doc, lo, hi, qc_remove),
    )
    if not rows:
        return []
    arr = np.array(rows, np.float64)
    i64 = np.int64
    units = summarize(
        arr[:, 0].astype(i64), arr[:, 1].astype(i64), arr[:, 2], arr[:, 3].astype(i64)
    )
    return [[u[0], u[1], *u[3:]] for u in units]  # without the qc column, as stored ones read


def add(conn: sqlite3.Connection, series: I64, times: I64, values: F64, qc: I64) -> None:
    """Fold accepted rows (``values``: NaN where not a number) into the summaries."""
    units = summarize(series, times, values, qc)
    if units:
        conn.execute(_UPSERT, (orjson.dumps(units),))


def _fetch_json(conn: sqlite3.Connection, row_sql: str, sql: str, params: Sequence[Any]) -> Any:
    """The rows of ``sql`` as one JSON array built by SQLite (one GIL hand-over, see
    ``store._fetch_rows``)."""
    text = conn.execute(
        f"SELECT '[' || coalesce(group_concat({row_sql}, ','), '') || ']' FROM ({sql})", params
    ).fetchone()[0]
    return orjson.loads(text)


def read_summaries(
    conn: sqlite3.Connection,
    series: Sequence[int],
    lo_hour: int,
    hi_hour: int,
    qc_remove: int,
    with_tail: bool = False,
) -> Summaries:
    """Summary units of ``series`` with ``lo_hour <= hour < hi_hour`` whose QC flags have no
    bit of ``qc_remove``, ordered by series and hour; ``with_tail``: those of the rows not
    folded yet too (``tail_units``: a unit of the same hour may then come twice, which
    ``combine`` adds up like units of different QC flag sets)."""
    rows = _fetch_json(
        conn,
        _SUMMARY_ROW,
        "SELECT * FROM obs_summary WHERE series IN (SELECT value FROM json_each(?))"
        " AND hour >= ? AND hour < ? AND (qc & ?) = 0 ORDER BY series, hour",
        (orjson.dumps(list(series)).decode(), lo_hour, hi_hour, qc_remove),
    )
    if with_tail:
        tail = tail_units(conn, summarized(conn), series, lo_hour, hi_hour, qc_remove)
        if tail:
            rows = sorted([*rows, *tail], key=lambda r: (r[0], r[1]))
    return summaries_from_rows(rows)


_POINT_ROW = "'[' || series || ',' || time || ',' || " + _R.format("value") + " || ']'"


def read_points(
    conn: sqlite3.Connection, sealed: int, ranges: Sequence[tuple[int, int, int]], qc_remove: int
) -> Points:
    """Numeric rows of (series, from, to) ranges (``from <= time < to``) without a QC flag of
    ``qc_remove``: from the index of sealed chunks, and from the unindexed tail."""
    if not ranges:
        return empty_points()
    doc = orjson.dumps(ranges).decode()
    numeric = "typeof(o.value) IN ('real', 'integer') AND (o.qc & ?) = 0"
    indexed = _fetch_json(
        conn,
        _POINT_ROW,
        "SELECT o.series AS series, o.time AS time, o.value AS value "
        "FROM json_each(?) r JOIN obs_index i ON i.series = r.value ->> 0"
        " AND i.time >= r.value ->> 1 AND i.time < r.value ->> 2 "
        f"JOIN obs o ON o.cursor = i.cursor WHERE {numeric}",
        (doc, qc_remove),
    )
    tail = _fetch_json(
        conn,
        _POINT_ROW,
        "SELECT o.series AS series, o.time AS time, o.value AS value FROM obs o "
        "WHERE o.cursor > ? AND o.series IN (SELECT DISTINCT value ->> 0 FROM json_each(?))"
        f" AND {numeric}",
        (sealed, doc, qc_remove),
    )
    if tail:
        arr = np.array(tail, np.float64)
        s, t = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        keep = np.zeros(len(arr), np.bool_)
        for rs, a, b in ranges:
            keep |= (s == rs) & (t >= a) & (t < b)
        tail = [row for row, k in zip(tail, keep.tolist(), strict=True) if k]
    rows = indexed + tail
    if not rows:
        return empty_points()
    series = np.array([r[0] for r in rows], np.int64)
    times = np.array([r[1] for r in rows], np.int64)
    values = np.array([r[2] for r in rows], np.float64)
    order = np.lexsort((times, series))
    return Points(series[order], times[order], values[order])


def read(
    conn: sqlite3.Connection,
    sealed: int,
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
    return found, read_points(conn, sealed, ranges, qc_remove)


def tail_rows(conn: sqlite3.Connection, sealed: int, series: Sequence[int]) -> I64:
    """(series, time, cursor) of the unindexed tail's rows of ``series``, as an n x 3 array
    (one JSON value from SQLite: one GIL hand-over, see ``store._fetch_rows``)."""
    rows = _fetch_json(
        conn,
        "'[' || series || ',' || time || ',' || cursor || ']'",
        "SELECT series, time, cursor FROM obs WHERE cursor > ?"
        " AND series IN (SELECT value FROM json_each(?))",
        (sealed, orjson.dumps(list(series)).decode()),
    )
    return np.array(rows, np.int64).reshape(-1, 3)


_REBUILD_ROW = (
    "'[' || series || ',' || time || ',' || "
    + _R.format("value")
    + " || ',' || qc || ',' || cursor || ']'"
)


def rebuild(conn: sqlite3.Connection, sealed: int, units: Sequence[tuple[int, int]]) -> None:
    """Recompute the summaries of (series, hour) units (one per series) from the rows the log
    holds up to ``summarized`` (after retention removed part of an hour; later rows are folded
    in later): one read for all of them."""
    if not units:
        return
    upto = summarized(conn)
    doc = orjson.dumps(list(units)).decode()
    conn.execute(
        "DELETE FROM obs_summary WHERE (series, hour) IN"
        " (SELECT value ->> 0, value ->> 1 FROM json_each(?))",
        (doc,),
    )
    numeric = "typeof(o.value) IN ('real', 'integer')"
    indexed = _fetch_json(
        conn,
        _REBUILD_ROW,
        "WITH u AS MATERIALIZED (SELECT value ->> 0 AS s, value ->> 1 AS h FROM json_each(?)) "
        "SELECT o.series AS series, o.time AS time, o.value AS value, o.qc AS qc,"
        " o.cursor AS cursor FROM u CROSS JOIN obs_index i ON i.series = u.s"
        f" AND i.time >= u.h * {HOUR_MS} AND i.time < (u.h + 1) * {HOUR_MS} "
        f"JOIN obs o ON o.cursor = i.cursor WHERE {numeric} AND o.cursor <= ?",
        (doc, upto),
    )
    tail = _fetch_json(
        conn,
        _REBUILD_ROW,
        "SELECT o.series AS series, o.time AS time, o.value AS value, o.qc AS qc,"
        " o.cursor AS cursor FROM obs o WHERE o.cursor > ?"
        f" AND o.series IN (SELECT value ->> 0 FROM json_each(?)) AND {numeric}"
        " AND o.cursor <= ?",
        (sealed, doc, upto),
    )
    rows = indexed + tail
    if not rows:
        return
    arr = np.array(rows, np.float64)
    series = np.array([r[0] for r in rows], np.int64)
    times = np.array([r[1] for r in rows], np.int64)
    qcs = np.array([r[3] for r in rows], np.int64)
    keys = np.array(sorted(units), np.int64)
    at = np.searchsorted(keys[:, 0], series)
    keep = times // HOUR_MS == keys[np.minimum(at, len(keys) - 1), 1]
    add(conn, series[keep], times[keep], arr[:, 2][keep], qcs[keep])
