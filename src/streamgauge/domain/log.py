"""The values the log's protocol (``store.api.Log``) takes and returns: a batch resolved for
the log, the outcome of an append, a history read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    first_cursor: int | None
    last_cursor: int | None


@dataclass(frozen=True, slots=True)
class IngestColumns:
    """A validated batch, resolved to variable pks, ready for the log."""

    project_pk: int
    variable_pks: npt.NDArray[np.int64]
    sets: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    values: list[float | str | None]
    qc: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    project_pk: int
    series: tuple[int, ...] | None = None  # only these series (None: every series of the project)
    qc_remove: int = 0  # leave out rows with any of these QC flag bits
    start: int | None = None  # ms, inclusive
    end: int | None = None  # ms, exclusive
    after: tuple[int, int] | None = None  # keyset (time, cursor) of the last row already read
    times: tuple[int, ...] | None = None  # only rows at these times
    limit: int = 1000
