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

    def compile(self, reg: Registry) -> npt.NDArray[np.bool_]:
        size = max(reg.series_by_pk, default=0) + 1
        allowed = np.zeros(size, np.bool_)
        for pk, s in reg.series_by_pk.items():
            if s.project_pk != self.project_pk:
                continue
            if self.devices and s.device_id not in self.devices:
                continue
            if self.variables and s.variable_id not in self.variables:
                continue
            if self.device_types or self.labels:
                dev = reg.devices_by_pk.get(s.device_pk)
                if dev is None:
                    continue
                if self.device_types and dev.doc.type not in self.device_types:
                    continue
                if self.labels and not any(m.matches(dev.doc.labels) for m in self.labels):
                    continue
            allowed[pk] = True
        return allowed


class CompiledSelection:
    """A selection with its lookup table, recompiled when the registry changes."""

    def __init__(self, selection: Selection, reg: Registry) -> None:
        self.selection = selection
        self._reg = reg
        self._version = -1
        self._allowed: npt.NDArray[np.bool_] = np.zeros(1, np.bool_)

    def mask(self, batch: Batch) -> npt.NDArray[np.bool_]:
        if self._version != self._reg.version:
            self._allowed = self.selection.compile(self._reg)
            self._version = self._reg.version
        allowed = self._allowed
        series = batch.series
        if len(series) and int(series.max()) >= len(allowed):
            allowed = np.concatenate(
                [allowed, np.zeros(int(series.max()) + 1 - len(allowed), bool)]
            )
        return allowed[series]
