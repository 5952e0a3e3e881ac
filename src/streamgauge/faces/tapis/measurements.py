"""Tapis measurements: rows of ``{datetime, <var_id>: value, ...}`` in, pivoted tables out.

Writes go through the engine's ingest path (quality control, the log, live streams, alert
listeners all apply). Values come back in the unit the variable was defined in (the inverse of the
conversion applied at ingest), and every value is returned: Tapis reads remove no QC failures.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict

from streamgauge.auth import Action
from streamgauge.core.engine import Engine
from streamgauge.core.ingest import MAX_TIME, MIN_TIME, to_ms
from streamgauge.core.registry import DeviceRec, ProjectRec, VariableRec
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import BadRequest, Invalid
from streamgauge.domain.log import HistoryQuery
from streamgauge.faces.tapis.resources import (
    I,
    device_rec,
    find_instrument,
    instrument_view,
    project_rec,
    site_rec,
    site_view,
)
from streamgauge.faces.tapis.wire import CallerDep, EngineDep, TapisRoute, envelope
from streamgauge.wire.rows import format_time

router = APIRouter(prefix="/streams", route_class=TapisRoute, tags=["tapis"])


class NewMeasurement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inst_id: str
    vars: list[dict[str, Any]]


def parse_datetime(text: object, field: str, index: int | None = None) -> int:
    """ISO 8601 to epoch ms; a time without an offset is UTC."""
    detail: dict[str, Any] = {"field": field}
    if index is not None:
        detail["index"] = index
    if not isinstance(text, str):
        raise Invalid(
            f"{field} must be an ISO 8601 string",
            [{**detail, "reason": f"an ISO 8601 string is required, not {type(text).__name__}"}],
        )
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise Invalid(
            f"bad {field} {text[:64]!r}",
            [{**detail, "reason": f"{text[:64]!r} is not an ISO 8601 date and time"}],
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ms = to_ms(dt)
    if not MIN_TIME <= ms <= MAX_TIME:
        raise Invalid(
            f"{field} {text!r} is out of range",
            [{**detail, "reason": f"{text!r} is out of range (years 1-9999)"}],
        )
    return ms


def _value(v: object) -> float | str | None:
    """A measurement value as stored, as Tapis stores it (``float(value)``, else text): numbers
    and booleans (1.0, 0.0) as floats, text that reads as a number as that number, other text
    as text. Raises ``ValueError`` with the reason for what Tapis cannot store either: NaN and
    infinities (as numbers or as text such as ``"NaN"``), numbers too large for a double (a
    400-digit integer), arrays and objects."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            raise ValueError(
                f"the number ({len(str(abs(v)))} digits) is too large for a double"
            ) from None
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"a value must be a finite number, not {v!r}")
        return v
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        if not math.isfinite(f):
            raise ValueError(f"a value must be a finite number, not {v[:32]!r}")
        return f
    if v is None:
        return None
    raise ValueError(f"a value is a number or text, not {type(v).__name__}")


def _message(details: list[dict[str, Any]]) -> str:
    """The first problem in words, where it is (``vars[3].temp``), and how many there are."""
    first = details[0]
    where = "vars"
    if "index" in first:
        where += f"[{first['index']}]"
    if "field" in first:
        where += f".{first['field']}"
    rows = len({d.get("index") for d in details})
    return (
        f"{where}: {first['reason']} ({len(details)} problem(s) in {rows} row(s); nothing was "
        "saved)"
    )


def _as_tapis(exc: Invalid, origin: list[tuple[int, str]]) -> Invalid:
    """The engine's verdict on the flattened observations, told in Tapis terms: each detail's
    ``index`` becomes the index of its ``vars`` row and its ``field`` the row's key
    (``datetime`` for the time, the ``var_id`` for the value)."""
    details: list[dict[str, Any]] = []
    for d in exc.details:
        i = d.get("index")
        if not isinstance(i, int) or not 0 <= i < len(origin):
            details.append(d)
            continue
        row, key = origin[i]
        field = "datetime" if d.get("field") == "time" else key
        details.append({**d, "index": row, "field": field})
    return Invalid(_message(details) if details else exc.message, details)


@router.post("/measurements", status_code=201)
async def create_measurement(engine: EngineDep, who: CallerDep, body: NewMeasurement) -> Response:
    """Write rows, all or nothing; the reply comes after commit. Times may lie in the future
    (Tapis stores them; the native face's ``max_future_seconds`` does not apply here). Every
    bad row is named by its index in ``vars`` and its field."""
    p, d = find_instrument(engine, who, body.inst_id, Action.WRITE)
    reg = engine.registry
    known = {reg.variables_by_pk[pk].id for pk in reg.device_variables.get(d.pk, ())}
    details: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    origin: list[tuple[int, str]] = []  # (vars row, var_id) of each flattened observation
    result: dict[str, list[dict[str, Any]]] = {}
    for i, row in enumerate(body.vars):
        if "datetime" not in row:
            details.append(
                {"index": i, "field": "datetime", "reason": "Datetime field required and it is "
                 "missing!"}
            )  # fmt: skip
            continue
        try:
            ms = parse_datetime(row["datetime"], "datetime", i)
        except Invalid as exc:
            details.extend(exc.details)
            continue
        for key, raw in row.items():
            if key == "datetime":
                continue
            if key not in known:
                details.append(
                    {"index": i, "field": key, "reason": f"Variable ID: {key} is invalid!"}
                )
                continue
            try:
                value = _value(raw)
            except ValueError as exc:
                details.append({"index": i, "field": key, "reason": str(exc)})
                continue
            rows.append({"device": d.doc.id, "variable": key, "time": ms, "value": value})
            origin.append((i, key))
            result.setdefault(key, []).append({row["datetime"]: value})
    if details:  # every bad row is counted in the message; the first max_batch_errors listed
        raise Invalid(_message(details), details[: engine.settings.max_batch_errors])
    if not rows:
        raise Invalid("no measurements in vars", [{"field": "vars", "reason": "no values"}])
    try:
        await engine.ingest(p, orjson.dumps(rows), ndjson=False, future_limit=False)
    except Invalid as exc:
        raise _as_tapis(exc, origin) from exc
    return envelope(result, "Measurements Saved", 201)


# -- reads --------------------------------------------------------------------------------------


def _to_unit(var: VariableRec) -> tuple[float, float]:
    """(scale, offset) from the stored (canonical) value back to the variable's own unit."""
    return 1.0 / var.scale, -var.offset / var.scale


async def read_table(
    engine: Engine,
    d: DeviceRec,
    p: ProjectRec,
    *,
    var_ids: str | None,
    start: int | None,
    end: int | None,
    limit: int,
    offset: int,
) -> tuple[list[str], list[int], dict[str, dict[int, Any]]]:
    """(variable ids, time rows, {var_id: {time: value}}) of an instrument, paged by time row."""
    reg = engine.registry
    variables = {
        v.id: v for pk in reg.device_variables.get(d.pk, ()) if (v := reg.variables_by_pk[pk])
    }
    if var_ids:
        wanted = [x.strip() for x in var_ids.split(",") if x.strip()]
        unknown = [x for x in wanted if x not in variables]
        if unknown:
            raise BadRequest(
                f"instrument {d.doc.id!r} has no variable {unknown[0]!r}",
                [{"in": "query", "field": "var_ids", "reason": f"unknown: {', '.join(unknown)}"}],
            )
    else:
        wanted = sorted(variables)
    series = tuple(
        pk for key, pk in reg.series.items() if key[0] in {variables[w].pk for w in wanted}
    )
    if not series:
        return wanted, [], {}
    rows_needed = (offset + limit) * max(len(series), 1) + 1
    query = HistoryQuery(
        p.pk,
        series=series,
        qc_remove=0,
        start=start,
        end=end,
        limit=min(rows_needed, engine.settings.page_limit_max * len(series)),
    )
    batch: Batch = await engine.history(query)
    times = np.unique(batch.times)[offset : offset + limit]
    keep = set(times.tolist())
    table: dict[str, dict[int, Any]] = {w: {} for w in wanted}
    by_series = {pk: reg.series_by_pk[pk] for pk in series}
    convert = {w: _to_unit(variables[w]) for w in wanted}
    for s, t, val in zip(batch.series.tolist(), batch.times.tolist(), batch.values, strict=True):
        if t not in keep:
            continue
        var_id = by_series[s].variable_id
        scale, shift = convert[var_id]
        if type(val) is float and (scale != 1.0 or shift != 0.0):
            val = round(val * scale + shift, 9)
        table[var_id][t] = val
    return wanted, times.tolist(), table


async def _measurements(
    engine: Engine,
    p: ProjectRec,
    d: DeviceRec,
    *,
    start_date: str | None,
    end_date: str | None,
    var_ids: str | None,
    limit: int | None,
    offset: int | None,
    skip: int | None,
    format: str,
    with_metadata: bool,
) -> Response:
    start = parse_datetime(start_date, "start_date") if start_date else None
    end = parse_datetime(end_date, "end_date") + 1 if end_date else None  # end_date inclusive
    if start is not None and end is not None and end <= start:
        raise BadRequest("end_date is before start_date", [{"in": "query", "field": "end_date"}])
    n = min(limit or engine.settings.page_limit_max, engine.settings.page_limit_max)
    wanted, times, table = await read_table(
        engine,
        d,
        p,
        var_ids=var_ids,
        start=start,
        end=end,
        limit=n,
        offset=offset if offset is not None else (skip or 0),
    )
    labels = {t: format_time(t) for t in times}
    # a pivot of the stored points: a column for each variable with data in these rows only
    wanted = [x for x in wanted if table.get(x)]
    if format == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["time", *wanted])
        for t in times:
            w.writerow([labels[t], *("" if (v := table[x].get(t)) is None else v for x in wanted)])
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="export.csv"'},
        )
    result: dict[str, Any] = {
        x: {labels[t]: table[x][t] for t in times if t in table[x]} for x in wanted
    }
    result["measurements_in_file"] = len(times)
    if with_metadata:
        result["instrument"] = instrument_view(engine, d)
        site = engine.registry.sites.get((p.pk, d.doc.site or ""))
        result["site"] = site_view(engine, site) if site is not None else None
    return envelope(result, "Measurements found")


Format = Annotated[Literal["json", "csv"], Query(description="json (default) or csv.")]
Limit = Annotated[int | None, Query(ge=1, description="Time rows at most.")]
Offset = Annotated[int | None, Query(ge=0, description="Time rows to skip.")]
Skip = Annotated[int | None, Query(ge=0, description="Same as offset (the spec's name).")]


def _geojson(geojson: str | None) -> None:
    if geojson:
        raise BadRequest(
            "the geojson parameter is not supported",
            [{"in": "query", "field": "geojson", "reason": "use with_metadata for the site"}],
        )


@router.get("/measurements/{inst_id}")
async def download_measurements(
    engine: EngineDep,
    who: CallerDep,
    inst_id: str,
    start_date: str | None = None,
    end_date: str | None = None,
    var_ids: str | None = None,
    limit: Limit = None,
    offset: Offset = None,
    skip: Skip = None,
    format: Format = "json",
    with_metadata: bool = False,
) -> Response:
    """An instrument's measurements, one column per variable, one row per time."""
    p, d = find_instrument(engine, who, inst_id, Action.READ)
    return await _measurements(
        engine,
        p,
        d,
        start_date=start_date,
        end_date=end_date,
        var_ids=var_ids,
        limit=limit,
        offset=offset,
        skip=skip,
        format=format,
        with_metadata=with_metadata,
    )


@router.get(I + "/measurements")
async def list_measurements(
    engine: EngineDep,
    who: CallerDep,
    project_id: str,
    site_id: str,
    inst_id: str,
    start_date: str | None = None,
    end_date: str | None = None,
    var_ids: str | None = None,
    limit: Limit = None,
    offset: Offset = None,
    skip: Skip = None,
    format: Format = "json",
    with_metadata: bool = False,
    geojson: str | None = None,
) -> Response:
    """The same read, by project/site/instrument path."""
    _geojson(geojson)
    p = project_rec(engine, who, project_id, Action.READ)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    return await _measurements(
        engine,
        p,
        d,
        start_date=start_date,
        end_date=end_date,
        var_ids=var_ids,
        limit=limit,
        offset=offset,
        skip=skip,
        format=format,
        with_metadata=with_metadata,
    )
