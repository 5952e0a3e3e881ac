"""Whole-selection exports of the history endpoint (CSV, NDJSON, Parquet), and the project's
stations as GeoJSON.

``GET /projects/{p}/observations?all=true&format=csv|ndjson|parquet`` streams every matching
observation in one response. The body is written a page at a time: each page is read from the
store with the same keyset as a paged read, encoded and sent before the next is read, so an
export of any size holds one page in memory (CSV and NDJSON as text, Parquet as one row group
per page).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson
from fastapi import APIRouter, Response

from streamgauge.auth import Action
from streamgauge.core.batch import CSV_HEADER, csv_rows, output_values, qc_names
from streamgauge.core.engine import Engine
from streamgauge.core.filters import Selection
from streamgauge.core.registry import Registry
from streamgauge.core.units import UnitSystem, target_unit, unit_label
from streamgauge.domain.batch import Batch
from streamgauge.domain.log import HistoryQuery
from streamgauge.faces.http import StrictRoute, dumps
from streamgauge.faces.native.deps import EngineDep, PrincipalDep, project_for

router = APIRouter(route_class=StrictRoute)

EXPORT_PAGE_ROWS = 10_000
"""Rows read from the store per page of an export (and per Parquet row group)."""

PARQUET_MEDIA = "application/vnd.apache.parquet"
MEDIA = {
    "csv": "text/csv",
    "ndjson": "application/x-ndjson",
    "parquet": PARQUET_MEDIA,
}
ACCEPTED = {
    "text/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    PARQUET_MEDIA: "parquet",
    "application/x-parquet": "parquet",
    "application/json": "json",
}


def format_from_accept(accept: str | None) -> str:
    """The history format an ``Accept`` header asks for (``json`` for anything else)."""
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in ACCEPTED:
            return ACCEPTED[media]
    return "json"


def units_of_series(registry: Registry, series: Iterable[int], units: UnitSystem) -> dict[str, str]:
    """The unit label of every variable of ``series`` as ``units`` shows them (known before a
    single row is read, so an export can state them in its headers)."""
    out: dict[str, str] = {}
    for pk in series:
        rec = registry.series_by_pk.get(pk)
        var = registry.variables_by_pk.get(rec.variable_pk) if rec is not None else None
        if var is not None and var.id not in out:
            e = var.entry
            out[var.id] = unit_label(target_unit(units, e.kind, e.unit))
    return out


def project_series(registry: Registry, project_pk: int) -> list[int]:
    return registry.project_series(project_pk).tolist()  # type: ignore[no-any-return]


async def pages(engine: Engine, query: HistoryQuery, selection: Selection) -> AsyncIterator[Batch]:
    """Every page of a history read, in order, ``EXPORT_PAGE_ROWS`` rows at most each."""
    after = query.after
    while True:
        page = HistoryQuery(
            query.project_pk,
            series=query.series,
            qc_remove=query.qc_remove,
            start=query.start,
            end=query.end,
            after=after,
            limit=EXPORT_PAGE_ROWS,
        )
        batch, after = await engine.history_page(page, selection)
        if len(batch):
            yield batch
        if after is None:
            return


# -- encoders, one page at a time -----------------------------------------------------------


def _csv_page(batch: Batch, registry: Registry, units: UnitSystem) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(csv_rows(batch, registry, units))
    return out.getvalue().encode()


def _csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(CSV_HEADER)
    return out.getvalue().encode()


class _Sink:
    """A write-only file for pyarrow's Parquet writer whose bytes are taken after each write."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def parquet_schema(units: dict[str, str]) -> Any:
    """The Parquet columns of an export: a number in ``value``, text in ``value_text`` (a row
    has at most one of them; neither for a null), the failed QC checks as a list of names; the
    file's metadata holds the unit of each variable (``units``, JSON)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("cursor", pa.int64()),
            ("device", pa.string()),
            ("variable", pa.string()),
            ("set", pa.int32()),
            ("time", pa.timestamp("ms", tz="UTC")),
            ("value", pa.float64()),
            ("value_text", pa.string()),
            ("qc", pa.list_(pa.string())),
        ],
        metadata={b"units": orjson.dumps(units)},
    )


def _parquet_table(batch: Batch, registry: Registry, units: UnitSystem, schema: Any) -> Any:
    import pyarrow as pa

    series = registry.series_by_pk
    recs = [series.get(s) for s in batch.series.tolist()]
    values = output_values(batch, registry, units)
    return pa.Table.from_arrays(
        [
            pa.array(batch.cursors, pa.int64()),
            pa.array([r.device_id if r else None for r in recs], pa.string()),
            pa.array([r.variable_id if r else None for r in recs], pa.string()),
            pa.array([r.set if r else None for r in recs], pa.int32()),
            pa.array(batch.times, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            pa.array([v if type(v) is float else None for v in values], pa.float64()),
            pa.array([v if type(v) is str else None for v in values], pa.string()),
            pa.array([qc_names(q) for q in batch.qc.tolist()], pa.list_(pa.string())),
        ],
        schema=schema,
    )


def encode_export(
    fmt: str,
    engine: Engine,
    query: HistoryQuery,
    selection: Selection,
    units: UnitSystem,
    unit_map: dict[str, str],
) -> AsyncIterator[bytes]:
    """The body of an export in ``fmt``, page by page."""
    registry = engine.registry
    if fmt == "parquet":
        return _parquet_body(engine, query, selection, units, unit_map)
    encode: Callable[[Batch], bytes]
    if fmt == "csv":

        def encode(b: Batch) -> bytes:
            return _csv_page(b, registry, units)

        head = _csv_header()
    else:

        def encode(b: Batch) -> bytes:
            return b"".join(r + b"\n" for r in b.json_rows(registry, units))

        head = b""

    async def body() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for batch in pages(engine, query, selection):
            yield encode(batch)

    return body()


async def _parquet_body(
    engine: Engine,
    query: HistoryQuery,
    selection: Selection,
    units: UnitSystem,
    unit_map: dict[str, str],
) -> AsyncIterator[bytes]:
    import pyarrow.parquet as pq

    schema = parquet_schema(unit_map)
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        async for batch in pages(engine, query, selection):
            writer.write_table(_parquet_table(batch, engine.registry, units, schema))
            data = sink.take()
            if data:
                yield data
    finally:
        writer.close()
    yield sink.take()


def export_response(
    fmt: str,
    engine: Engine,
    query: HistoryQuery,
    selection: Selection,
    units: UnitSystem,
    series: Iterable[int],
) -> Response:
    from fastapi.responses import StreamingResponse

    unit_map = units_of_series(engine.registry, series, units)
    return StreamingResponse(
        encode_export(fmt, engine, query, selection, units, unit_map),
        media_type=MEDIA[fmt],
        headers={"X-Units": orjson.dumps(unit_map).decode(), "Cache-Control": "no-store"},
    )


# -- stations as GeoJSON ------------------------------------------------------------------------


def site_feature(doc: dict[str, Any]) -> dict[str, Any]:
    """A site as a GeoJSON Feature: a Point at (lon, lat[, elevation]) and the site's fields as
    properties; a site without coordinates has a null geometry."""
    lat, lon, elev = doc.get("lat"), doc.get("lon"), doc.get("elevation")
    geometry: dict[str, Any] | None = None
    if lat is not None and lon is not None:
        coords = [lon, lat] if elev is None else [lon, lat, elev]
        geometry = {"type": "Point", "coordinates": coords}
    return {"type": "Feature", "id": doc.get("id"), "geometry": geometry, "properties": doc}


@router.get(
    "/projects/{project}/sites.geojson",
    tags=["sites"],
    responses={200: {"content": {"application/geo+json": {}}}},
)
async def sites_geojson(engine: EngineDep, who: PrincipalDep, project: str) -> Response:
    """The project's stations (sites) as a GeoJSON FeatureCollection: Point geometries
    (longitude, latitude, elevation in metres) with each site's fields as properties."""
    rec = project_for(engine, who, project, Action.READ)
    docs = sorted((s.doc.model_dump() for s in engine.metadata.sites(rec)), key=lambda d: d["id"])
    body = {"type": "FeatureCollection", "features": [site_feature(d) for d in docs]}
    return Response(dumps(body), media_type="application/geo+json")


def parquet_bytes(
    batch: Batch, registry: Registry, units: UnitSystem, unit_map: dict[str, str]
) -> bytes:
    """One page as a whole Parquet file (a paged read with ``format=parquet``)."""
    import pyarrow.parquet as pq

    schema = parquet_schema(unit_map)
    sink = _Sink()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        writer.write_table(_parquet_table(batch, registry, units, schema))
    return sink.take()
