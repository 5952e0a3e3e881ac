"""Columnar batches of committed observations, and their wire encodings cached per batch.

A ``Batch`` is what the log hands the hub after a commit and what a catch-up read returns: parallel
columns (cursor, series, time, value, qc). The JSON object of each row is encoded once per batch
(``json_rows``), then framed once per output form (``framed``); N subscribers cost N masks and N
joins of bytes, not N encodings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core.units import METRIC, UnitSystem, converter, target_unit, unit_label
from streamgauge.domain.errors import BadRequest
from streamgauge.wire.rows import format_time

if TYPE_CHECKING:
    from streamgauge.core.registry import Registry, VariableRec

Value = float | str | None
QC_NAMES: tuple[str, ...] = (
    "sl_range_check",
    "sl_rate_check",
    "sl_pers_check",
    "sl_windspd_maxgust_check",
    "sl_wind_gust_factor_check",
)


DEFAULT_QC_REMOVE = 1  # sl_range_check failures are removed unless a reader asks otherwise


def parse_qc(text: str | None, field: str = "qc") -> int:
    """The QC flags to remove: a comma list of check names; ``none``: remove nothing (and show
    every flag); absent: remove range-check failures."""
    if text is None:
        return DEFAULT_QC_REMOVE
    mask = 0
    for part in (p.strip() for p in text.split(",")):
        if part.lower() in ("none", "off", "0"):
            continue
        if part not in QC_NAMES:
            raise BadRequest(
                f"unknown QC check {part!r}",
                [{"field": field, "reason": f"expected none or any of {', '.join(QC_NAMES)}"}],
            )
        mask |= 1 << QC_NAMES.index(part)
    return mask


def qc_names(mask: int) -> list[str]:
    """The names of the failed QC checks in a stored flag mask."""
    return [name for bit, name in enumerate(QC_NAMES) if mask >> bit & 1]


_QC_JSON: dict[int, bytes] = {}


def _qc_json(mask: int) -> bytes:
    enc = _QC_JSON.get(mask)
    if enc is None:
        enc = _QC_JSON[mask] = orjson.dumps(qc_names(mask))
    return enc


@dataclass(frozen=True, slots=True)
class RowForm:
    """A frame function whose rows are not the native JSON objects: ``encode`` gives each row's
    own bytes (a face's event shape), cached per batch and form like the native rows."""

    encode: Callable[[Batch, Registry, UnitSystem], list[bytes]]
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
    _json: dict[UnitSystem, list[bytes]] = field(default_factory=dict, repr=False)
    _numeric: npt.NDArray[np.float64] | None = field(default=None, repr=False)
    derived: dict[object, Any] = field(default_factory=dict, repr=False)  # per-batch caches
    _framed: dict[tuple[str, UnitSystem], list[bytes]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cursors)

    @property
    def first(self) -> int:
        return int(self.cursors[0])

    @property
    def last(self) -> int:
        return int(self.cursors[-1])

    def numeric(self) -> npt.NDArray[np.float64]:
        """The values as floats; NaN where a value is a string or null."""
        if self._numeric is None:
            self._numeric = np.fromiter(
                (v if type(v) is float else np.nan for v in self.values), np.float64, len(self)
            )
        return self._numeric

    def json_rows(self, registry: Registry, units: UnitSystem = METRIC) -> list[bytes]:
        """Each row as a JSON object ``{cursor, device, variable, set, time, value, qc}``, with
        values in ``units`` (encoded once per batch and unit system)."""
        rows = self._json.get(units)
        if rows is None:
            rows = self._json[units] = encode_rows(self, registry, units)
        return rows

    def framed(
        self,
        form: str,
        registry: Registry,
        frame: Callable[[int, bytes], bytes],
        units: UnitSystem = METRIC,
    ) -> list[bytes]:
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
        registry: Registry,
        encode: Callable[[Batch, Registry, UnitSystem], list[bytes]],
        units: UnitSystem = METRIC,
    ) -> list[bytes]:
        """Rows encoded by a face's own ``encode`` (once per batch, form and units)."""
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
        idx = np.flatnonzero(mask)
        return Batch(
            self.project_pk,
            self.cursors[idx],
            self.series[idx],
            self.times[idx],
            [self.values[i] for i in idx.tolist()],
            self.qc[idx],
            self.received_ns,
        )


def per_series_affine(
    batch: Batch, registry: Registry, affine: Callable[[VariableRec], tuple[float, float]]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per row, ``affine(variable)`` of the row's series as (scale, offset) arrays: computed
    once per distinct series of the batch (1, 0 where the variable is gone)."""
    uniq, inverse = np.unique(batch.series, return_inverse=True)
    scale = np.ones(len(uniq))
    offset = np.zeros(len(uniq))
    for j, pk in enumerate(uniq.tolist()):
        rec = registry.series_by_pk.get(pk)
        var = registry.variables_by_pk.get(rec.variable_pk) if rec is not None else None
        if var is not None:
            scale[j], offset[j] = affine(var)
    return scale[inverse], offset[inverse]


def output_values(batch: Batch, registry: Registry, units: UnitSystem) -> list[Value]:
    """The batch's values in ``units``: numbers converted per series' canonical unit and kind
    (vectorized; one converter per distinct unit), strings and nulls as they are."""
    if not len(batch):
        return []
    scale, offset = per_series_affine(
        batch,
        registry,
        lambda var: converter(var.entry.unit, target_unit(units, var.entry.kind, var.entry.unit)),
    )
    changed = (scale != 1.0) | (offset != 0.0)
    if not changed.any():
        return batch.values
    converted = np.round(batch.numeric() * scale + offset, 6).tolist()
    return [
        c if ch and type(v) is float else v
        for v, c, ch in zip(batch.values, converted, changed.tolist(), strict=True)
    ]


def units_of(batch: Batch, registry: Registry, units: UnitSystem) -> dict[str, str]:
    """The unit label of every variable in the batch, as ``units`` shows them."""
    out: dict[str, str] = {}
    for pk in np.unique(batch.series).tolist():
        rec = registry.series_by_pk.get(pk)
        var = registry.variables_by_pk.get(rec.variable_pk) if rec is not None else None
        if var is not None and var.doc.id not in out:
            e = var.entry
            out[var.doc.id] = unit_label(target_unit(units, e.kind, e.unit))
    return out


CSV_HEADER = ("cursor", "device", "variable", "set", "time", "value", "qc")


def csv_rows(batch: Batch, registry: Registry, units: UnitSystem = METRIC) -> list[tuple[Any, ...]]:
    """The rows as CSV fields (``CSV_HEADER`` order), straight from the columns."""
    series = registry.series_by_pk
    out: list[tuple[Any, ...]] = []
    for cursor, s, t, v, q in zip(
        batch.cursors.tolist(),
        batch.series.tolist(),
        batch.times.tolist(),
        output_values(batch, registry, units),
        batch.qc.tolist(),
        strict=True,
    ):
        rec = series.get(s)
        out.append(
            (
                cursor,
                rec.device_id if rec else "",
                rec.variable_id if rec else "",
                rec.set if rec else "",
                format_time(t),
                "" if v is None else v,
                " ".join(qc_names(q)),
            )
        )
    return out


def encode_rows(batch: Batch, registry: Registry, units: UnitSystem = METRIC) -> list[bytes]:
    series = registry.series_by_pk
    times: dict[int, bytes] = {}
    out: list[bytes] = []
    append = out.append
    dumps = orjson.dumps
    for cursor, s, t, v, q in zip(
        batch.cursors.tolist(),
        batch.series.tolist(),
        batch.times.tolist(),
        output_values(batch, registry, units),
        batch.qc.tolist(),
        strict=True,
    ):
        tb = times.get(t)
        if tb is None:
            tb = times[t] = format_time(t).encode()
        rec = series.get(s)
        prefix = rec.prefix if rec is not None else b'"device":null,"variable":null,"set":null'
        append(
            b'{"cursor":%d,%s,"time":"%s","value":%s,"qc":%s}'
            % (cursor, prefix, tb, dumps(v), _qc_json(q))
        )
    return out


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
