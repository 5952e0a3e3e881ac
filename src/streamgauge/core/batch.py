"""Rendering columnar batches: QC flag names, values in a unit system, rows as JSON and CSV.

The ``Batch`` column container is the domain's (``domain.batch``, re-exported here with its pure
operations); what needs the registry (series names) or the unit systems is here. Importing this
module installs ``encode_rows`` as the row encoder of ``Batch.json_rows``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core.units import METRIC, UnitSystem, converter, target_unit, unit_label
from streamgauge.domain.batch import Batch, Value, use_row_encoder
from streamgauge.domain.errors import BadRequest
from streamgauge.wire.rows import format_time

if TYPE_CHECKING:
    from streamgauge.core.registry import Registry
    from streamgauge.domain.catalog import Entry

    CatalogEntry = tuple[Entry, float, float]  # ``Registry.entries``: entry, scale, offset

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


def kept_json(obj: Any) -> bytes:
    """``orjson.dumps`` for bytes that are kept (a cache): orjson returns its output in the
    buffer it wrote it to, at least 4 KiB however short the text (``sys.getsizeof`` shows only
    the text's length), so a cache of short JSON texts held 4 KiB an entry; copied, each holds
    its length. Texts that are written and dropped need no copy."""
    return bytes(memoryview(orjson.dumps(obj)))


_QC_JSON: dict[int, bytes] = {}


def _qc_json(mask: int) -> bytes:
    enc = _QC_JSON.get(mask)
    if enc is None:
        enc = _QC_JSON[mask] = kept_json(qc_names(mask))
    return enc


def per_series_affine(
    batch: Batch, registry: Registry, affine: Callable[[CatalogEntry], tuple[float, float]]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per row, ``affine(entry)`` of the variable of the row's series as (scale, offset)
    arrays, where ``entry`` is the variable's ``(catalog entry, scale, offset)`` (its
    ``Registry.entries`` item): computed once per distinct entry of the batch, looked up from
    the registry's columns (1, 0 where the series or its variable is gone)."""
    n = len(batch)
    scale = np.ones(n)
    offset = np.zeros(n)
    if not n:
        return scale, offset
    series = batch.series
    s_variable = registry.s_variable
    ok = (series >= 0) & (series < min(len(s_variable), registry.series_end))
    at = np.flatnonzero(ok)
    pks = series[at]
    var = s_variable[pks].astype(np.int64)
    live = (registry.s_project[pks] >= 0) & (var >= 0) & (var < len(registry.v_device))
    at, var = at[live], var[live]
    live = registry.v_device[var] >= 0
    at, var = at[live], var[live]
    ent = registry.v_entry[var]
    live = ent >= 0
    at, ent = at[live], ent[live]
    if not len(at):
        return scale, offset
    codes, inverse = np.unique(ent, return_inverse=True)
    entries = registry.entries
    pairs = np.array([affine(entries[c]) for c in codes.tolist()], np.float64).reshape(-1, 2)
    scale[at] = pairs[inverse, 0]
    offset[at] = pairs[inverse, 1]
    return scale, offset


def output_values(batch: Batch, registry: Registry, units: UnitSystem) -> list[Value]:
    """The batch's values in ``units``: numbers converted per series' canonical unit and kind
    (vectorized; one converter per distinct unit), strings and nulls as they are."""
    if not len(batch):
        return []
    scale, offset = per_series_affine(
        batch,
        registry,
        lambda e: converter(e[0].unit, target_unit(units, e[0].kind, e[0].unit)),
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
        if var is not None and var.id not in out:
            e = var.entry
            out[var.id] = unit_label(target_unit(units, e.kind, e.unit))
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
    """The rows as the native JSON row objects. Each row's device, variable and set are read
    from the registry's series columns, the ids' JSON kept per string code
    (``_id_json``): a record per series (``series_by_pk``, a cache of 8,192) was built again
    for most rows of a network with more series than that. The part of a row before its
    value does not depend on the units, and is made once per batch (``_row_heads``)."""
    if not len(batch):
        return []
    heads = _row_heads(batch, registry)
    values = value_json(output_values(batch, registry, units))
    qc = qc_json(batch.qc)
    return [
        b'%s%s,"qc":%s}' % (head, value, flags)
        for head, value, flags in zip(heads, values, qc, strict=True)
    ]


def value_json(values: list[Value]) -> list[bytes]:
    """Each value as JSON (NaN and the infinities as null): in one call when none is text."""
    dumped = orjson.dumps(values)
    if b'"' in dumped:  # text: its JSON may hold commas
        return [kept_json(v) for v in values]
    # (numbers and nulls only: the list's commas are its separators)
    return dumped[1:-1].split(b",") if values else []


def qc_json(qc: npt.NDArray[np.int64]) -> list[bytes]:
    """Each row's QC flag mask as the JSON list of its failed checks' names."""
    masks, inverse = np.unique(qc, return_inverse=True)
    names = [_qc_json(q) for q in masks.tolist()]
    return [names[k] for k in inverse.reshape(-1).tolist()]


def _row_heads(batch: Batch, registry: Registry) -> list[bytes]:
    """Each row's native JSON up to its value, kept on the batch for the registry's version."""
    found = batch.derived.get("row_heads")
    if found is not None and found[0] == registry.version:
        kept: list[bytes] = found[1]
        return kept
    s = batch.series
    inside = (s >= 0) & (s < registry.series_end)
    at = np.where(inside, s, 0)
    live = (inside & (registry.s_project[at] >= 0)).tolist()
    devices, variables = _id_json(registry)
    strings, names = registry.strings, registry.name_list
    times: dict[int, bytes] = {}
    heads: list[bytes] = []
    append = heads.append
    dumps = kept_json  # (kept in the registry for its life: see ``kept_json``)
    for cursor, ok, d, n, set_, t in zip(
        batch.cursors.tolist(),
        live,
        registry.s_devid[at].tolist(),
        registry.s_name[at].tolist(),
        registry.s_set[at].tolist(),
        batch.times.tolist(),
        strict=True,
    ):
        tb = times.get(t)
        if tb is None:
            tb = times[t] = format_time(t).encode()
        if ok:
            dj = devices.get(d)
            if dj is None:
                dj = devices[d] = dumps(strings[d])
            nj = variables.get(n)
            if nj is None:
                nj = variables[n] = dumps(names[n])
            append(
                b'{"cursor":%d,"device":%s,"variable":%s,"set":%d,"time":"%s","value":'
                % (cursor, dj, nj, set_, tb)
            )
        else:
            append(
                b'{"cursor":%d,"device":null,"variable":null,"set":null,"time":"%s","value":'
                % (cursor, tb)
            )
    batch.derived["row_heads"] = (registry.version, heads)
    return heads


def _id_json(registry: Registry) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Device ids' JSON by string code and variable ids' by name code (a code always names
    the same text), made on first use and kept in ``registry.derived``."""
    found = registry.derived.get("row_id_json")
    if not isinstance(found, tuple):
        found = registry.derived["row_id_json"] = ({}, {})
    return found


use_row_encoder(encode_rows, METRIC)
