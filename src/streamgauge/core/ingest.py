"""Ingest decoding and validation: bytes in, resolved columns out, or every bad row named.

The fast path decodes a whole batch with one typed msgspec call (an NDJSON body is joined into one
JSON array first). Only when that fails does the slow path decode row by row, to name each bad
row's index and reason. Nothing here touches storage.
"""

from __future__ import annotations

import math
import operator
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import numpy as np
import numpy.typing as npt

from streamgauge.core.registry import Registry
from streamgauge.domain.errors import BadRequest, Invalid
from streamgauge.domain.log import IngestColumns

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MIN_TIME = -62135596800000  # 0001-01-01T00:00:00Z
MAX_TIME = 253402300799999  # 9999-12-31T23:59:59.999Z


# Untracked by the garbage collector (``gc=False``): a row holds strings and numbers only, so
# it can be in no reference cycle, and a batch of 5,000 rows set off 7 collections.
class Row(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    device: str
    variable: str
    time: Annotated[datetime, msgspec.Meta(tz=True)] | int
    value: float | str | None
    set: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None


_batch_decoder = msgspec.json.Decoder(list[Row])
_row_decoder = msgspec.json.Decoder(Row)
_any_decoder = msgspec.json.Decoder()


def _lines(body: bytes) -> list[tuple[int, bytes]]:
    return [(n, line) for n, line in enumerate(body.split(b"\n")) if line.strip()]


_BAD = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_INDEX = re.compile(r"\$\[(\d+)\]")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "invalid UTF-8"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc)


def _bad_rows(details: list[dict[str, Any]]) -> Invalid:
    return Invalid(f"{len(details)} bad row(s) in the batch; nothing was stored", details)


def decode(body: bytes, *, ndjson: bool, max_errors: int = 100) -> list[Row]:
    """Decode a JSON array or NDJSON body of rows; raise naming every bad row.

    Only ``StreamgaugeError`` subclasses leave this function, whatever the input."""
    return _decode_ndjson(body, max_errors) if ndjson else _decode_array(body, max_errors)


def _decode_ndjson(body: bytes, max_errors: int) -> list[Row]:
    # The usual body (one object a line, no blank line) as one JSON array made by one
    # replace, not a list of its lines: a blank line makes an empty element (a decode error)
    # and a line of several values more rows than lines; both go the line-by-line way below.
    text = body.strip(b" \t\r\n")  # JSON whitespace only
    try:
        rows = _batch_decoder.decode(b"[" + text.replace(b"\n", b",") + b"]")
        if len(rows) == (text.count(b"\n") + 1 if text else 0):
            return rows
    except _BAD:
        pass
    lines = _lines(body)
    try:
        rows = _batch_decoder.decode(b"[" + b",".join(line for _, line in lines) + b"]")
        if len(rows) == len(lines):  # else some line held more than one value
            return rows
    except _BAD:
        pass
    details: list[dict[str, Any]] = []
    for index, (lineno, line) in enumerate(lines):
        try:
            _row_decoder.decode(line)
        except _BAD as exc:
            details.append({"index": index, "line": lineno + 1, "reason": _reason(exc)})
            if len(details) >= max_errors:
                break
    if not details:  # every line decodes alone, so a line holds several values
        details = [
            {"index": i, "line": n + 1, "reason": "a line must hold exactly one JSON object"}
            for i, (n, line) in enumerate(lines)
            if _several_values(line)
        ][:max_errors]
    raise _bad_rows(details)


def _several_values(line: bytes) -> bool:
    try:
        _row_decoder.decode(line)
    except _BAD:
        return False
    try:
        return len(_any_decoder.decode(b"[" + line + b"]")) != 1
    except _BAD:
        return True


def _decode_array(body: bytes, max_errors: int) -> list[Row]:
    try:
        rows: list[Row] = _batch_decoder.decode(body)
        return rows
    except msgspec.ValidationError:
        pass
    except _BAD as exc:
        raise BadRequest(f"malformed JSON: {_reason(exc)}") from exc
    try:
        raw = _any_decoder.decode(body)
    except msgspec.ValidationError as exc:  # e.g. a number out of range
        found = _INDEX.search(str(exc))
        detail: dict[str, Any] = {"reason": str(exc)}
        if found:
            detail["index"] = int(found.group(1))
        raise _bad_rows([detail]) from exc
    except _BAD as exc:
        raise BadRequest(f"malformed JSON: {_reason(exc)}") from exc
    if not isinstance(raw, list):
        raise BadRequest(
            "expected a JSON array of observations (or NDJSON with "
            "Content-Type: application/x-ndjson)",
            [{"reason": f"the body is a JSON {type(raw).__name__}"}],
        )
    details: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        try:
            _row_decoder.decode(msgspec.json.encode(item))
        except _BAD as exc:
            details.append({"index": index, "reason": _reason(exc)})
            if len(details) >= max_errors:
                break
    raise _bad_rows(details)


# A body this big is decoded and checked in a worker thread (``decode_resolve``), not on the
# event loop: 10,000 rows take 15-30 ms of Python, which would hold up every live stream and
# every small request meanwhile (issue 15, backfill).
OFF_LOOP_BYTES = 64 * 1024
EMPTY_BATCH = "the batch holds no observations"


def decode_resolve(
    body: bytes,
    reg: Registry,
    project_pk: int,
    *,
    ndjson: bool,
    now_ms: int,
    max_future_ms: int,
    max_errors: int = 100,
) -> IngestColumns:
    """``decode`` then ``resolve``, as one call for a worker thread (it reads the registry as
    ``resolve`` on the loop does: dict lookups, while the writer thread may apply events)."""
    if ndjson:
        fast = _resolve_ndjson(body, reg, project_pk, now_ms + max_future_ms)
        if fast is not None:
            return fast
    rows = decode(body, ndjson=ndjson, max_errors=max_errors)
    if not rows:
        raise BadRequest(EMPTY_BATCH)
    return resolve(
        rows, reg, project_pk, now_ms=now_ms, max_future_ms=max_future_ms, max_errors=max_errors
    )


_device = operator.attrgetter("device")
_variable = operator.attrgetter("variable")
_time = operator.attrgetter("time")
_value = operator.attrgetter("value")
_set = operator.attrgetter("set")


def _resolve_plain(
    rows: list[Row], reg: Registry, project_pk: int, limit: int
) -> IngestColumns | None:
    """``resolve`` of a plain batch by columns (a few passes in C per column instead of a
    Python step per row: 10,000 rows in about 3.4 ms instead of 5 to 9): every row of a known
    device and variable, with a time in epoch ms in range and a finite float value, of
    variables without a unit conversion. Anything else (an error to name, a time as text, a
    text or null value, a conversion) gives None, and ``resolve`` takes the row-by-row way,
    which gives the same columns."""
    n = len(rows)
    if not n:
        return None
    values = list(map(_value, rows))
    if set(map(type, values)) != {float}:  # (not left to numpy: it would parse "1.5")
        return None
    try:  # a time as text (a datetime) or past 64 bits: the row-by-row way
        times = np.array(list(map(_time, rows)), np.int64)
    except (TypeError, OverflowError):
        return None
    # Each row's (device, variable) as an index among the distinct names of the batch.
    devices = list(map(_device, rows))
    variables = list(map(_variable, rows))
    dev_ids = list(dict.fromkeys(devices))
    var_ids = list(dict.fromkeys(variables))
    dev_at = dict(zip(dev_ids, range(len(dev_ids)), strict=True))
    var_at = dict(zip(var_ids, range(len(var_ids)), strict=True))
    dev_k = np.fromiter(map(dev_at.__getitem__, devices), np.int64, n)
    var_k = np.fromiter(map(var_at.__getitem__, variables), np.int64, n)
    given: list[int | None] | None = None
    if any(map(_set, rows)):  # a set given (1 or more) somewhere
        given = list(map(_set, rows))
    return _plain_columns(
        reg, project_pk, limit, dev_ids, dev_k, var_ids, var_k, times, values, given
    )


def _plain_columns(
    reg: Registry,
    project_pk: int,
    limit: int,
    dev_ids: list[str],
    dev_k: npt.NDArray[np.int64],
    var_ids: list[str],
    var_k: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    values: list[float | str | None],
    given: list[int | None] | None,
) -> IngestColumns | None:
    """The plain batch's columns from its rows' names (``dev_k``, ``var_k``: each row's index
    in ``dev_ids``, ``var_ids``), times, values (floats) and sets given (None: no row gives
    one), or None when the row-by-row way must decide (see ``_resolve_plain``)."""
    pairs, which = np.unique(dev_k * len(var_ids) + var_k, return_inverse=True)
    which = which.reshape(-1)
    found = _plain_variables(reg, project_pk, dev_ids, var_ids, pairs)
    if found is None:
        return None
    var_pk, var_set = found
    numbers = np.array(values, np.float64)
    if (
        times.min() < MIN_TIME
        or times.max() > min(MAX_TIME, limit)
        or not np.isfinite(numbers).all()
    ):
        return None
    sets = var_set[which]
    if given is not None:
        sets = np.array([g or d for g, d in zip(given, sets.tolist(), strict=True)], np.int64)
    n = len(times)
    return IngestColumns(project_pk, var_pk[which], sets, times, values, np.zeros(n, np.int64))


def _resolve_ndjson(
    body: bytes, reg: Registry, project_pk: int, limit: int
) -> IngestColumns | None:
    """``decode`` then ``resolve`` of a plain NDJSON batch by pyarrow's JSON reader, which
    parses the whole body into columns in C++ with the GIL released: no Python object per row
    (a 5,000-row body holds the GIL about 1 ms instead of about 4). Only a body whose
    every line is one object with exactly ``device``, ``variable`` (strings), ``time`` (an
    integer), ``value`` (a finite number) and ``set`` (optional, 1 to 1000) of a known device
    and variable without a unit conversion, is taken here; anything else gives None and the
    msgspec way decides (it names every bad row), so the two never disagree on a body this
    takes (tests/core/test_ingest.py compares them)."""
    text = body.strip(b" \t\r\n")
    if not text.startswith(b"{"):  # (a byte-order mark, an array: the msgspec way)
        return None
    pa, pj = _arrow_json()
    try:
        table = pj.read_json(
            pa.BufferReader(text),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(text) + 1),
            parse_options=_ARROW_ROWS[0],
        )
    except (pa.ArrowException, ValueError, UnicodeDecodeError):
        return None
    n = table.num_rows
    # One row a line: the reader also takes two objects on one line, which the msgspec way
    # refuses (and a blank line, which it takes: that body goes the msgspec way too).
    if n != text.count(b"\n") + 1 or table.column("device").num_chunks != 1:
        return None
    dev, var, time_, value, set_ = (table.column(i).chunk(0) for i in range(5))
    if dev.null_count or var.null_count or time_.null_count or value.null_count:
        return None  # a field missing (or a null value: the row-by-row way keeps those)
    numbers = _numbers(value, np.float64)
    if not np.isfinite(numbers).all():
        return None
    # ``-0`` (an integer) is 0.0 to msgspec and -0.0 to Arrow (``-0.0`` is -0.0 to both).
    if np.signbit(numbers[numbers == 0]).any() and _INT_MINUS_ZERO.search(text):
        return None
    given: list[int | None] | None = None
    if set_.null_count != n:
        given = set_.to_pylist()
        sent = np.array([1 if g is None else g for g in given], np.int64)
        if sent.min() < 1 or sent.max() > 1000:
            return None
    dev_d, var_d = dev.dictionary_encode(), var.dictionary_encode()
    if str(dev_d.indices.type) != "int32" or str(var_d.indices.type) != "int32":
        return None  # (pyarrow's default index type: an other one would be read wrong)
    try:  # the reader does not check that a string is UTF-8; making it a str does
        dev_ids, var_ids = dev_d.dictionary.to_pylist(), var_d.dictionary.to_pylist()
    except UnicodeDecodeError:
        return None
    return _plain_columns(
        reg,
        project_pk,
        limit,
        dev_ids,
        _numbers(dev_d.indices, np.int32).astype(np.int64),
        var_ids,
        _numbers(var_d.indices, np.int32).astype(np.int64),
        _numbers(time_, np.int64),
        numbers.tolist(),
        given,
    )


def _numbers(arr: Any, dtype: type[np.generic]) -> Any:
    """A copy of a primitive Arrow array without nulls as a numpy array, from its data buffer
    (``Array.to_numpy`` imports pandas, when installed: 32 MB resident for nothing here)."""
    return np.frombuffer(
        arr.buffers()[1], dtype, len(arr), arr.offset * np.dtype(dtype).itemsize
    ).copy()


_INT_MINUS_ZERO = re.compile(rb"-0(?![0-9.eE])")
_ARROW_ROWS: list[Any] = []  # pyarrow.json.ParseOptions of a row, made on first use


def _arrow_json() -> tuple[Any, Any]:
    """pyarrow and pyarrow.json, imported on the first big NDJSON body (so a server that never
    gets one does not carry them), with the system allocator as Arrow's memory pool: Arrow's
    default (mimalloc) keeps tens of MB of freed blocks resident after a few batches."""
    import pyarrow as pa
    import pyarrow.json as pj

    if not _ARROW_ROWS:
        pa.set_memory_pool(pa.system_memory_pool())
        schema = pa.schema(
            [
                ("device", pa.string()),
                ("variable", pa.string()),
                ("time", pa.int64()),
                ("value", pa.float64()),
                ("set", pa.int64()),
            ]
        )
        _ARROW_ROWS.append(
            pj.ParseOptions(
                explicit_schema=schema,
                unexpected_field_behavior="error",
                newlines_in_values=False,
            )
        )
    return pa, pj


def _plain_variables(
    reg: Registry,
    project_pk: int,
    dev_ids: list[str],
    var_ids: list[str],
    pairs: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
    """The variable pk and default set of each (device, variable) pair (``pairs``: index of
    the device in ``dev_ids`` times ``len(var_ids)`` plus that of the variable), or None if
    one is unknown or has a unit conversion.

    What ``reg.variables.get((device pk, id))`` gives, for all pairs at once and without a
    record per variable (the registry builds records on demand and keeps 8,192: a network of
    more variables than that built one per lookup, a quarter of ingest's time): each device's
    list of variables (``d_first``, ``v_next``, newest first) is walked a step at a time for
    every pair still looking, and the first variable with the pair's id is the pair's."""
    devices = reg.devices
    dev_pks = np.empty(len(dev_ids), np.int64)
    for k, device in enumerate(dev_ids):
        dev = devices.get((project_pk, device))
        if dev is None:
            return None
        dev_pks[k] = dev.pk
    codes = np.empty(len(var_ids), np.int64)
    for k, variable in enumerate(var_ids):
        code = reg.names.get(variable)
        if code is None:
            return None
        codes[k] = code
    # The columns as of now: the writer thread may grow (replace) them meanwhile; a pk past
    # the end of one read here is a variable added since, and the row-by-row way takes over.
    d_first, v_next, v_id, v_device = reg.d_first, reg.v_next, reg.v_id, reg.v_device
    v_set, v_entry = reg.v_set, reg.v_entry
    size = min(len(v_next), len(v_id), len(v_device), len(v_set), len(v_entry))
    pair_dev = dev_pks[pairs // len(var_ids)]
    pair_code = codes[pairs % len(var_ids)]
    if int(pair_dev.max()) >= len(d_first):
        return None
    found = np.full(len(pairs), -1, np.int64)
    looking = np.arange(len(pairs))
    cur = d_first[pair_dev].astype(np.int64)
    for _ in range(size + 1):  # a list is never longer (bounded even if one changes meanwhile)
        if not len(looking):
            break
        # The device's list ended (no such variable), or a variable added since.
        if int(cur.min()) < 0 or int(cur.max()) >= size:
            return None
        hit = v_id[cur] == pair_code[looking]
        found[looking[hit]] = cur[hit]
        looking, cur = looking[~hit], v_next[cur[~hit]].astype(np.int64)
    if len(looking) or (v_device[found] < 0).any():
        return None
    entries = reg.entries
    plain = np.array([scale == 1.0 and offset == 0.0 for _, scale, offset in entries], np.bool_)
    entry = v_entry[found].astype(np.int64)
    if (entry < 0).any() or (entry >= len(plain)).any() or not plain[entry].all():
        return None
    return found, v_set[found].astype(np.int64)


def to_ms(t: datetime | int) -> int:
    if isinstance(t, int):
        return t
    return (t - _EPOCH) // _MS


def resolve(
    rows: list[Row],
    reg: Registry,
    project_pk: int,
    *,
    now_ms: int,
    max_future_ms: int,
    max_errors: int = 100,
) -> IngestColumns:
    """Resolve device/variable ids, check times and values; all rows or an error naming each."""
    fast = _resolve_plain(rows, reg, project_pk, now_ms + max_future_ms)
    if fast is not None:
        return fast
    n = len(rows)
    var_pks = np.empty(n, np.int64)
    sets = np.empty(n, np.int64)
    times = np.empty(n, np.int64)
    values: list[float | str | None] = [None] * n
    details: list[dict[str, Any]] = []
    devices = reg.devices
    variables = reg.variables
    limit = now_ms + max_future_ms
    for i, row in enumerate(rows):
        scale, offset, var = 1.0, 0.0, None
        dev = devices.get((project_pk, row.device))
        if dev is None:
            details.append(
                {"index": i, "field": "device", "reason": f"unknown device {row.device!r}"}
            )
        else:
            var = variables.get((dev.pk, row.variable))
            if var is None:
                details.append(
                    {
                        "index": i,
                        "field": "variable",
                        "reason": f"device {row.device!r} has no variable {row.variable!r}",
                    }
                )
            else:
                var_pks[i] = var.pk
                sets[i] = row.set or var.set
                scale, offset = var.scale, var.offset
        t = row.time
        ms = t if type(t) is int else to_ms(t)
        if ms < MIN_TIME or ms > MAX_TIME:
            details.append(
                {"index": i, "field": "time", "reason": "time is out of range (years 1-9999)"}
            )
            ms = 0
        elif ms > limit:
            details.append(
                {
                    "index": i,
                    "field": "time",
                    "reason": "time is more than the allowed skew ahead of the server clock",
                }
            )
        times[i] = ms
        v = row.value
        if type(v) is float:
            if not math.isfinite(v):
                details.append({"index": i, "field": "value", "reason": "value must be finite"})
            elif scale != 1.0 or offset != 0.0:
                # sent in the variable's own unit: stored in the canonical one, rounded (an
                # affine conversion leaves float noise, 1e-14). Finite is checked AFTER the
                # conversion: 1e303 MPa is 1e309 Pa, which is +Inf.
                v = round(v * scale + offset, 9)
                if not math.isfinite(v) and var is not None:
                    details.append(
                        {
                            "index": i,
                            "field": "value",
                            "reason": f"value {row.value!r} {var.unit} is not finite once "
                            f"converted to {var.entry.unit}",
                        }
                    )
        values[i] = v
        if len(details) >= max_errors:
            break
    if details:
        raise Invalid(f"{len(details)} bad row(s) in the batch; nothing was stored", details)
    return IngestColumns(project_pk, var_pks, sets, times, values, np.zeros(n, np.int64))
