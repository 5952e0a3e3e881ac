"""The per-series state quality control carries from batch to batch (``core/qc.py`` runs the
checks). It lives in the domain because the store checkpoints it and rebuilds it on start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

NO_TIME = np.iinfo(np.int64).min
"""``QCState.last_time`` of a series with no state."""

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_S = TypeVar("_S", bound=np.generic)


def grow(arr: npt.NDArray[_S], size: int, fill: Any) -> npt.NDArray[_S]:
    """``arr`` grown to at least ``size`` (doubling), new cells ``fill``."""
    if size <= len(arr):
        return arr
    new = np.full(max(size, 2 * len(arr)), fill, dtype=arr.dtype)
    new[: len(arr)] = arr
    return new


@dataclass
class QCState:
    """Per-series state carried across batches: the newest QC-eligible observation of a series."""

    last_time: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    last_value: F64 = field(default_factory=lambda: np.empty(0, np.float64))
    same_since: I64 = field(default_factory=lambda: np.empty(0, np.int64))

    def ensure(self, size: int) -> None:
        """Grow the arrays to hold at least ``size`` series (new series: no state)."""
        self.last_time = grow(self.last_time, size, NO_TIME)
        self.last_value = grow(self.last_value, size, np.nan)
        self.same_since = grow(self.same_since, size, NO_TIME)

    def reset(self, series: I64) -> None:
        """Forget the state of the given series."""
        series = series[series < len(self.last_time)]
        self.last_time[series] = NO_TIME
        self.last_value[series] = np.nan
        self.same_since[series] = NO_TIME
