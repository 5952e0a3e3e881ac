"""Ingest bodies: rows (dicts, a pandas DataFrame, Arrow batches, files) cut into batches, each
encoded once as the JSON array or NDJSON the server's ingest takes.

A batch is ``Body(data, media_type, rows)``. Every source gives its rows in order, so a batch's
row ``i`` is row ``offset + i`` of the whole source (errors say where).
"""

from __future__ import annotations

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
REQUIRED = ("device", "variable", "time", "value")
OPTIONAL = ("set",)
CSV_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes
    media_type: str
    rows: int


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


def frame_batches(frame: Any, size: int) -> Iterator[Body]:
    """A pandas DataFrame's rows in batches; a datetime column ``time`` is sent as epoch ms (a
    naive one is read as UTC), missing values as null."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    yield from arrow_batches(table.to_batches(max_chunksize=size), size)


def _time_column(col: Any) -> Any:
    """A time column the server reads: timestamps as epoch ms, digit strings as integers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("ms", tz=col.type.tz)), pa.int64())
    if pa.types.is_date(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("ms")), pa.int64())
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        if len(col) and pc.all(pc.utf8_is_digit(col)).as_py():
            return pc.cast(col, pa.int64())
    return col


def arrow_batches(batches: Iterable[Any], size: int) -> Iterator[Body]:
    """Arrow record batches (columns ``device, variable, time, value[, set]``; a Parquet
    export's ``value_text`` fills ``value`` where it is null) re-cut into batches of ``size``."""
    import pyarrow as pa

    pending: list[Any] = []
    count = 0
    for batch in batches:
        _check_columns(batch.schema.names)
        pending.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield _arrow_body(table.slice(0, size))
            rest = table.slice(size)
            pending = rest.to_batches() if rest.num_rows else []
            count = rest.num_rows
    if count:
        yield _arrow_body(pa.Table.from_batches(pending))


def _check_columns(names: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ValueError(
            f"missing column(s) {', '.join(missing)}: the header must be "
            "device,variable,time,value[,set]"
        )


def _arrow_body(table: Any) -> Body:
    names = table.schema.names
    device = table.column("device").to_pylist()
    variable = table.column("variable").to_pylist()
    times = _time_column(table.column("time")).to_pylist()
    values = table.column("value").to_pylist()
    if "value_text" in names:
        texts = table.column("value_text").to_pylist()
        values = [
            t if v is None and t is not None else v for v, t in zip(values, texts, strict=True)
        ]
    if "set" in names:
        sets = table.column("set").to_pylist()
        rows = [
            {"device": d, "variable": v, "time": t, "value": x}
            if s is None
            else {"device": d, "variable": v, "time": t, "value": x, "set": s}
            for d, v, t, x, s in zip(device, variable, times, values, sets, strict=True)
        ]
    else:
        rows = [
            {"device": d, "variable": v, "time": t, "value": x}
            for d, v, t, x in zip(device, variable, times, values, strict=True)
        ]
    return Body(_dump(rows), JSON, len(rows))


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
        yield from arrow_batches(_csv_reader(path), size)
    else:
        import pyarrow.parquet as pq

        yield from arrow_batches(pq.ParquetFile(path).iter_batches(batch_size=size), size)


def _csv_reader(path: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types={"device": pa.string(), "variable": pa.string(), "time": pa.string()},
            strings_can_be_null=False,
        ),
    )
    _check_columns(reader.schema.names)
    yield from reader


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
