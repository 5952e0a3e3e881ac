"""Values the time-series reads pass between the store and the core: per-hour summaries of the
numeric values of series, and raw points.

A summary unit is one UTC hour of one series and one QC flag set: the count, sum, min and max
of its numeric values and its first and last (time, value). Summaries of the same hour with
different flag sets are separate units, so a read that removes some QC failures combines only
the units whose flags pass, and stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

HOUR_MS = 3_600_000
"""The summary unit (UTC hours)."""

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Summaries:
    """Summary units as columns (one row per series, hour and QC flag set)."""

    series: I64
    hour: I64  # UTC hour number: time // HOUR_MS
    n: I64
    sum: F64
    min: F64
    max: F64
    first_time: I64
    first_value: F64
    last_time: I64
    last_value: F64

    def __len__(self) -> int:
        return len(self.series)

    def take(self, idx: I64 | npt.NDArray[np.bool_]) -> Summaries:
        return Summaries(*(getattr(self, f)[idx] for f in SUMMARY_FIELDS))


SUMMARY_FIELDS = (
    "series",
    "hour",
    "n",
    "sum",
    "min",
    "max",
    "first_time",
    "first_value",
    "last_time",
    "last_value",
)

_INT_FIELDS = frozenset({"series", "hour", "n", "first_time", "last_time"})


def summaries_from_rows(rows: list[list[float]]) -> Summaries:
    """Columns from rows in ``SUMMARY_FIELDS`` order."""
    if not rows:
        return empty_summaries()
    cols = list(zip(*rows, strict=True))
    arrays: list[Any] = [
        np.array(col, np.int64 if name in _INT_FIELDS else np.float64)
        for name, col in zip(SUMMARY_FIELDS, cols, strict=True)
    ]
    return Summaries(*arrays)


def empty_summaries() -> Summaries:
    z = np.zeros(0, np.int64)
    f = np.zeros(0, np.float64)
    return Summaries(z, z, z, f, f, f, z, f, z, f)


@dataclass(frozen=True, slots=True)
class Points:
    """Raw numeric rows: series, time, value."""

    series: I64
    time: I64
    value: F64

    def __len__(self) -> int:
        return len(self.series)


def empty_points() -> Points:
    z = np.zeros(0, np.int64)
    return Points(z, z.copy(), np.zeros(0, np.float64))


def summarize(
    series: I64, times: I64, values: F64, qc: I64
) -> list[tuple[int, int, int, int, float, float, float, int, float, int, float]]:
    """Summary units of rows (non-finite values, i.e. text and null, are left out): tuples of
    (series, hour, qc, n, sum, min, max, first_time, first_value, last_time, last_value)."""
    keep = np.isfinite(values)
    if not keep.all():
        series, times, values, qc = series[keep], times[keep], values[keep], qc[keep]
    if not len(series):
        return []
    hours = times // HOUR_MS
    order = np.lexsort((times, qc, hours, series))
    s, h, q, t, v = series[order], hours[order], qc[order], times[order], values[order]
    new = np.ones(len(s), np.bool_)
    new[1:] = (s[1:] != s[:-1]) | (h[1:] != h[:-1]) | (q[1:] != q[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(s)) - 1
    n = np.diff(np.append(starts, len(s)))
    return list(
        zip(
            s[starts].tolist(),
            h[starts].tolist(),
            q[starts].tolist(),
            n.tolist(),
            np.add.reduceat(v, starts).tolist(),
            np.minimum.reduceat(v, starts).tolist(),
            np.maximum.reduceat(v, starts).tolist(),
            t[starts].tolist(),
            v[starts].tolist(),
            t[ends].tolist(),
            v[ends].tolist(),
            strict=True,
        )
    )
