"""Columnar ingest: an Arrow IPC stream or a Parquet file in, the log's columns out.

The JSON path (``core/ingest.py``) makes a Python object per row and resolves each row's device
and variable in a loop. Here a body is decoded by pyarrow into columns and checked with array
operations: the device and variable columns are dictionary-encoded and each *distinct* name (and
each distinct device-variable pair) is looked up once; times, sets and values are checked with
masks. The rules and the errors are the JSON path's: all rows or none, and a 4xx naming the row
index, field and reason of the first bad rows.

Columns (names as in the JSON rows; any other column is refused):

    device    string (or dictionary of strings)            required
    variable  string (or dictionary of strings)            required
    time      timestamp with a time zone (any unit), epoch ms integers, or RFC 3339 strings
    value     floating point or integer (stored as float), or string; null allowed
    set       integer 1..1000, null: the variable's set     optional

pyarrow is imported on the first columnar body only, so a server that never receives one does
not carry it in memory. Nothing here touches storage.

Errors: ``BadRequest`` (400) for a body that is not a readable Arrow stream or Parquet file or a
column of the wrong name or type, ``Invalid`` (422) for bad rows, ``PayloadTooLarge`` (413) when
the decoded table would be larger than a body may be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from streamgauge.core.ingest import MAX_TIME, MIN_TIME, to_ms
from streamgauge.core.registry import Registry
from streamgauge.domain.errors import BadRequest, Invalid, PayloadTooLarge
from streamgauge.domain.log import IngestColumns

ARROW_STREAM = "application/vnd.apache.arrow.stream"
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet")
MEDIA_TYPES: dict[str, str] = {ARROW_STREAM: "arrow", **{m: "parquet" for m in PARQUET_TYPES}}
"""Content type -> columnar format."""

COLUMNS = ("device", "variable", "time", "value", "set")
REQUIRED = ("device", "variable", "time", "value")
_FIELD_ORDER = {name: i for i, name in enumerate(COLUMNS)}
MIN_ROW_BYTES = 48
"""The smallest JSON row (``{"device":"a","variable":"b","time":0,"value":0}``): a columnar
batch may hold at most as many rows as the largest JSON body could."""

_time_decoder = msgspec.json.Decoder(Annotated[datetime, msgspec.Meta(tz=True)])


def _pa() -> Any:
    import pyarrow

    return pyarrow


def _arrow_errors() -> tuple[type[BaseException], ...]:
    pa = _pa()
    return (pa.ArrowException, ValueError, TypeError, OSError, IndexError, EOFError)


def read_table(body: bytes, fmt: str, *, max_bytes: int) -> Any:
    """Decode ``body`` (``fmt``: ``arrow`` or ``parquet``) into a ``pyarrow.Table``.

    The decoded table may not be larger than ``max_bytes`` (the ingest body limit) nor hold more
    rows than a JSON body of that size could: a compressed body is refused (413) rather than
    inflated past what an uncompressed one may be. A Parquet file's sizes are checked from its
    footer, before any data is read; an Arrow stream's after each record batch."""
    pa = _pa()
    bad = _arrow_errors()
    max_rows = max_bytes // MIN_ROW_BYTES
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(pa.BufferReader(body))
            meta = pf.metadata
            size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            _check_size(meta.num_rows, size, max_rows, max_bytes)
            return pf.read()
        reader = pa.ipc.open_stream(pa.BufferReader(body))
        batches = []
        rows = size = 0
        for batch in reader:
            rows += batch.num_rows
            size += batch.nbytes
            _check_size(rows, size, max_rows, max_bytes)
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)
    except bad as exc:
        name = "Parquet file" if fmt == "parquet" else "Arrow IPC stream"
        raise BadRequest(
            f"malformed {name}: {exc}",
            [{"in": "body", "reason": f"not a readable {name} ({type(exc).__name__})"}],
        ) from exc


def _check_size(rows: int, size: int, max_rows: int, max_bytes: int) -> None:
    if rows > max_rows or size > max_bytes:
        raise PayloadTooLarge(
            f"the decoded batch ({rows:,} rows, {size:,} bytes) is larger than a body may be "
            f"({max_rows:,} rows, {max_bytes:,} bytes): send smaller batches",
            [{"in": "body", "reason": "decoded size over the ingest body limit"}],
        )


def _column_error(name: str, reason: str) -> BadRequest:
    return BadRequest(
        f"bad column {name!r}: {reason}", [{"in": "body", "field": name, "reason": reason}]
    )


def resolve_table(
    table: Any,
    reg: Registry,
    project_pk: int,
    *,
    now_ms: int,
    max_future_ms: int,
    max_errors: int = 100,
) -> IngestColumns:
    """Check a decoded table and resolve it to the log's columns, all rows or an error naming
    the first bad ones (``max_errors`` at most) by index, field and reason."""
    pa = _pa()
    names = list(table.column_names)
    unknown = [c for c in names if c not in COLUMNS]
    if unknown:
        raise BadRequest(
            f"unknown column(s) {', '.join(map(repr, unknown))}",
            [
                {"in": "body", "field": c, "reason": "not one of " + ", ".join(COLUMNS)}
                for c in unknown
            ],
        )
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise BadRequest(
            f"missing column(s) {', '.join(map(repr, missing))}",
            [{"in": "body", "field": c, "reason": "required column"} for c in missing],
        )
    if len(set(names)) != len(names):
        raise BadRequest("a column name appears twice", [{"in": "body", "reason": "duplicates"}])
    n = table.num_rows
    errors = _Errors(max_errors)

    dev_codes, dev_names = _codes(pa, table.column("device"), "device")
    var_codes, var_names = _codes(pa, table.column("variable"), "variable")
    errors.add(dev_codes < 0, "device", lambda i: "device must be a string, not null")
    errors.add(
        (var_codes < 0) & (dev_codes >= 0),
        "variable",
        lambda i: "variable must be a string, not null",
    )

    # Names resolved in bulk: each distinct device name and variable name is found in the
    # project's name tables by Arrow (a hash lookup in C), each (device, variable) pair by a
    # binary search over sorted integer keys (numpy); see ``_Names``.
    names_of = _Names.of(pa, reg, project_pk)
    dev_pk = names_of.devices(pa, reg, dev_names)
    known = (dev_codes >= 0) & (var_codes >= 0)
    row_dev = np.where(dev_codes >= 0, dev_pk[np.maximum(dev_codes, 0)], -1)
    errors.add(
        (dev_codes >= 0) & (row_dev < 0),
        "device",
        lambda i: f"unknown device {dev_names[dev_codes[i]]!r}",
    )
    width = max(len(var_names), 1)
    pair = np.where(known & (row_dev >= 0), dev_codes * width + var_codes, -1)
    uniq, inverse = _unique(pair, len(dev_names) * width)
    u_var, u_set, u_scale, u_offset = names_of.variables(pa, reg, uniq, dev_pk, var_names, width)
    var_pks = u_var[inverse]
    errors.add(
        (pair >= 0) & (var_pks < 0),
        "variable",
        lambda i: f"device {dev_names[dev_codes[i]]!r} has no variable {var_names[var_codes[i]]!r}",
    )

    sets = u_set[inverse]
    if "set" in names:
        sent, null = _ints(pa, table.column("set"), "set")
        errors.add(~null & ((sent < 1) | (sent > 1000)), "set", lambda i: "set must be 1 to 1000")
        sets = np.where(null | (sent < 1) | (sent > 1000), sets, sent)

    times = _times(pa, table.column("time"), errors)
    limit = now_ms + max_future_ms
    out_of_range = (times < MIN_TIME) | (times > MAX_TIME)
    errors.add(out_of_range, "time", lambda i: "time is out of range (years 1-9999)")
    errors.add(
        ~out_of_range & (times > limit),
        "time",
        lambda i: "time is more than the allowed skew ahead of the server clock",
    )
    times = np.where(out_of_range, 0, times)

    scale, offset = u_scale[inverse], u_offset[inverse]
    values = _values(pa, table.column("value"), scale, offset, var_pks >= 0, errors, reg, var_pks)
    errors.raise_if_any()
    return IngestColumns(
        project_pk, var_pks, sets.astype(np.int64), times, values, np.zeros(n, np.int64)
    )


def decode_resolve(
    body: bytes,
    fmt: str,
    reg: Registry,
    project_pk: int,
    *,
    max_bytes: int,
    now_ms: int,
    max_future_ms: int,
    max_errors: int = 100,
) -> IngestColumns:
    """``read_table`` then ``resolve_table``; an empty batch is a 400. Meant to run in a
    worker thread (``asyncio.to_thread``): pyarrow and numpy release the GIL for most of it,
    and building a large project's name tables after a metadata change (about 0.7 s for
    180,000 variables on a busy 2-core machine) does not hold the event loop."""
    table = read_table(body, fmt, max_bytes=max_bytes)
    if not table.num_rows:
        raise BadRequest("the batch holds no observations")
    return resolve_table(
        table,
        reg,
        project_pk,
        now_ms=now_ms,
        max_future_ms=max_future_ms,
        max_errors=max_errors,
    )


def _unique(
    codes: npt.NDArray[np.int64], bound: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
    """``np.unique(codes, return_inverse=True)`` for codes from -1 to ``bound - 1``: with a
    table of ``bound`` flags when that is not much larger than the batch (no sort of the
    rows, which took a third of the resolve of a 50,000-row batch), else by sorting."""
    if bound > 4 * len(codes) + 65_536:
        uniq, inverse = np.unique(codes, return_inverse=True)
        return uniq.astype(np.int64), inverse.reshape(-1)
    present = np.zeros(bound + 1, np.bool_)
    present[codes + 1] = True
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present).astype(np.int64) - 1, rank[codes + 1].astype(np.intp)


class _Names:
    """A project's device and variable names as lookup tables, built once per registry
    version (kept in ``Registry.derived``, which a metadata change drops) and checked against
    the registry's sizes: device names and pks, interned variable names, and the variables
    sorted by the key ``device pk * len(names) + name code`` with their pk, set and unit
    conversion. A name the tables miss is looked up in the registry's maps (so a table a
    moment behind the registry never refuses a row that is valid)."""

    def __init__(self, pa: Any, reg: Registry, project_pk: int) -> None:
        self.project_pk = project_pk
        devs = [d for d in list(reg.devices_by_pk.values()) if d.project_pk == project_pk]
        self.dev_names = _string_array(pa, [d.id for d in devs])
        self.dev_pks = np.array([d.pk for d in devs], np.int64)
        # The project's variables, from the registry's columns.
        vpk = np.flatnonzero((reg.v_device >= 0) & np.isin(reg.v_device, self.dev_pks))
        ids = [reg.name_list[c] for c in reg.v_id[vpk].tolist()]
        names = sorted(set(ids))
        self.var_names = _string_array(pa, names)
        self.width = max(len(names), 1)
        code = {n: i for i, n in enumerate(names)}
        keys = reg.v_device[vpk].astype(np.int64) * self.width + np.array(
            [code[i] for i in ids], np.int64
        )
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.var_pk = vpk.astype(np.int64)[order]
        self.var_set = reg.v_set[vpk].astype(np.int64)[order]
        entry = reg.v_entry[vpk][order]
        self.scale = np.array([e[1] for e in reg.entries] or [1.0], np.float64)[entry]
        self.offset = np.array([e[2] for e in reg.entries] or [0.0], np.float64)[entry]

    @staticmethod
    def of(pa: Any, reg: Registry, project_pk: int) -> _Names:
        mark = (reg.version, len(reg.devices_by_pk), len(reg.variables_by_pk))
        key = ("columnar-names", project_pk)
        cached = reg.derived.get(key)
        if isinstance(cached, tuple) and cached[0] == mark:
            names: _Names = cached[1]
            return names
        names = _Names(pa, reg, project_pk)
        reg.derived[key] = (mark, names)
        return names

    def devices(self, pa: Any, reg: Registry, names: list[str]) -> npt.NDArray[np.int64]:
        """The pk of each device name (-1: no such device in the project)."""
        import pyarrow.compute as pc

        idx = _int64(pa, pc.index_in(_string_array(pa, names), self.dev_names), -1)
        pks = np.where(idx >= 0, self.dev_pks[np.maximum(idx, 0)] if len(self.dev_pks) else -1, -1)
        for i in np.flatnonzero(pks < 0).tolist():  # missed: ask the registry itself
            dev = reg.devices.get((self.project_pk, names[i]))
            if dev is not None:
                pks[i] = dev.pk
        return pks.astype(np.int64)

    def variables(
        self,
        pa: Any,
        reg: Registry,
        pairs: npt.NDArray[np.int64],
        dev_pk: npt.NDArray[np.int64],
        var_names: list[str],
        width: int,
    ) -> tuple[
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
    ]:
        """Variable pk, set, scale and offset of each pair code ``device code * width +
        variable code`` (pk -1: no such variable)."""
        import pyarrow.compute as pc

        ok = pairs >= 0
        d, v = np.divmod(np.maximum(pairs, 0), width)
        name_code = _int64(pa, pc.index_in(_string_array(pa, var_names), self.var_names), -1)
        code = name_code[v] if len(name_code) else np.full(len(pairs), -1, np.int64)
        keys = dev_pk[d] * self.width + code
        pos = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        hit = ok & (code >= 0) & (dev_pk[d] >= 0)
        if len(self.keys):
            hit &= self.keys[pos] == keys
        else:
            hit &= False
        var_pk = np.where(hit, self.var_pk[pos] if len(self.keys) else -1, -1).astype(np.int64)
        sets = np.where(hit, self.var_set[pos] if len(self.keys) else 0, 0).astype(np.int64)
        scale = np.where(hit, self.scale[pos] if len(self.keys) else 1.0, 1.0)
        offset = np.where(hit, self.offset[pos] if len(self.keys) else 0.0, 0.0)
        for j in np.flatnonzero(ok & ~hit).tolist():  # missed: ask the registry itself
            var = reg.variables.get((int(dev_pk[d[j]]), var_names[v[j]]))
            if var is not None:
                var_pk[j], sets[j] = var.pk, var.set
                scale[j], offset[j] = var.scale, var.offset
        return var_pk, sets, scale.astype(np.float64), offset.astype(np.float64)


class _Errors:
    """The bad rows found by each check, merged in (row, field) order and cut at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.found: list[tuple[int, int, dict[str, Any]]] = []

    def add(self, mask: npt.NDArray[np.bool_], field: str, reason: Any) -> None:
        for i in np.flatnonzero(mask)[: self.limit].tolist():
            self.found.append(
                (i, _FIELD_ORDER[field], {"index": i, "field": field, "reason": reason(i)})
            )

    def raise_if_any(self) -> None:
        if not self.found:
            return
        self.found.sort(key=lambda x: (x[0], x[1]))
        details = [d for _, _, d in self.found[: self.limit]]
        raise Invalid(f"{len(details)} bad row(s) in the batch; nothing was stored", details)


def _single(pa: Any, column: Any) -> Any:
    """One array from a (possibly chunked) column."""
    if isinstance(column, pa.ChunkedArray):
        if pa.types.is_dictionary(column.type) and column.num_chunks > 1:
            column = column.unify_dictionaries()
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _codes(pa: Any, column: Any, name: str) -> tuple[npt.NDArray[np.int64], list[str]]:
    """A string column as (code per row, -1 for null; the distinct names)."""
    import pyarrow.compute as pc

    arr = _single(pa, column)
    t = arr.type
    if pa.types.is_dictionary(t):
        value_type = t.value_type
    else:
        value_type = t
    if not (
        pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_string_view(value_type)
    ):
        raise _column_error(name, f"expected strings, got {t}")
    if not pa.types.is_dictionary(t):
        arr = pc.dictionary_encode(arr)
    codes = np.where(_nulls(pa, arr), -1, _numpy(pa, arr.indices, pa.int64(), np.int64))
    dictionary = arr.dictionary
    if len(dictionary) > 64 and len(dictionary) > len(codes) // 4:
        # A dictionary larger than what the rows use (a client's whole category list): only
        # the names in use are looked up.
        used = np.unique(codes[codes >= 0])
        if len(used) < len(dictionary):
            codes = np.where(codes >= 0, np.searchsorted(used, codes), -1)
            dictionary = dictionary.take(_int_array(pa, used))
    names: list[str] = dictionary.to_pylist()  # a null in the dictionary: never a match
    return codes, names


def _ints(pa: Any, column: Any, name: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    arr = _single(pa, column)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), np.int64), np.ones(len(arr), np.bool_)
    if not pa.types.is_integer(arr.type):
        raise _column_error(name, f"expected integers, got {arr.type}")
    null = _nulls(pa, arr)
    if pa.types.is_unsigned_integer(arr.type):  # uint64 beyond int64: out of any range anyway
        vals = _numpy(pa, arr, pa.float64(), np.float64)
        return np.clip(vals, -(2**62), 2**62).astype(np.int64), null
    return _numpy(pa, arr, pa.int64(), np.int64), null


def _numpy(pa: Any, arr: Any, as_type: Any, dtype: type[np.generic], fill: int = 0) -> Any:
    """A copy of ``arr`` (a primitive Arrow array) cast to ``as_type`` as a numpy array of
    ``dtype``, nulls as ``fill``, read from its data buffer. pyarrow imports pandas, when it
    is installed (about 32 MB resident for good), for ``Array.to_numpy`` and for any Python
    value it turns into Arrow (``pa.array``, ``pa.scalar``, ``fill_null``); ``to_numpy`` also
    gives floats for integers with nulls (inexact past 2**53). See ``ingest._numbers``."""
    if not len(arr):
        return np.zeros(0, dtype)
    arr = arr.cast(as_type)
    width = np.dtype(dtype).itemsize
    out = np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * width).copy()
    if arr.null_count:
        out[_nulls(pa, arr)] = fill
    return out


def _nulls(pa: Any, arr: Any) -> npt.NDArray[np.bool_]:
    """Which rows of ``arr`` are null (``Array.is_null``), read from the bits of that boolean
    array (no ``to_numpy``: see ``_numpy``)."""
    n = len(arr)
    if not n:
        return np.zeros(0, np.bool_)
    mask = arr.is_null()
    bits = np.unpackbits(np.frombuffer(mask.buffers()[1], np.uint8), bitorder="little")
    out: npt.NDArray[np.bool_] = bits[mask.offset : mask.offset + n].astype(np.bool_)
    return out


def _string_array(pa: Any, texts: Sequence[str | None]) -> Any:
    """``texts`` as an Arrow string array (None: null), built from buffers: ``pa.array`` of
    Python objects asks pandas whether they are its own, importing it (see ``_numpy``)."""
    data = [b"" if t is None else t.encode() for t in texts]
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    valid = np.packbits(np.array([t is not None for t in texts], np.bool_), bitorder="little")
    return pa.LargeStringArray.from_buffers(
        len(data), pa.py_buffer(offsets), pa.py_buffer(b"".join(data)), pa.py_buffer(valid)
    ).cast(pa.string())


def _int_array(pa: Any, values: npt.NDArray[np.int64]) -> Any:
    """An int64 numpy array as an Arrow array (``_string_array`` says why not ``pa.array``)."""
    values = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _int64(pa: Any, arr: Any, fill: int = 0) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = _numpy(pa, arr, pa.int64(), np.int64, fill)
    return out


_UNIT_MS = {"s": None, "ms": 1, "us": 1000, "ns": 1_000_000}


def _times(pa: Any, column: Any, errors: _Errors) -> npt.NDArray[np.int64]:
    """Epoch ms of every row (floored, as the JSON path does); bad rows are recorded."""
    import pyarrow.compute as pc

    arr = _single(pa, column)
    t = arr.type
    n = len(arr)
    null = _nulls(pa, arr)
    errors.add(null, "time", lambda i: "time is required (not null)")
    if pa.types.is_timestamp(t):
        if t.tz is None:
            raise _column_error(
                "time",
                "a timestamp without a time zone is ambiguous: give the column a zone (e.g. "
                "UTC), or send epoch ms integers or RFC 3339 strings with an offset",
            )
        raw = _int64(pa, arr)
        per = _UNIT_MS[t.unit]
        if per is None:  # seconds: guard the multiplication against overflow
            return np.clip(raw, MIN_TIME // 1000 - 1, MAX_TIME // 1000 + 1) * 1000
        return raw // per
    if pa.types.is_integer(t):
        ms, _ = _ints(pa, arr, "time")
        return ms
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        try:  # Arrow's ISO 8601 parser, vectorized
            parsed = pc.cast(arr, pa.timestamp("us", "UTC"))
            return _int64(pa, parsed) // 1000
        except (pa.ArrowException, ValueError):
            pass  # some row did not parse: parse each as the JSON path does, naming the bad ones
        out = np.zeros(n, np.int64)
        bad: dict[int, str] = {}
        for i, text in enumerate(arr.to_pylist()):
            if text is None:
                continue
            try:
                out[i] = to_ms(_time_decoder.decode(msgspec.json.encode(text)))
            except (msgspec.DecodeError, OverflowError) as exc:
                bad[i] = f"time {text[:64]!r} is not an RFC 3339 time with an offset ({exc})"
                out[i] = 0
        mask = np.zeros(n, np.bool_)
        mask[list(bad)] = True
        errors.add(mask, "time", lambda i: bad[i])
        return out
    raise _column_error(
        "time", f"expected a timestamp with a zone, epoch ms integers or strings, got {t}"
    )


def _values(
    pa: Any,
    column: Any,
    scale: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64],
    resolved: npt.NDArray[np.bool_],
    errors: _Errors,
    reg: Registry,
    var_pks: npt.NDArray[np.int64],
) -> list[float | str | None]:
    """The value of every row as the log stores it: floats converted from the variable's unit
    to the canonical one (rounded as the JSON path rounds), strings, None for null."""
    arr = _single(pa, column)
    t = arr.type
    n = len(arr)
    if pa.types.is_null(t):
        return [None] * n
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return list(arr.to_pylist())
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        raise _column_error("value", f"expected numbers or strings, got {t}")
    null = _nulls(pa, arr)
    v = _numpy(pa, arr, pa.float64(), np.float64)
    errors.add(~null & ~np.isfinite(v), "value", lambda i: "value must be finite")
    convert = np.flatnonzero(~null & np.isfinite(v) & resolved & ((scale != 1.0) | (offset != 0.0)))
    values: list[float | str | None] = v.tolist()
    if len(convert):
        # Python's round, row by row, only for rows sent in another unit: the same stored value
        # as the JSON path (numpy's rounding can differ in the last bit, and a re-sent row would
        # then be a conflict instead of a duplicate).
        sent = v[convert]
        conv = sent * scale[convert] + offset[convert]
        overflow: dict[int, str] = {}
        for i, x, raw in zip(convert.tolist(), conv.tolist(), sent.tolist(), strict=True):
            y = round(x, 9) if math.isfinite(x) else x
            values[i] = y
            if not math.isfinite(y):
                var = reg.variables_by_pk.get(int(var_pks[i]))
                unit, canon = (var.unit, var.entry.unit) if var is not None else ("", "")
                overflow[i] = f"value {raw!r} {unit} is not finite once converted to {canon}"
        mask = np.zeros(n, np.bool_)
        mask[list(overflow)] = True
        errors.add(mask, "value", lambda i: overflow[i])
    for i in np.flatnonzero(null).tolist():
        values[i] = None
    return values
