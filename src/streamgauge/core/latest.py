"""Each series' newest stored row, in memory: what ``/latest`` answers from.

``LatestRows`` is filled from the store once at start (in the background) and from every
committed batch (``update``, an engine listener on the event loop), so a read costs a lookup
per selected series and no store access. A row older than the series' newest (a backfill)
leaves it as it is, and so does one as new but committed earlier (the load at start, of rows
the batches committed meanwhile may have replaced). Retention calls ``forget_before`` for the
series whose rows it removed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamgauge.domain.batch import Batch, Value

_NEVER = int(np.iinfo(np.int64).min)


class LatestRows:
    """Columns indexed by series pk: cursor, time and QC flags of the newest row, and its
    value: a float in the ``value`` column, any other value (an int, a string, null) in
    ``others`` (a dict entry and a float object per series weigh ten times a column's 8
    bytes). Mutated only on the event loop (the commit listener), read there too."""

    def __init__(self) -> None:
        self.time = np.full(1024, _NEVER, np.int64)
        self.cursor = np.zeros(1024, np.int64)
        self.qc = np.zeros(1024, np.int64)
        self.value = np.zeros(1024, np.float64)
        self.others: dict[int, Value] = {}

    def reserve(self, size: int) -> None:
        """Room for series pks below ``size`` at once (before a load of that many: grown by
        doubling, each step's copy left the heap with holes it did not give back)."""
        if size > len(self.time):
            self._capacity(size - 1, exact=True)

    def _capacity(self, top: int, exact: bool = False) -> None:
        size = len(self.time)
        if top < size:
            return
        grown = top + 1 if exact else max(top + 1, size * 2)
        self.time = np.concatenate([self.time, np.full(grown - size, _NEVER, np.int64)])
        self.cursor = np.concatenate([self.cursor, np.zeros(grown - size, np.int64)])
        self.qc = np.concatenate([self.qc, np.zeros(grown - size, np.int64)])
        self.value = np.concatenate([self.value, np.zeros(grown - size, np.float64)])

    def update(self, batch: Batch) -> None:
        """Take each series' newest row of ``batch`` where it is newer than the one held."""
        if not len(batch):
            return
        order = np.lexsort((batch.times, batch.series))
        s = batch.series[order]
        last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
        idx = order[last]
        series = batch.series[idx]
        self._capacity(int(series.max()))
        times, held = batch.times[idx], self.time[series]
        # Newer, or as new and committed later (a batch of the same time replaces; the load at
        # start, of rows committed before those already held, does not).
        newer = (times > held) | ((times == held) & (batch.cursors[idx] >= self.cursor[series]))
        if not newer.any():
            return
        idx, series, times = idx[newer], series[newer], times[newer]
        self.time[series] = times
        self.cursor[series] = batch.cursors[idx]
        self.qc[series] = batch.qc[idx]
        numbers = batch.numeric()[idx]  # NaN: a value that is not a float (values are finite)
        if not np.isnan(numbers).any():  # the usual batch: columns only, not a step per row
            self.value[series] = numbers
            if self.others:
                for pk in series.tolist():
                    self.others.pop(pk, None)
            return
        values = batch.values
        taken = [values[i] for i in idx.tolist()]
        for pk, v in zip(series.tolist(), taken, strict=True):
            if type(v) is float:
                self.value[pk] = v
                self.others.pop(pk, None)
            else:
                self.others[pk] = v

    def forget_before(self, cutoffs: list[tuple[int, int]]) -> None:
        """Drop the rows of (series, cutoff) pairs older than the cutoff (retention)."""
        for pk, cutoff in cutoffs:
            if pk < len(self.time) and self.time[pk] < cutoff:
                self.time[pk] = _NEVER
                self.others.pop(pk, None)

    def rows(self, project_pk: int, series: npt.NDArray[np.int64]) -> Batch:
        """The held rows of ``series`` (in that order; series without one are left out)."""
        series = series[series < len(self.time)]
        series = series[self.time[series] != _NEVER]
        others = self.others
        return Batch(
            project_pk,
            self.cursor[series].copy(),
            series.copy(),
            self.time[series].copy(),
            [
                others.get(pk, v) if others else v
                for pk, v in zip(series.tolist(), self.value[series].tolist(), strict=True)
            ],
            self.qc[series].copy(),
        )
