"""CSV bodies of the native ingest endpoint: ``device,variable,time,value[,set]``.

The header names the columns (any order; ``set`` optional). Each data row becomes one ingest
row (``time``: RFC 3339 or epoch ms; ``value``: a number, empty for null, or text; ``set``: 1 to
1000), and the batch then goes through the same ingest as JSON, all or nothing. Every bad row
is named by ``index`` (0 for the first data row, the index later checks use too) and ``line``
(1-based, the header being line 1).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import orjson

from streamgauge.core.ingest import MAX_TIME, MIN_TIME
from streamgauge.domain.errors import BadRequest, Invalid
from streamgauge.wire.errors import WireError
from streamgauge.wire.rows import parse_time

CSV_TYPES = frozenset({"text/csv", "application/csv"})
REQUIRED = ("device", "variable", "time", "value")
OPTIONAL = ("set",)
MAX_FIELD = 64 * 1024


def _time(text: str) -> int:
    t = text.strip()
    if t.lstrip("-").isdigit():
        ms = int(t)
    else:
        ms = parse_time(t)
    if not MIN_TIME <= ms <= MAX_TIME:
        raise WireError("time is out of range (years 1-9999)", "time")
    return ms


def _value(text: str) -> float | str | None:
    if text == "":
        return None
    try:
        v = float(text)
    except ValueError:
        return text
    if not math.isfinite(v):
        raise WireError("value must be finite", "value")
    return v


def _set(text: str) -> int | None:
    t = text.strip()
    if t == "":
        return None
    if not t.isdigit() or not 1 <= int(t) <= 1000:
        raise WireError("set must be a whole number from 1 to 1000", "set")
    return int(t)


def csv_to_ndjson(body: bytes, max_errors: int = 100) -> bytes:
    """The CSV batch as NDJSON ingest rows; ``Invalid`` naming every bad row."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            "the CSV body is not UTF-8", [{"in": "body", "reason": f"byte {exc.start}"}]
        ) from exc
    csv.field_size_limit(MAX_FIELD)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise BadRequest("malformed CSV header", [{"line": 1, "reason": str(exc)}]) from exc
    if header is None:
        raise BadRequest("the batch holds no observations")
    names = [h.strip().lower() for h in header]
    unknown = [n for n in names if n not in REQUIRED + OPTIONAL]
    missing = [n for n in REQUIRED if n not in names]
    if unknown or missing or len(set(names)) != len(names):
        reason = (
            f"unknown column(s) {', '.join(map(repr, unknown))}"
            if unknown
            else f"missing column(s) {', '.join(missing)}"
            if missing
            else "a column is named twice"
        )
        raise BadRequest(
            "bad CSV header: expected device,variable,time,value[,set]",
            [{"line": 1, "field": "header", "reason": reason}],
        )
    col = {n: i for i, n in enumerate(names)}
    # One buffer, not a bytes object a row: orjson returns each text in a buffer of at least
    # 4 KiB (``core.batch.kept_json``), and a 4 MB CSV of 100,000 rows held 447 MB at its peak.
    out = bytearray()
    details: list[dict[str, Any]] = []
    index = 0
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            details.append({"index": index, "line": line, "reason": f"malformed CSV: {exc}"})
            break
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        problem: dict[str, Any] | None = None
        if len(fields) != len(names):
            problem = {"reason": f"{len(fields)} fields; the header has {len(names)}"}
        else:
            try:
                row: dict[str, Any] = {
                    "device": fields[col["device"]].strip(),
                    "variable": fields[col["variable"]].strip(),
                    "time": _time(fields[col["time"]]),
                    "value": _value(fields[col["value"]]),
                }
                if "set" in col:
                    st = _set(fields[col["set"]])
                    if st is not None:
                        row["set"] = st
                if out:
                    out += b"\n"
                out += orjson.dumps(row)
            except WireError as exc:
                problem = {"field": exc.field, "reason": str(exc)}
        if problem is not None:
            details.append({"index": index, "line": line, **problem})
            if len(details) >= max_errors:
                break
        index += 1
    if details:
        raise Invalid(f"{len(details)} bad row(s) in the batch; nothing was stored", details)
    if not out:
        raise BadRequest("the batch holds no observations")
    return bytes(out)
