"""Retention in the SQLite backend: removing observations older than their series' cutoff, in
bounded steps, and remembering per project the highest cursor removed.

A step is one short write transaction on the writer thread (at most ``max_rows`` rows), so
ingest batches queued meanwhile commit between steps: removing millions of rows never holds the
writer for long. The rows to remove are found through the (series, time) index, a range per
series, and deleted by primary key; the unindexed tail is searched by its primary-key range.
The hour summaries of the removed hours go too, unless the project keeps a rollup; the hour the
cutoff falls in is recomputed from the rows left. ``state`` keeps ``gone:<project pk>``, the
highest cursor retention removed from the project, written in the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from streamgauge.domain.timeseries import HOUR_MS
from streamgauge.store.sqlite import summaries


def load_gone(conn: sqlite3.Connection) -> dict[int, int]:
    """Per project, the highest cursor retention removed."""
    rows = conn.execute("SELECT key, value FROM state WHERE key LIKE 'gone:%'").fetchall()
    return {int(key[5:]): int(value) for key, value in rows}


def expired(
    conn: sqlite3.Connection, sealed: int, cutoffs: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The (series, cutoff) pairs having a row older than the cutoff: one index seek per series
    and a scan of the unindexed tail."""
    if not cutoffs:
        return []
    doc = orjson.dumps(list(cutoffs)).decode()
    rows = conn.execute(
        "SELECT c.value ->> 0, c.value ->> 1 FROM json_each(?) c WHERE EXISTS ("
        "SELECT 1 FROM obs_index i WHERE i.series = c.value ->> 0 AND i.time < c.value ->> 1) "
        "OR EXISTS (SELECT 1 FROM obs o WHERE o.cursor > ? AND o.series = c.value ->> 0"
        " AND o.time < c.value ->> 1)",
        (doc, sealed),
    ).fetchall()
    return [(int(s), int(c)) for s, c in rows]


def expire_step(
    conn: sqlite3.Connection,
    sealed: int,
    project_pk: int,
    cutoffs: Sequence[tuple[int, int]],
    *,
    keep_summaries: bool,
    max_rows: int,
) -> tuple[int, int, bool]:
    """Remove up to ``max_rows`` rows older than their series' cutoff (in the caller's write
    transaction). Returns (rows removed, highest cursor removed (0: none), whether every
    expired row of ``cutoffs`` is gone)."""
    removed = 0
    top = 0
    done = True
    touched: list[tuple[int, int]] = []
    for series, cutoff in cutoffs:
        room = max_rows - removed
        if room <= 0:
            done = False
            break
        picked = conn.execute(
            "SELECT max(cursor), count(*), max(time) FROM (SELECT cursor, time FROM obs_index "
            "WHERE series = ? AND time < ? ORDER BY time LIMIT ?)",
            (series, cutoff, room),
        ).fetchone()
        n = int(picked[1])
        if n:
            last_time = int(picked[2])
            conn.execute(
                "DELETE FROM obs WHERE cursor IN (SELECT cursor FROM obs_index "
                "WHERE series = ? AND time <= ?)",
                (series, last_time),
            )
            conn.execute(
                "DELETE FROM obs_index WHERE series = ? AND time <= ?", (series, last_time)
            )
            removed += n
            top = max(top, int(picked[0]))
            if n == room:
                done = False
                touched.append((series, last_time + 1))
                break
        tail = conn.execute(
            "SELECT max(cursor), count(*) FROM obs WHERE cursor > ? AND series = ? AND time < ?",
            (sealed, series, cutoff),
        ).fetchone()
        if tail[1]:
            conn.execute(
                "DELETE FROM obs WHERE cursor > ? AND series = ? AND time < ?",
                (sealed, series, cutoff),
            )
            removed += int(tail[1])
            top = max(top, int(tail[0]))
        touched.append((series, cutoff))
    if not keep_summaries:
        for series, cutoff in touched:
            conn.execute(
                "DELETE FROM obs_summary WHERE series = ? AND hour < ?", (series, cutoff // HOUR_MS)
            )
        summaries.rebuild(conn, sealed, [(s, c // HOUR_MS) for s, c in touched if c % HOUR_MS])
    if top:
        conn.execute(
            "INSERT INTO state VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
            " SET value = max(value, excluded.value)",
            (f"gone:{project_pk}", top),
        )
    return removed, top, done
