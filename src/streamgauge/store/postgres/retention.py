"""Retention in PostgreSQL (the twin of ``store/sqlite/retention.py``): removing observations
older than their series' cutoff in bounded steps, and remembering per project the highest
cursor removed.

A step is one short write transaction (at most ``max_rows`` rows), so appends of every node
commit between steps. The rows to remove are a range of the (series, time) index per series,
deleted by that range. The hour summaries of the removed hours go too, unless the project keeps
a rollup; the hour the cutoff falls in is recomputed from the rows left. A step holds
``SUMMARY_LOCK`` (no fold runs meanwhile); a rollup's step first folds every row not folded yet,
so the rows it removes are counted in the summaries it keeps. ``state`` keeps
``gone:<project pk>``, the highest cursor retention removed from the project, written in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamgauge.domain.timeseries import HOUR_MS
from streamgauge.store.postgres import summaries
from streamgauge.store.postgres.conn import Conn, Tx, one


def load_gone(conn: Conn) -> dict[int, int]:
    """Per project, the highest cursor retention removed."""
    rows = conn.execute("SELECT key, value FROM state WHERE key LIKE 'gone:%%'").fetchall()
    return {int(key[5:]): int(value) for key, value in rows}


def expired(conn: Conn, cutoffs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (series, cutoff) pairs having a row older than the cutoff: one index seek each."""
    if not cutoffs:
        return []
    s, c = (list(col) for col in zip(*cutoffs, strict=True))
    rows = conn.execute(
        "SELECT k.s, k.c FROM unnest(%s::int8[], %s::int8[]) WITH ORDINALITY k(s, c, i) "
        "WHERE EXISTS (SELECT 1 FROM obs o WHERE o.series = k.s AND o.time < k.c) ORDER BY k.i",
        (s, c),
    ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


def expire_step(
    tx: Tx,
    project_pk: int,
    cutoffs: Sequence[tuple[int, int]],
    *,
    keep_summaries: bool,
    max_rows: int,
) -> tuple[int, int, bool]:
    """Remove up to ``max_rows`` rows older than their series' cutoff (in the caller's write
    transaction). Returns (rows removed, highest cursor removed (0: none), whether every
    expired row of ``cutoffs`` is gone)."""
    summaries.lock(tx.conn)
    if keep_summaries:
        summaries.fold(tx.conn)
    removed = 0
    top = 0
    done = True
    touched: list[tuple[int, int]] = []
    for series, cutoff in cutoffs:
        room = max_rows - removed
        if room <= 0:
            done = False
            break
        top_cursor, count, last_time = one(
            tx.execute(
                "SELECT max(cursor), count(*), max(time) FROM (SELECT cursor, time FROM obs "
                "WHERE series = %s AND time < %s ORDER BY time LIMIT %s) x",
                (series, cutoff, room),
            )
        )
        n = int(count)
        if n:
            tx.execute("DELETE FROM obs WHERE series = %s AND time <= %s", (series, last_time))
            removed += n
            top = max(top, int(top_cursor))
            if n == room:
                done = False
                touched.append((series, int(last_time) + 1))
                break
        touched.append((series, cutoff))
    if not keep_summaries:
        for series, cutoff in touched:
            tx.execute(
                "DELETE FROM obs_summary WHERE series = %s AND hour < %s",
                (series, cutoff // HOUR_MS),
            )
        summaries.rebuild(tx, [(s, c // HOUR_MS) for s, c in touched if c % HOUR_MS])
    if top:
        tx.execute(
            "INSERT INTO state VALUES (%s, %s) ON CONFLICT (key) DO UPDATE"
            " SET value = greatest(state.value, excluded.value)",
            (f"gone:{project_pk}", top),
        )
    return removed, top, done
