"""QC state that several nodes share: the rate, step and persistence checks judge a row against
its series' newest QC-eligible row before it (``core/qc.py``), whichever node appended that.

Each append writes the new state of the series it moved to ``qc_state`` in its own transaction
(under the log lock, so in commit order), and an append that finds another node wrote since
this node's last append (the head moved under it) first reads the state of its batch's series
back from ``qc_state``. So every append judges against the state after every append committed
before it, exactly as one process would: the verdicts do not depend on which node ingests.
The state in memory is the writer thread's; an append that rolls back restores what it moved.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamgauge.domain.qcstate import QCState
from streamgauge.store.postgres.conn import Tx

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Saved = tuple[I64, F64, I64]


def refresh(tx: Tx, state: QCState, series: I64) -> None:
    """Read the stored state of ``series`` (unique pks) into ``state``; a series without a
    row has none (no eligible row was appended to it)."""
    if not len(series):
        return
    state.ensure(int(series.max()) + 1)
    state.reset(series)
    for pk, last_time, last_value, same_since in tx.execute(
        "SELECT series, last_time, last_value, same_since FROM qc_state"
        " WHERE series = ANY(%s::int8[])",
        (series.tolist(),),
    ):
        state.last_time[pk] = last_time
        state.last_value[pk] = np.nan if last_value is None else last_value
        state.same_since[pk] = same_since


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
    """Store the state of ``series`` (unique pks) in the append's transaction."""
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
    faster than psycopg's element-by-element list dumper for the thousands of series an append
    moves. Floats are written with ``repr`` (the shortest text that reads back exactly)."""
    return "{" + ",".join(map(str, items)) + "}"
