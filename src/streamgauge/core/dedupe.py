"""The duplicate/conflict rule of the log, and the ``CommitRules`` the engine gives its store.

A row's key is (series, time). A row whose key is already stored with the same value is a
duplicate (acknowledged, not stored again); with a different value it is a conflict, and a batch
with any conflict is refused whole. Inside one batch the first occurrence of a key stands for it.
Only rows not newer than their series' latest stored time can be stored already, so only those
are probed in the store (``screen``, then the store's lookup, then ``settle``). Pure functions of
numpy columns; the writer calls them, through ``LogRules``, in commit order.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from streamgauge.core import qc
from streamgauge.domain.commit import F64, I64, Screen, Verdict

if TYPE_CHECKING:
    from streamgauge.core.registry import Registry

_MISSING = object()
_PLANS = 16  # QC plans kept for batches flagged and not advanced yet (``LogRules``)


def _conflict(index: int, reason: str) -> dict[str, Any]:
    return {"index": index, "reason": reason}


def screen(series: I64, times: I64, values: list[Any], latest: I64) -> Screen:
    """Rows newer than ``latest`` (per row: its series' latest stored time) are new; a row
    repeating an earlier row's key in the batch is a duplicate (a conflict if its value
    differs); the rest must be probed in the store."""
    n = len(times)
    keep = times > latest  # new for sure: newer than anything stored for the series
    duplicate = np.zeros(n, np.bool_)
    order = np.lexsort((np.arange(n), times, series))
    same = (series[order][1:] == series[order][:-1]) & (times[order][1:] == times[order][:-1])
    conflicts: list[dict[str, Any]] = []
    for k in np.flatnonzero(same).tolist():
        first, again = int(order[k]), int(order[k + 1])
        while k > 0 and same[k - 1]:
            k -= 1
            first = int(order[k])
        duplicate[again] = True
        keep[again] = False
        if values[again] != values[first]:
            conflicts.append(_conflict(again, f"repeats row {first} with a different value"))
    probe = np.flatnonzero(~keep & ~duplicate)
    return Screen(keep, duplicate, probe, conflicts)


def settle(
    s: Screen,
    series: I64,
    times: I64,
    values: list[Any],
    found: Mapping[tuple[int, int], Any],
) -> Verdict:
    """The decision once the store has looked up the probed keys (``found``: stored value by
    ``(series, time)``): a probed row not found is new, found with the same value a duplicate,
    with another value a conflict. Conflicts come sorted by row."""
    keep = s.keep.copy()
    duplicate = s.duplicate.copy()
    conflicts = list(s.conflicts)
    for i in s.probe.tolist():
        stored = found.get((int(series[i]), int(times[i])), _MISSING)
        if stored is _MISSING:
            keep[i] = True
        elif stored == values[i]:
            duplicate[i] = True
        else:
            conflicts.append(
                _conflict(i, f"an observation with this key is stored with value {stored!r}")
            )
    conflicts.sort(key=lambda d: int(d["index"]))
    return Verdict(np.flatnonzero(keep), int(duplicate.sum()), conflicts)


class LogRules:
    """The core's ``CommitRules`` over a registry's QC limits and state: what the engine hands
    its store. With ``quality_control`` off every row is flagged 0 and no state moves on append
    (a restart still replays the log through the checks, as it always did)."""

    def __init__(self, registry: Registry, *, quality_control: bool = True) -> None:
        self.registry = registry
        self.quality_control = quality_control
        # The last batches flagged (their columns and QC plan), by the id of their flags, so
        # that ``advance`` of one of them moves the state by its plan instead of checking its
        # rows again; a batch never advanced (its transaction failed) drops out.
        self._plans: collections.OrderedDict[int, tuple[I64, I64, I64, F64, qc.Plan]] = (
            collections.OrderedDict()
        )

    def screen(self, series: I64, times: I64, values: list[Any], latest: I64) -> Screen:
        return screen(series, times, values, latest)

    def settle(
        self,
        screen: Screen,
        series: I64,
        times: I64,
        values: list[Any],
        found: Mapping[tuple[int, int], Any],
    ) -> Verdict:
        return settle(screen, series, times, values, found)

    def flag(self, series: I64, times: I64, numeric: F64) -> I64:
        if not self.quality_control:
            return np.zeros(len(series), np.int64)
        reg = self.registry
        flags, plan = qc.check_planned(reg.qc_state, reg.qc_limits, series, times, numeric)
        plans = self._plans
        plans[id(flags)] = (flags, series, times, numeric, plan)
        while len(plans) > _PLANS:
            plans.popitem(last=False)
        return flags

    def advance(self, series: I64, times: I64, numeric: F64, flags: I64) -> None:
        """Move the QC state past a committed batch. The writer flags a batch and advances
        it in commit order, and the batches flagged in between (a group's) have other series,
        so the plan made when it was flagged still holds: it is used when these are the very
        arrays ``flag`` had and gave."""
        held = self._plans.pop(id(flags), None)
        if (
            held is not None
            and held[0] is flags
            and held[1] is series
            and held[2] is times
            and held[3] is numeric
        ):
            qc.advance_planned(self.registry.qc_state, held[4])
            return
        qc.advance(self.registry.qc_state, series, times, numeric, flags)

    def replay(self, series: I64, times: I64, numeric: F64) -> None:
        reg = self.registry
        qc.check(reg.qc_state, reg.qc_limits, series, times, numeric, commit=True)
