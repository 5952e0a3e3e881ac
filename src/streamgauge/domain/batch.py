"""Columnar batches of committed observations: what the log hands the hub after a commit and
what a catch-up or history read returns.

A ``Batch`` is parallel columns (cursor, series, time, value, qc) plus per-batch caches of its
encodings. The columns and their pure operations (``head``, ``take``, ``concat``, ...) are here,
below the store and the core; turning rows into JSON needs the registry (names) and the unit
systems, so that is the core's (``core.batch.encode_rows``), installed once as the row encoder
(``use_row_encoder``). The JSON object of each row is encoded once per batch and unit system
(``json_rows``), then framed once per output form (``framed``): N subscribers cost N masks and N
joins of bytes, not N encodings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Value = float | str | None

# (batch, registry, unit system) -> each row's JSON object: the core's, set by use_row_encoder.
RowEncoder = Callable[["Batch", Any, Any], list[bytes]]


@dataclass(slots=True)
class _Rendering:
    encode: RowEncoder | None = None
    default_units: Hashable = None


_RENDERING = _Rendering()


def floats(values: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Each value as a float, NaN for the others (text, null, an int). Values of floats only
    (the usual batch) are converted in one C pass, not a Python step per value (0.7 ms for
    5,000 rows)."""
    if set(map(type, values)) == {float}:
        return np.array(values, np.float64)
    return np.fromiter((v if type(v) is float else np.nan for v in values), np.float64, len(values))


def use_row_encoder(encode: RowEncoder, default_units: Hashable) -> None:
    """Set how ``Batch.json_rows`` encodes rows, and the unit system used when a caller names
    none (the core does this when ``core.batch`` is imported)."""
    _RENDERING.encode = encode
    _RENDERING.default_units = default_units


@dataclass(frozen=True, slots=True)
class RowForm:
    """A frame function whose rows are not the native JSON objects: ``encode`` gives each row's
    own bytes (a face's event shape), cached per batch and form like the native rows."""

    encode: RowEncoder
    frame: Callable[[int, bytes], bytes]

    def __call__(self, cursor: int, obj: bytes) -> bytes:
        return self.frame(cursor, obj)


@dataclass(eq=False)
class Batch:
    project_pk: int
    cursors: npt.NDArray[np.int64]
    series: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    values: list[Value]
    qc: npt.NDArray[np.int64]
    received_ns: int = 0  # monotonic clock when the batch was committed (for latency metrics)
    _json: dict[Hashable, list[bytes]] = field(default_factory=dict, repr=False)
    _numeric: npt.NDArray[np.float64] | None = field(default=None, repr=False)
    derived: dict[object, Any] = field(default_factory=dict, repr=False)  # per-batch caches
    _framed: dict[tuple[str, Hashable], list[bytes]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cursors)

    @property
    def first(self) -> int:
        return int(self.cursors[0])

    @property
    def last(self) -> int:
        return int(self.cursors[-1])

    @classmethod
    def committed(
        cls,
        project_pk: int,
        cursors: npt.NDArray[np.int64],
        series: npt.NDArray[np.int64],
        times: npt.NDArray[np.int64],
        values: list[Value],
        qc: npt.NDArray[np.int64],
        numeric: npt.NDArray[np.float64],
    ) -> Batch:
        """A batch a store has just committed: received now (the monotonic clock, for the
        latency metrics), with its values as floats (``floats``: the QC's column, which the
        store made anyway) for the listeners' ``numeric()``."""
        return cls(
            project_pk, cursors, series, times, values, qc, time.monotonic_ns(), _numeric=numeric
        )

    def numeric(self) -> npt.NDArray[np.float64]:
        """The values as floats; NaN where a value is not a float (a string, null, an int)."""
        if self._numeric is None:
            self._numeric = floats(self.values)
        return self._numeric

    def json_rows(self, registry: Any, units: Hashable = None) -> list[bytes]:
        """Each row as a JSON object ``{cursor, device, variable, set, time, value, qc}``, with
        values in ``units`` (default: metric), encoded once per batch and unit system."""
        if units is None:
            units = _RENDERING.default_units
        rows = self._json.get(units)
        if rows is None:
            encode = _RENDERING.encode
            if encode is None:
                raise RuntimeError("no row encoder: import streamgauge.core.batch first")
            rows = self._json[units] = encode(self, registry, units)
        return rows

    def framed(
        self,
        form: str,
        registry: Any,
        frame: Callable[[int, bytes], bytes],
        units: Hashable = None,
    ) -> list[bytes]:
        """Each row framed by ``frame`` (its cursor and JSON object; a ``RowForm``'s own
        encoding instead of the native objects), once per batch, form and units."""
        if units is None:
            units = _RENDERING.default_units
        key = (form, units)
        rows = self._framed.get(key)
        if rows is None:
            objs = (
                frame.encode(self, registry, units)
                if isinstance(frame, RowForm)
                else self.json_rows(registry, units)
            )
            rows = [frame(c, j) for c, j in zip(self.cursors.tolist(), objs, strict=True)]
            self._framed[key] = rows
        return rows

    def encoded(
        self,
        form: str,
        registry: Any,
        encode: RowEncoder,
        units: Hashable = None,
    ) -> list[bytes]:
        """Rows encoded by a face's own ``encode`` (once per batch, form and units)."""
        if units is None:
            units = _RENDERING.default_units
        key = (form, units)
        rows = self._framed.get(key)
        if rows is None:
            rows = self._framed[key] = encode(self, registry, units)
        return rows

    def head(self, n: int) -> Batch:
        """The first ``n`` rows."""
        return Batch(
            self.project_pk,
            self.cursors[:n],
            self.series[:n],
            self.times[:n],
            self.values[:n],
            self.qc[:n],
            self.received_ns,
        )

    def take(self, mask: npt.NDArray[np.bool_]) -> Batch:
        """A new batch of the rows where ``mask`` holds."""
        return self.pick(np.flatnonzero(mask))

    def pick(self, idx: npt.NDArray[np.intp]) -> Batch:
        """A new batch of the rows at ``idx``, in that order."""
        return Batch(
            self.project_pk,
            self.cursors[idx],
            self.series[idx],
            self.times[idx],
            [self.values[i] for i in idx.tolist()],
            self.qc[idx],
            self.received_ns,
        )


def empty_batch(project_pk: int = 0) -> Batch:
    z = np.zeros(0, np.int64)
    return Batch(project_pk, z, z.copy(), z.copy(), [], z.copy())


def concat(batches: Sequence[Batch]) -> Batch:
    if not batches:
        return empty_batch()
    return Batch(
        batches[0].project_pk,
        np.concatenate([b.cursors for b in batches]),
        np.concatenate([b.series for b in batches]),
        np.concatenate([b.times for b in batches]),
        [v for b in batches for v in b.values],
        np.concatenate([b.qc for b in batches]),
    )


def merge_commits(batches: Sequence[Batch]) -> Batch:
    """Consecutive committed batches of one project as one batch for a fan-out round. Each row
    remembers its commit (``derived["commit"]``), so station reports are still judged per
    commit; ``received_ns`` is the oldest commit's."""
    if len(batches) == 1:
        return batches[0]
    merged = concat(batches)
    merged.received_ns = min(b.received_ns for b in batches)
    merged.derived["commit"] = np.repeat(
        np.arange(len(batches), dtype=np.int64), [len(b) for b in batches]
    )
    return merged
