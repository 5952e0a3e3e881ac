"""Ingest bodies: rows (dicts, a pandas DataFrame, Arrow tables, files) cut into batches, each
encoded once in a format the server's ingest takes.

A batch is ``Body(data, media_type, rows)``. Every source gives its rows in order, so a batch's
row ``i`` is row ``offset + i`` of the whole source (errors say where).

Columnar sources (Arrow tables and batches, DataFrames, CSV and Parquet files) are sent as Arrow
IPC streams when pyarrow is installed: the columns go to the server as they are read, with no
Python object per row on either side (the server's columnar ingest, ``docs/performance.md``). Such
a body keeps its table (``Body.table``) so that it can be sent again as JSON to a server that
does not take Arrow (``Body.as_json``), and a batch whose columns Arrow cannot carry as the
server reads them (a CSV value column mixing numbers and text, times mixing epoch ms and RFC
3339) is sent as JSON from the start, with the server's CSV rules (``_csv_json_rows``). Dict
rows and NDJSON files are JSON; without pyarrow, CSV files are read with the ``csv`` module and
sent as NDJSON, and DataFrames as JSON rows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

JSON = "application/json"
NDJSON = "application/x-ndjson"
ARROW = "application/vnd.apache.arrow.stream"
REQUIRED = ("device", "variable", "time", "value")
OPTIONAL = ("set",)
CSV_BLOCK_BYTES = 4 << 20
JSON_BATCH = 10_000
ARROW_BATCH = 50_000
"""Default rows per request: an Arrow batch costs the server far less per row, and fewer
requests cost it less per batch (python -m bench client)."""


@dataclass(frozen=True, slots=True)
class Body:
    """One request's body. ``table``: an Arrow body's table (to re-encode it as JSON)."""

    data: bytes
    media_type: str
    rows: int
    table: Any = None

    @property
    def columnar(self) -> bool:
        return self.media_type == ARROW

    def as_json(self, offset: int = 0) -> Body:
        """The same rows as a JSON array (for a server without columnar ingest); ``offset``:
        the index of its first row in the whole input (errors name rows by it)."""
        if not self.columnar:
            return self
        return Body(_dump(_finite(_table_rows(self.table), offset)), JSON, self.rows)


def have_arrow() -> bool:
    """Whether pyarrow can be imported (it is optional for the client)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _default(obj: Any) -> Any:
    """What orjson does not encode by itself: pandas/numpy scalars and times, Decimals."""
    if hasattr(obj, "isoformat") and isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return float(obj)
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item):
        return item()
    iso = getattr(obj, "isoformat", None)  # pandas Timestamp and the like
    if callable(iso):
        return iso()
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def _dump(rows: list[Any]) -> bytes:
    return orjson.dumps(
        rows, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_SUBCLASS
    )


def row_batches(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[Body]:
    """Dict rows in JSON-array batches of ``size``."""
    it = iter(rows)
    while True:
        chunk = list(islice(it, size))
        if not chunk:
            return
        yield Body(_dump(chunk), JSON, len(chunk))


def is_frame(obj: Any) -> bool:
    """A pandas DataFrame (without importing pandas)."""
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "to_dict") and hasattr(obj, "columns")


def is_arrow(obj: Any) -> bool:
    """An Arrow Table, RecordBatch or RecordBatchReader (without importing pyarrow)."""
    return type(obj).__module__.startswith("pyarrow") and type(obj).__name__ in (
        "Table",
        "RecordBatch",
        "RecordBatchReader",
    )


def table_batches(obj: Any, size: int) -> Iterator[Body]:
    """An Arrow Table, RecordBatch or RecordBatchReader in batches of ``size`` rows."""
    if type(obj).__name__ == "RecordBatchReader":
        yield from arrow_batches(obj, size)
    elif type(obj).__name__ == "RecordBatch":
        yield from arrow_batches([obj], size)
    else:
        yield from arrow_batches(obj.to_batches(), size)


def frame_batches(frame: Any, size: int) -> Iterator[Body]:
    """A pandas DataFrame's rows in batches; a datetime column ``time`` is sent as epoch ms (a
    naive one is read as UTC), missing values as null."""
    if not have_arrow():
        yield from _frame_json_batches(frame, size)
        return
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    yield from arrow_batches(table.to_batches(max_chunksize=size), size)


def _frame_json_batches(frame: Any, size: int) -> Iterator[Body]:
    """A DataFrame as JSON rows (no pyarrow): datetimes as epoch ms, NaN and NaT as null."""
    import pandas as pd

    frame = frame.copy()
    if "time" in frame.columns and pd.api.types.is_datetime64_any_dtype(frame["time"]):
        t = frame["time"]
        t = t.dt.tz_convert("UTC") if t.dt.tz is not None else t.dt.tz_localize("UTC")
        ms = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
        frame["time"] = ms.astype("Int64")  # integers, NaT as NA (not floats with NaN)
    for start in range(0, len(frame), size):
        chunk = frame.iloc[start : start + size]
        rows = [
            {k: None if _missing(v) else v for k, v in r.items()} for r in chunk.to_dict("records")
        ]
        yield Body(_dump(rows), JSON, len(rows))


def _missing(v: Any) -> bool:
    """NaN, NaT or NA: pandas' missing values."""
    return (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NaTType", "NAType")


# -- Arrow ------------------------------------------------------------------------------------


def arrow_batches(batches: Iterable[Any], size: int, *, csv_rules: bool = False) -> Iterator[Body]:
    """Arrow record batches (columns ``device, variable, time, value[, set]``; a Parquet
    export's ``value_text`` fills ``value`` where it is null; other columns are left out)
    re-cut into bodies of ``size`` rows. ``csv_rules``: the columns are a CSV file's text,
    read as the server reads a CSV body (``_csv_columns``)."""
    import pyarrow as pa

    pending: list[Any] = []
    count = offset = 0
    for batch in batches:
        _check_columns(batch.schema.names)
        if not batch.num_rows:
            continue
        pending.append(batch)
        count += batch.num_rows
        if count < size:
            continue
        table = pa.Table.from_batches(pending)
        start = 0
        while count - start >= size:
            yield _arrow_body(table.slice(start, size), csv_rules, offset)
            start += size
            offset += size
        rest = table.slice(start)
        pending = rest.to_batches() if rest.num_rows else []
        count = rest.num_rows
    if count:
        yield _arrow_body(pa.Table.from_batches(pending), csv_rules, offset)


def _check_columns(names: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ValueError(
            f"missing column(s) {', '.join(missing)}: the header must be "
            "device,variable,time,value[,set]"
        )


def _arrow_body(table: Any, csv_rules: bool, offset: int) -> Body:
    """An Arrow IPC stream of the batch's columns as the server's columnar ingest takes them,
    or a JSON array of its rows when Arrow cannot carry them so (``_columns`` gives None)."""
    import pyarrow as pa

    table = table.combine_chunks()
    cols = _csv_columns(table) if csv_rules else _columns(table)
    if cols is None:
        rows = _csv_json_rows(table) if csv_rules else _table_rows(table)
        return Body(_dump(_finite(rows, offset)), JSON, table.num_rows)
    out = pa.table(cols)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, out.schema) as writer:
        writer.write_table(out)
    return Body(sink.getvalue().to_pybytes(), ARROW, out.num_rows, out)


def _finite(rows: list[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    """``rows``, refused (naming the row of the whole input) if a value is a non-finite float,
    which JSON cannot carry (the server refuses them too)."""
    for i, row in enumerate(rows):
        v = row["value"]
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"row {offset + i}: value must be finite, not {v!r}")
    return rows


def _is_text(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _time(col: Any) -> Any:
    """A time column the server takes: timestamps with a zone (naive ones read as UTC, dates as
    midnight UTC), epoch ms integers, RFC 3339 strings; digit strings become integers. None:
    anything else (a mix of digit strings and others, floats)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_timestamp(t):
        return col if t.tz else col.cast(pa.timestamp(t.unit, "UTC"))
    if pa.types.is_date(t):
        return col.cast(pa.timestamp("ms")).cast(pa.timestamp("ms", "UTC"))
    if pa.types.is_integer(t):
        return col.cast(pa.int64())
    if not _is_text(t):
        return None
    if pa.types.is_dictionary(t):
        col = col.dictionary_decode()
    digits = pc.match_substring_regex(col, r"^-?[0-9]+$")
    if pc.all(digits).as_py() is not False:  # every time (null aside) is epoch ms
        return pc.cast(col, pa.int64())
    if pc.any(digits).as_py():
        return None
    return col


def _value(col: Any) -> Any:
    """A value column the server takes: floats (integers and decimals widened), strings."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        return col.cast(pa.float64())
    if pa.types.is_null(t):
        return col.cast(pa.float64())
    if _is_text(t):
        return col.dictionary_decode() if pa.types.is_dictionary(t) else col
    return None


def _set(col: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_integer(col.type) or pa.types.is_null(col.type):
        return col.cast(pa.int64())
    return None


def _merged_value(table: Any) -> Any:
    """The ``value`` column, or a Parquet export's ``value_text`` when ``value`` is all null
    and it is not. None: both hold values (numbers and text: sent as JSON rows)."""
    import pyarrow.compute as pc

    value = table.column("value")
    if "value_text" not in table.schema.names:
        return value
    text = table.column("value_text")
    if not pc.any(pc.is_valid(text)).as_py():
        return value
    if not pc.any(pc.is_valid(value)).as_py():
        return text
    return None


def _columns(table: Any) -> dict[str, Any] | None:
    """The batch's columns as the server's columnar ingest takes them, or None."""
    value = _merged_value(table)
    cols: dict[str, Any] = {
        "device": table.column("device") if _is_text(table.column("device").type) else None,
        "variable": table.column("variable") if _is_text(table.column("variable").type) else None,
        "time": _time(table.column("time")),
        "value": None if value is None else _value(value),
    }
    if "set" in table.schema.names:
        cols["set"] = _set(table.column("set"))
    if any(c is None for c in cols.values()):
        return None
    return cols


def _csv_columns(table: Any) -> dict[str, Any] | None:
    """A CSV batch (every column read as text) by the server's CSV rules: ``time`` epoch ms
    digits or RFC 3339, ``value`` a number (a batch with text values is sent as JSON rows,
    where each row's value is a number or text on its own), empty for null, ``set`` 1..1000
    or empty. None: a batch Arrow cannot carry that way (sent as JSON rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:  # the usual case, epoch ms, in one pass
        time = pc.cast(table.column("time"), pa.int64())
    except pa.ArrowInvalid:
        time = _time(pc.utf8_trim_whitespace(table.column("time")))
        if time is None:
            return None
    try:
        value = pc.cast(table.column("value"), pa.float64())
    except pa.ArrowInvalid:
        return None
    cols: dict[str, Any] = {
        "device": _trimmed_names(table.column("device")),
        "variable": _trimmed_names(table.column("variable")),
        "time": time,
        "value": value,
    }
    if "set" in table.schema.names:
        sets = pc.utf8_trim_whitespace(table.column("set"))
        if pc.all(pc.match_substring_regex(sets, r"^[0-9]{1,9}$")).as_py() is False:
            return None
        cols["set"] = pc.cast(sets, pa.int64())
    return cols


def _trimmed_names(col: Any) -> Any:
    """A CSV name column dictionary-encoded (the server looks each distinct name up once),
    with its names trimmed as the server's CSV ingest trims them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    codes = pc.dictionary_encode(arr)
    names = pc.utf8_trim_whitespace(codes.dictionary)
    return pa.DictionaryArray.from_arrays(codes.indices, names)


def _table_rows(table: Any) -> list[dict[str, Any]]:
    """The batch's rows as JSON ingest rows (from an Arrow table of any source)."""
    import pyarrow as pa

    names = table.schema.names
    device = table.column("device").to_pylist()
    variable = table.column("variable").to_pylist()
    col = table.column("time")
    if pa.types.is_date(col.type):
        col = col.cast(pa.timestamp("ms"))
    if pa.types.is_timestamp(col.type):  # epoch ms, floored (a naive time is UTC)
        per = {"s": 1000, "ms": 1, "us": -1000, "ns": -1_000_000}[col.type.unit]
        raw = col.cast(pa.int64()).to_pylist()
        times: list[Any] = [None if x is None else x * per if per > 0 else x // -per for x in raw]
    else:
        times = [_time_text(x) for x in col.to_pylist()]
    values = table.column("value").to_pylist()
    if "value_text" in names:
        texts = table.column("value_text").to_pylist()
        values = [
            t if v is None and t is not None else v for v, t in zip(values, texts, strict=True)
        ]
    sets = table.column("set").to_pylist() if "set" in names else [None] * len(device)
    return _rows(device, variable, times, values, sets)


def _time_text(x: Any) -> Any:
    """Epoch ms given as digits, as an integer (the server's CSV rule)."""
    if isinstance(x, str) and x.strip().lstrip("-").isdigit():
        return int(x)
    return x


def _rows(
    device: list[Any], variable: list[Any], times: list[Any], values: list[Any], sets: list[Any]
) -> list[dict[str, Any]]:
    return [
        {"device": d, "variable": v, "time": t, "value": x}
        if s is None
        else {"device": d, "variable": v, "time": t, "value": x, "set": s}
        for d, v, t, x, s in zip(device, variable, times, values, sets, strict=True)
    ]


def _csv_value(text: str | None) -> Any:
    """A CSV value as the server's CSV ingest reads it: empty is null, a number a float,
    anything else text."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _csv_set(text: str | None) -> Any:
    if text is None or not text.strip():
        return None
    t = text.strip()
    return int(t) if t.isdigit() else t


def _csv_json_rows(table: Any) -> list[dict[str, Any]]:
    """A CSV batch (text columns) as JSON ingest rows, by the server's CSV rules."""
    device = [x and x.strip() for x in table.column("device").to_pylist()]
    variable = [x and x.strip() for x in table.column("variable").to_pylist()]
    times = [_time_text(x) for x in table.column("time").to_pylist()]
    values = [_csv_value(x) for x in table.column("value").to_pylist()]
    sets = (
        [_csv_set(x) for x in table.column("set").to_pylist()]
        if "set" in table.schema.names
        else [None] * len(device)
    )
    return _rows(device, variable, times, values, sets)


# -- files ------------------------------------------------------------------------------------

FILE_KINDS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".parquet": "parquet"}


def file_kind(path: Path) -> str:
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path.name}: expected a .csv, .ndjson (.jsonl) or .parquet file")
    return kind


def file_batches(path: Path, size: int) -> Iterator[Body]:
    """A file's rows in batches, read as they are sent (constant memory for any size)."""
    kind = file_kind(path)
    if kind == "ndjson":
        yield from _ndjson_batches(path, size)
    elif kind == "csv":
        if have_arrow():
            yield from arrow_batches(_csv_reader(path), size, csv_rules=True)
        else:
            yield from _csv_text_batches(path, size)
    else:
        if not have_arrow():
            raise ValueError(f"{path.name}: reading Parquet needs pyarrow (pip install pyarrow)")
        import pyarrow.parquet as pq

        yield from arrow_batches(pq.ParquetFile(path).iter_batches(batch_size=size), size)


def _csv_reader(path: Path) -> Iterator[Any]:
    """A CSV file's record batches, every column as text (``_csv_columns`` converts them as
    the server's CSV ingest would). A row with the wrong number of fields is an error naming
    its line."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with path.open("rb") as f:
        header = f.readline().decode("utf-8-sig").strip()
    names = [h.strip().lower() for h in next(csv.reader([header]), [])]
    _check_columns(names)
    bad: list[str] = []

    def invalid(row: Any) -> str:
        if not bad:  # row.number: 0-based, the header being row 0
            where = f"line {row.number + 1}" if row.number is not None else "a line"
            bad.append(
                f"{path.name}, {where}: {row.actual_columns} fields; the header has "
                f"{row.expected_columns} ({row.text[:80]!r})"
            )
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(
            block_size=CSV_BLOCK_BYTES,
            column_names=names,
            skip_rows=1,
            use_threads=False,  # rows are numbered only so (and the server needs the cores)
        ),
        parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            null_values=[""],  # an empty field is null (an empty value: no value)
            strings_can_be_null=True,
        ),
    )
    for batch in reader:
        if bad:
            raise ValueError(bad[0])
        yield batch
    if bad:
        raise ValueError(bad[0])


def _csv_text_batches(path: Path, size: int) -> Iterator[Body]:
    """A CSV file read with the ``csv`` module (no pyarrow), as NDJSON bodies."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        names = [h.strip().lower() for h in next(reader, [])]
        _check_columns(names)
        col = {n: i for i, n in enumerate(names)}
        # One buffer a body, not a bytes object a row: orjson returns each text in a buffer
        # of at least 4 KiB (20 MB for a body of 5,000 rows).
        lines = bytearray()
        count = 0
        for fields in reader:
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(names):
                raise ValueError(
                    f"{path.name}, line {reader.line_num}: {len(fields)} fields; the header "
                    f"has {len(names)}"
                )
            row: dict[str, Any] = {
                "device": fields[col["device"]].strip(),
                "variable": fields[col["variable"]].strip(),
                "time": _time_text(fields[col["time"]]),
                "value": _csv_value(fields[col["value"]]),
            }
            if isinstance(row["value"], float) and not math.isfinite(row["value"]):
                raise ValueError(f"{path.name}, line {reader.line_num}: value must be finite")
            if "set" in col:
                s = _csv_set(fields[col["set"]])
                if s is not None:
                    row["set"] = s
            lines += orjson.dumps(row)
            lines += b"\n"
            count += 1
            if count >= size:
                yield Body(bytes(lines), NDJSON, count)
                lines.clear()
                count = 0
        if count:
            yield Body(bytes(lines), NDJSON, count)


def _ndjson_batches(path: Path, size: int) -> Iterator[Body]:
    with path.open("rb") as f:
        while True:
            raw = list(islice(f, size))
            if not raw:
                return
            lines = [line for line in raw if line.strip()]
            if not lines:
                continue
            yield Body(
                b"".join(x if x.endswith(b"\n") else x + b"\n" for x in lines), NDJSON, len(lines)
            )
