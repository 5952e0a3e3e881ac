"""Stream selection compiled to a lookup table over series pks.

A ``Selection`` (devices, device types, variables, labels; each a list where any entry matches,
all kinds must match) is resolved against the registry once per registry version into
``allowed``: a boolean array indexed by series pk. The mask of a batch is then one numpy gather,
``allowed[batch.series]``: the same code filters live batches and catch-up reads, so the two can
never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamgauge.core.batch import Batch
from streamgauge.errors import BadRequest
from streamgauge.store.registry import Registry


@dataclass(frozen=True, slots=True)
class LabelMatch:
    key: str
    value: str | None  # None: the key with any value

    @classmethod
    def parse(cls, text: str) -> LabelMatch:
        key, sep, value = text.partition("=")
        if not key:
            raise BadRequest(
                f"bad label filter {text!r}",
                [{"field": "label", "reason": "expected key or key=value"}],
            )
        return cls(key, value if sep else None)

    def matches(self, labels: dict[str, str]) -> bool:
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value


@dataclass(frozen=True, slots=True)
class Selection:
    project_pk: int
    devices: frozenset[str] = frozenset()
    device_types: frozenset[str] = frozenset()
    variables: frozenset[str] = frozenset()
    labels: tuple[LabelMatch, ...] = ()

    def compile(self, reg: Registry, lo: int, hi: int) -> npt.NDArray[np.bool_]:
        """Which series pks in ``[lo, hi)`` this selection wants (vectorized over series)."""
        allowed: npt.NDArray[np.bool_] = reg.s_project[lo:hi] == self.project_pk
        if self.devices:
            pks = [d.pk for i in self.devices if (d := reg.devices.get((self.project_pk, i)))]
            allowed &= np.isin(reg.s_device[lo:hi], pks)
        if self.variables:
            codes = [reg.names[v] for v in self.variables if v in reg.names]
            allowed &= np.isin(reg.s_name[lo:hi], codes)
        if self.device_types:
            typed = set().union(
                *(reg.devices_of_type(self.project_pk, t) for t in self.device_types)
            )
            allowed &= np.isin(reg.s_device[lo:hi], np.fromiter(typed, np.int64, len(typed)))
        if self.labels:
            labelled = set().union(
                *(reg.devices_with_label(self.project_pk, m.key, m.value) for m in self.labels)
            )
            allowed &= np.isin(reg.s_device[lo:hi], np.fromiter(labelled, np.int64, len(labelled)))
        return allowed


class CompiledSelection:
    """A selection with its lookup table over series pks. A metadata change recompiles it; new
    series (created by ingest) only extend it."""

    def __init__(self, selection: Selection, reg: Registry) -> None:
        self.selection = selection
        self._reg = reg
        self._version = -1
        self._allowed: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)

    def mask(self, batch: Batch) -> npt.NDArray[np.bool_]:
        reg = self._reg
        if self._version != reg.version:
            self._version = reg.version
            self._allowed = self.selection.compile(reg, 0, reg.series_end)
        elif len(self._allowed) < reg.series_end:
            lo = len(self._allowed)
            self._allowed = np.concatenate(
                [self._allowed, self.selection.compile(reg, lo, reg.series_end)]
            )
        allowed = self._allowed
        series = batch.series
        if len(series) and int(series.max()) >= len(allowed):  # rows of since-deleted series
            extra = np.zeros(int(series.max()) + 1 - len(allowed), np.bool_)
            allowed = np.concatenate([allowed, extra])
        return allowed[series]
