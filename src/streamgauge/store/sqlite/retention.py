"""Retention in the SQLite backend: removing observations older than their series' cutoff, in
bounded steps, and remembering per project the highest cursor removed.

A pass is planned once (``expired``, on a reader: per series the expired rows' count and cursor
span, one range read of the (series, time) index per series and one scan of the unindexed
tail) and then run as short write transactions on the writer thread (``Pass.step``, at most
``max_rows`` rows each), so ingest batches queued meanwhile commit between steps: removing
millions of rows never holds the writer for long. Two ways to remove the rows:

* dense (the expired rows fill at least a quarter of their cursor span, the usual case: old
  data was written long ago): first the index entries, by a range of (series, time) per series
  (contiguous in the index), then the log by cursor windows of ``max_rows``, each window one
  range of the log's primary key in which every row older than its series' cutoff goes (a
  per-connection table of the cutoffs, ``temp.retention_cut``, judges them). Each page of the
  log and of the index is rewritten about once per pass, whatever the interleaving of series
  in the log (deleting series by series would rewrite every page of the log once per step);
* sparse (a few old rows scattered over a long log): per series, the expired index range and
  its rows by primary key, then the unindexed tail in one statement.

The summaries go last, once per series per pass: the hours before the cutoff's hour are
deleted (unless the project keeps a rollup) and the hour the cutoff falls in is recomputed
from the rows left, for all series in one read. ``state`` keeps ``gone:<project pk>``, the
highest cursor retention removed from the project, written in the transaction of the removal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from streamgauge.domain.timeseries import HOUR_MS
from streamgauge.store.sqlite import summaries

Cutoffs = tuple[tuple[int, int], ...]  # (series, cutoff ms), in series order
DENSE = 4  # dense: the expired rows are at least 1/DENSE of their cursor span
# Per writer connection (its id), the pass whose cutoffs ``temp.retention_cut`` holds (its id).
_LOADED: dict[int, int] = {}


@dataclass(frozen=True, slots=True)
class Expired:
    """What a pass has to remove: the (series, cutoff) pairs having expired rows, the number
    of those rows and their lowest and highest cursor."""

    cutoffs: Cutoffs
    rows: int
    lo: int
    hi: int


def load_gone(conn: sqlite3.Connection) -> dict[int, int]:
    """Per project, the highest cursor retention removed."""
    rows = conn.execute("SELECT key, value FROM state WHERE key LIKE 'gone:%'").fetchall()
    return {int(key[5:]): int(value) for key, value in rows}


def expired(conn: sqlite3.Connection, sealed: int, cutoffs: Sequence[tuple[int, int]]) -> Expired:
    """The expired rows of ``cutoffs``: per series a range read of the index (its expired
    entries only) and one read of the unindexed tail, in the caller's read snapshot."""
    if not cutoffs:
        return Expired((), 0, 0, 0)
    ordered = sorted(cutoffs)
    found: dict[int, list[int]] = {}  # series -> [rows, lowest cursor, highest cursor]
    for s, n, lo, hi in conn.execute(
        "WITH c AS MATERIALIZED (SELECT value ->> 0 AS s, value ->> 1 AS t FROM json_each(?)) "
        "SELECT c.s, count(*), min(i.cursor), max(i.cursor) FROM c CROSS JOIN obs_index i"
        " ON i.series = c.s AND i.time < c.t GROUP BY c.s",
        (orjson.dumps(ordered).decode(),),
    ):
        found[int(s)] = [int(n), int(lo), int(hi)]
    tail = summaries.tail_rows(conn, sealed, [s for s, _ in ordered])
    if len(tail):
        keys = np.array([s for s, _ in ordered], np.int64)
        cuts = np.array([c for _, c in ordered], np.int64)
        old = tail[tail[:, 1] < cuts[np.searchsorted(keys, tail[:, 0])]]
        for s, _, cur in old.tolist():
            got = found.setdefault(s, [0, cur, cur])
            got[0] += 1
            got[1], got[2] = min(got[1], cur), max(got[2], cur)
    if not found:
        return Expired((), 0, 0, 0)
    return Expired(
        tuple((s, c) for s, c in ordered if s in found),
        sum(v[0] for v in found.values()),
        min(v[1] for v in found.values()),
        max(v[2] for v in found.values()),
    )


@dataclass(slots=True)
class Pass:
    """One retention pass over a project's expired rows, run as bounded steps (``step``), each
    in its own write transaction on the writer's connection. The position moves only once a
    step committed (``committed``), so a failed step is retried from where it began."""

    project_pk: int
    plan: Expired
    keep_summaries: bool
    phase: str = "start"
    pos: int = 0  # series position in plan.cutoffs (index, rows and summaries phases)
    at: int = 0  # next cursor of the window phase
    _next: tuple[str, int, int] = field(default=("start", 0, 0))
    _loads: int | None = None  # the connection whose temp.retention_cut this step fills

    @property
    def dense(self) -> bool:
        p = self.plan
        return p.rows * DENSE >= p.hi - p.lo + 1

    def committed(self) -> None:
        self.phase, self.pos, self.at = self._next
        if self._loads is not None:
            _LOADED[self._loads] = id(self)

    def step(self, conn: sqlite3.Connection, sealed: int, max_rows: int) -> tuple[int, int, bool]:
        """Run one step (in the caller's write transaction). Returns (rows removed from the
        log, highest cursor removed (0: none), whether the pass is done once it commits)."""
        phase, pos, at = self.phase, self.pos, self.at
        removed = top = 0
        self._loads = None
        if phase == "start" or (
            phase in ("window", "tail") and _LOADED.get(id(conn)) != id(self)
        ):  # (another pass, of another project, ran in between)
            _load_cutoffs(conn, self.plan.cutoffs)
            self._loads = id(conn)
        if phase == "start":
            phase, at = ("index" if self.dense else "rows"), self.plan.lo
        if phase == "index":
            pos = _drop_index(conn, self.plan, pos, max_rows)
            if pos == len(self.plan.cutoffs):
                phase, pos = "window", 0
        elif phase == "window":
            end = min(at + max_rows, self.plan.hi + 1)
            removed, top = _drop_window(conn, at, end)
            at = end
            if at > self.plan.hi:
                phase = "summaries"
        elif phase == "rows":
            pos, removed, top = _drop_rows(conn, self.plan, pos, max_rows)
            if pos == len(self.plan.cutoffs):
                phase, pos = "tail", 0
        elif phase == "tail":
            removed, top = _drop_window(conn, sealed + 1, None)
            phase = "summaries"
        elif phase == "summaries":
            if self.keep_summaries:
                pos = len(self.plan.cutoffs)
            else:
                pos = _redo_summaries(conn, sealed, self.plan.cutoffs, pos, max_rows)
            if pos == len(self.plan.cutoffs):
                phase = "done"
        if top:
            conn.execute(
                "INSERT INTO state VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                " SET value = max(value, excluded.value)",
                (f"gone:{self.project_pk}", top),
            )
        self._next = (phase, pos, at)
        return removed, top, phase == "done"


def _load_cutoffs(conn: sqlite3.Connection, cutoffs: Cutoffs) -> None:
    """``temp.retention_cut``: the pass's cutoff per series, on this (the writer's)
    connection."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS retention_cut "
        "(series INTEGER PRIMARY KEY, cutoff INTEGER NOT NULL)"
    )
    conn.execute("DELETE FROM temp.retention_cut")
    conn.execute(
        "INSERT INTO temp.retention_cut SELECT value ->> 0, value ->> 1 FROM json_each(?)",
        (orjson.dumps(cutoffs).decode(),),
    )


def _drop_index(conn: sqlite3.Connection, plan: Expired, pos: int, max_rows: int) -> int:
    """Delete up to about ``max_rows`` expired index entries (those of rows up to the plan's
    highest cursor: a row written since keeps its entry until the next pass), series by series
    from ``pos``; returns the position to go on at."""
    room = max_rows
    while pos < len(plan.cutoffs) and room > 0:
        series, cutoff = plan.cutoffs[pos]
        picked = conn.execute(
            "SELECT count(*), max(time) FROM (SELECT time FROM obs_index "
            "WHERE series = ? AND time < ? AND cursor <= ? ORDER BY time LIMIT ?)",
            (series, cutoff, plan.hi, room),
        ).fetchone()
        n = int(picked[0])
        if n:
            conn.execute(
                "DELETE FROM obs_index WHERE series = ? AND time <= ? AND cursor <= ?",
                (series, int(picked[1]), plan.hi),
            )
            room -= n
        if n == 0 or room > 0:
            pos += 1
    return pos


def _drop_window(conn: sqlite3.Connection, lo: int, hi: int | None) -> tuple[int, int]:
    """Delete the rows of the log with ``lo <= cursor < hi`` (``hi`` None: to the end) that are
    older than their series' cutoff in ``temp.retention_cut``: one range of the primary key.
    Returns (rows removed, highest cursor removed)."""
    cond = (
        "cursor >= ? AND cursor < ? AND time < "
        "(SELECT cutoff FROM temp.retention_cut c WHERE c.series = obs.series)"
    )
    params = (lo, (1 << 62) if hi is None else hi)
    n, top = conn.execute(f"SELECT count(*), max(cursor) FROM obs WHERE {cond}", params).fetchone()
    if not n:
        return 0, 0
    conn.execute(f"DELETE FROM obs WHERE {cond}", params)
    return int(n), int(top)


def _drop_rows(
    conn: sqlite3.Connection, plan: Expired, pos: int, max_rows: int
) -> tuple[int, int, int]:
    """The sparse way: up to ``max_rows`` expired rows, series by series from ``pos``, found by
    their index range and deleted by primary key with their index entries. Returns (position
    to go on at, rows removed, highest cursor removed)."""
    removed = top = 0
    while pos < len(plan.cutoffs) and removed < max_rows:
        series, cutoff = plan.cutoffs[pos]
        room = max_rows - removed
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
        if n < room:
            pos += 1
    return pos, removed, top


def _redo_summaries(
    conn: sqlite3.Connection, sealed: int, cutoffs: Cutoffs, pos: int, max_rows: int
) -> int:
    """Delete the summaries of the hours before each series' cutoff hour and recompute the
    hour the cutoff falls in from the rows left, for series from ``pos`` until about
    ``max_rows`` summary units went; returns the position to go on at."""
    room = max_rows
    done: list[tuple[int, int]] = []
    while pos < len(cutoffs) and room > 0:
        series, cutoff = cutoffs[pos]
        hour = cutoff // HOUR_MS
        first = conn.execute(
            "SELECT min(hour) FROM obs_summary WHERE series = ? AND hour < ?", (series, hour)
        ).fetchone()[0]
        upto = hour if first is None else min(hour, int(first) + room)
        if first is not None:
            conn.execute("DELETE FROM obs_summary WHERE series = ? AND hour < ?", (series, upto))
            room -= upto - int(first)
        if upto == hour:
            done.append((series, cutoff))
            pos += 1
    summaries.rebuild(conn, sealed, [(s, c // HOUR_MS) for s, c in done if c % HOUR_MS])
    return pos
