"""What the log's writer asks the core while it commits a batch: the ``CommitRules``.

The writer decides the commit order (one thread, cursors in order), so the rules that depend on
that order run there: the duplicate/conflict rule and quality control. They are pure functions of
the core (``core.dedupe``, ``core.qc``); the store receives them as this protocol, built by the
core, and never imports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Screen:
    """The first look at a batch's keys, before the store is asked: ``keep`` rows are new for
    sure (newer than their series' latest stored time), ``duplicate`` rows repeat an earlier
    row of the batch, ``probe`` (row indices) must be looked up in the store, ``conflicts`` are
    the in-batch repeats with a different value (``{"index", "reason"}``)."""

    keep: Bool
    duplicate: Bool
    probe: I64
    conflicts: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on a batch: the rows to append (``keep``, row indices in input order), the
    number of duplicates, and the conflicts sorted by row (the batch is refused if any)."""

    keep: I64
    duplicates: int
    conflicts: list[dict[str, Any]]


class CommitRules(Protocol):
    """The core's rules, run by the writer thread in commit order."""

    def screen(self, series: I64, times: I64, values: list[Any], latest: I64) -> Screen:
        """Which rows are new, repeated in the batch, or must be probed in the store."""
        ...

    def settle(
        self,
        screen: Screen,
        series: I64,
        times: I64,
        values: list[Any],
        found: Mapping[tuple[int, int], Any],
    ) -> Verdict:
        """The decision, given the stored value of every probed ``(series, time)`` found."""
        ...

    def flag(self, series: I64, times: I64, numeric: F64) -> I64:
        """The QC flags of rows about to be appended (the QC state is not changed)."""
        ...

    def advance(self, series: I64, times: I64, numeric: F64, flags: I64) -> None:
        """Move the QC state past committed rows (after the commit)."""
        ...

    def replay(self, series: I64, times: I64, numeric: F64) -> None:
        """Run committed rows (in cursor order) through QC, moving its state: a restart
        replaying the log after the last QC checkpoint."""
        ...
