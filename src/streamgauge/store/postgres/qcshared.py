"""QC state that several nodes share: the rate, step and persistence checks judge a row against
its series' newest QC-eligible row before it (``core/qc.py``), whichever node appended that.

The log itself carries what the state is made of: every row's series, time, value and the QC
flags its writer gave it. A node's state in memory is exact at the last cursor its writer saw
(``PgStore._writer_head``); when an append (under the log lock) or the idle writer finds the head
further on, the rows other nodes committed in between are read in cursor order and applied as
their writers applied them (``CommitRules.advance`` with the stored flags: range failures take
no part in the chain), moving the latest times too (``PgStore._follow``). So every append judges
against the state after every append committed before it, exactly as one process would: the
verdicts do not depend on which node ingests, and an append writes no state of its own (the
``qc_state`` table is a checkpoint, written when the writer is idle or every
``CHECKPOINT_ROWS``, current at ``state.qc_cursor``, from which a node replays on open).
The state in memory is the writer thread's; an append that rolls back restores what it moved.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from streamgauge.domain.qcstate import QCState
from streamgauge.store.postgres.conn import Conn, Tx

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Saved = tuple[I64, F64, I64]
FOLLOW_ROWS = 200_000  # log rows read per statement while following other nodes' appends


def committed(conn: Conn, after: int, upto: int) -> Iterator[tuple[int, I64, I64, F64, I64]]:
    """The log rows with ``after < cursor <= upto`` in cursor order, as chunks ``(last cursor
    covered, series, time, numeric value (NaN: none), QC flags)``; the last chunk covers
    ``upto`` (rows retention removed are simply not there)."""
    while after < upto:
        rows = conn.execute(
            "SELECT cursor, series, time, num, qc FROM obs WHERE cursor > %s AND cursor <= %s "
            "ORDER BY cursor LIMIT %s",
            (after, upto, FOLLOW_ROWS),
        ).fetchall()
        covered = int(rows[-1][0]) if len(rows) == FOLLOW_ROWS else upto
        if rows:
            _, series, times, nums, flags = zip(*rows, strict=True)
            yield (
                covered,
                np.array(series, np.int64),
                np.array(times, np.int64),
                np.array([np.nan if v is None else v for v in nums], np.float64),
                np.array(flags, np.int64),
            )
        else:
            yield covered, *_empty()
        after = covered


def _empty() -> tuple[I64, I64, F64, I64]:
    z = np.zeros(0, np.int64)
    return z, z.copy(), np.zeros(0, np.float64), z.copy()


def latest_of(series: I64, times: I64) -> tuple[list[int], list[int]]:
    """Each series' greatest time among the rows (series order)."""
    order = np.lexsort((times, series))
    s, t = series[order], times[order]
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    return s[last].tolist(), t[last].tolist()


def saved(state: QCState, series: I64) -> Saved:
    """The state of ``series`` (unique pks) as it is now, to restore if the append fails."""
    state.ensure(int(series.max()) + 1)
    return (
        state.last_time[series].copy(),
        state.last_value[series].copy(),
        state.same_since[series].copy(),
    )


def restore(state: QCState, series: I64, before: Saved) -> None:
    state.last_time[series], state.last_value[series], state.same_since[series] = before


def write(tx: Tx, state: QCState, series: I64) -> None:
    """Store the state of ``series`` (unique pks) in ``qc_state`` (the checkpoint)."""
    series = series[series < len(state.last_time)]
    last_value = state.last_value[series]
    tx.execute(
        "INSERT INTO qc_state SELECT * FROM unnest("
        "%s::int8[], %s::int8[], %s::float8[], %s::int8[]) "
        "ON CONFLICT (series) DO UPDATE SET last_time = excluded.last_time, "
        "last_value = excluded.last_value, same_since = excluded.same_since",
        (
            _array(series.tolist()),
            _array(state.last_time[series].tolist()),
            _array(["NULL" if v != v else repr(v) for v in last_value.tolist()]),
            _array(state.same_since[series].tolist()),
        ),
    )


def _array(items: list[int] | list[str]) -> str:
    """A PostgreSQL array literal (``{1,2,NULL}``): sent as one text parameter, several times
    faster than psycopg's element-by-element list dumper for the tens of thousands of series a
    checkpoint may write. Floats are written with ``repr`` (the shortest text that reads back
    exactly)."""
    return "{" + ",".join(map(str, items)) + "}"
