"""Ingest decoding and validation: bytes in, resolved columns out, or every bad row named.

The fast path decodes a whole batch with one typed msgspec call (an NDJSON body is joined into one
JSON array first). Only when that fails does the slow path decode row by row, to name each bad
row's index and reason. Nothing here touches storage.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import numpy as np

from streamgauge.errors import BadRequest, Invalid
from streamgauge.store.base import IngestColumns
from streamgauge.store.registry import Registry

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MIN_TIME = -62135596800000  # 0001-01-01T00:00:00Z
MAX_TIME = 253402300799999  # 9999-12-31T23:59:59.999Z


class Row(msgspec.Struct, forbid_unknown_fields=True):
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


def decode(body: bytes, *, ndjson: bool, max_errors: int = 100) -> list[Row]:
    """Decode a JSON array or NDJSON body of rows; raise naming every bad row."""
    if ndjson:
        lines = _lines(body)
        try:
            return _batch_decoder.decode(b"[" + b",".join(line for _, line in lines) + b"]")
        except msgspec.DecodeError:
            pass
        details: list[dict[str, Any]] = []
        for index, (lineno, line) in enumerate(lines):
            try:
                _row_decoder.decode(line)
            except msgspec.DecodeError as exc:
                details.append({"index": index, "line": lineno + 1, "reason": str(exc)})
                if len(details) >= max_errors:
                    break
        raise Invalid(f"{len(details)} bad row(s) in the batch; nothing was stored", details)
    try:
        return _batch_decoder.decode(body)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    try:
        raw = _any_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise Invalid(f"bad JSON value: {exc}") from exc
    if not isinstance(raw, list):
        raise BadRequest(
            "expected a JSON array of observations (or NDJSON with "
            "Content-Type: application/x-ndjson)",
            [{"reason": f"the body is a JSON {type(raw).__name__}"}],
        )
    details = []
    for index, item in enumerate(raw):
        try:
            _row_decoder.decode(msgspec.json.encode(item))
        except msgspec.DecodeError as exc:
            details.append({"index": index, "reason": str(exc)})
            if len(details) >= max_errors:
                break
    raise Invalid(f"{len(details)} bad row(s) in the batch; nothing was stored", details)


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
                sets[i] = row.set or var.doc.set
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
        if type(v) is float and not math.isfinite(v):
            details.append({"index": i, "field": "value", "reason": "value must be finite"})
        values[i] = v
        if len(details) >= max_errors:
            break
    if details:
        raise Invalid(f"{len(details)} bad row(s) in the batch; nothing was stored", details)
    return IngestColumns(project_pk, var_pks, sets, times, values, np.zeros(n, np.int64))
