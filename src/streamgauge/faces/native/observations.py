"""Ingest, history reads and live streams of observations."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, cast

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from streamgauge.auth import Action
from streamgauge.core import aggregate, columnar
from streamgauge.core.batch import CSV_HEADER, csv_rows, parse_qc, units_of
from streamgauge.core.domain import Domain
from streamgauge.core.filterlang import parse_bbox, parse_filter_on, parse_list, parse_radius
from streamgauge.core.filters import LabelMatch, Selection, canonical_expr
from streamgauge.core.framing import NDJSON, SSE, Framing
from streamgauge.core.hub import Cells
from streamgauge.core.ingest import MAX_TIME, MIN_TIME
from streamgauge.core.services.timeseries import AggregateQuery
from streamgauge.core.units import UnitSystem, parse_units
from streamgauge.core.units import warm as warm_units
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import BadRequest
from streamgauge.domain.log import HistoryQuery
from streamgauge.faces.http import (
    MAX_CURSOR,
    StrictRoute,
    decode_page,
    json_response,
    parse_cursor,
    parse_int,
    parse_time,
    read_body,
)
from streamgauge.faces.limits import CHUNK_WRITER, ChunkWriter
from streamgauge.faces.native import exports
from streamgauge.faces.native.csv_ingest import CSV_TYPES, csv_to_ndjson
from streamgauge.faces.native.deps import EngineDep, PrincipalDep, project_for
from streamgauge.wire.pages import encode_page
from streamgauge.wire.wsframes import joined_frames

router = APIRouter(tags=["observations"], route_class=StrictRoute)

INGEST_TYPES = {
    "application/json",
    "application/x-ndjson",
    "application/jsonl",
    "application/ndjson",
    *columnar.MEDIA_TYPES,  # Arrow IPC stream, Parquet (core/columnar.py)
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "/projects/{project}/observations",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["device", "variable", "time", "value"],
                            "properties": {
                                "device": {"type": "string"},
                                "variable": {"type": "string"},
                                "time": {
                                    "oneOf": [
                                        {"type": "string", "format": "date-time"},
                                        {"type": "integer", "description": "epoch ms"},
                                    ]
                                },
                                "value": {
                                    "oneOf": [
                                        {"type": "number"},
                                        {"type": "string"},
                                        {"type": "null"},
                                    ]
                                },
                                "set": {"type": "integer", "minimum": 1},
                            },
                        },
                    }
                },
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "Header `device,variable,time,value[,set]`, then a row "
                        "per observation.",
                    }
                },
                **{media: _BINARY for media in columnar.MEDIA_TYPES},
            },
        }
    },
)
async def ingest(
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    content_type: Annotated[str | None, Header()] = None,
) -> Response:
    """Store a batch of observations, all or nothing; the reply is sent after commit.

    Reply: `{"accepted", "duplicates", "first_cursor", "last_cursor"}`. Re-sent observations
    (same device, variable, set, time and value) are counted as duplicates, not stored twice.
    A `text/csv` body has the header `device,variable,time,value[,set]`; its errors name the
    row (`index`, 0 for the first data row) and the `line`.

    Large batches may come as columns: an Arrow IPC stream or a Parquet file with the columns
    `device`, `variable`, `time`, `value` and optionally `set` (see docs/columnar.md)."""
    rec = project_for(engine, who, project, Action.WRITE)
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media not in INGEST_TYPES and media not in CSV_TYPES:
        raise BadRequest(
            f"unsupported content type {media!r}",
            [
                {
                    "in": "header",
                    "field": "content-type",
                    "reason": "use application/json (an array), application/x-ndjson, text/csv, "
                    f"{columnar.ARROW_STREAM} or {columnar.PARQUET_TYPES[0]}",
                }
            ],
        )
    body = await read_body(request, engine.settings.max_body_bytes)
    if media in CSV_TYPES:
        body = csv_to_ndjson(body, engine.settings.max_batch_errors)
        media = "application/x-ndjson"
    result = await engine.ingest(
        rec, body, ndjson=media != "application/json", columnar=columnar.MEDIA_TYPES.get(media)
    )
    return json_response(
        {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "first_cursor": result.first_cursor,
            "last_cursor": result.last_cursor,
        }
    )


def _page_key(token: str | None) -> tuple[int, int] | None:
    key = decode_page(token)
    if key is None:
        return None
    t, sep, c = key.partition(":")
    try:
        if not sep:
            raise BadRequest("no ':'")
        when = parse_int(t, "page", lo=MIN_TIME, hi=MAX_TIME)
        cursor = parse_int(c, "page", lo=0, hi=MAX_CURSOR)
    except BadRequest as exc:
        raise BadRequest(
            "bad page token: pass the `next` token of the previous page unchanged",
            [{"in": "query", "field": "page", "reason": "not a token this server gave"}],
        ) from exc
    return when, cursor


# One empty set for every absent filter: ``frozenset()`` makes a new 216-byte set on each call,
# and a live selection (a feed session's, a stream's) keeps about eight of them.
_NONE: frozenset[str] = frozenset()


def _csv_list(text: str | None, field: str) -> frozenset[str]:
    return frozenset(parse_list(text, field)) if text else _NONE


class SelectionParams:
    """The filters shared by history reads and live streams, all combined with AND."""

    def __init__(
        self,
        device: Annotated[list[str] | None, Query(description="Device id (repeatable).")] = None,
        device_type: Annotated[
            list[str] | None, Query(description="Device type (repeatable).")
        ] = None,
        variable: Annotated[
            list[str] | None, Query(description="Variable id (repeatable).")
        ] = None,
        vars: Annotated[str | None, Query(description="Variable ids, comma separated.")] = None,
        label: Annotated[
            list[str] | None, Query(description="`key` or `key=value` (repeatable).")
        ] = None,
        stid: Annotated[str | None, Query(description="Site (station) ids, comma list.")] = None,
        state: Annotated[str | None, Query(description="Site states, comma list.")] = None,
        network: Annotated[str | None, Query(description="Site networks, comma list.")] = None,
        nwszone: Annotated[str | None, Query(description="NWS zones, comma list.")] = None,
        nwsfirezone: Annotated[str | None, Query(description="NWS fire zones, comma list.")] = None,
        radius: Annotated[str | None, Query(description="`lat,lon,miles` or `STID,miles`.")] = None,
        bbox: Annotated[str | None, Query(description="`min_lon,min_lat,max_lon,max_lat`.")] = None,
        qc: Annotated[
            str | None,
            Query(
                description="QC checks whose failures are removed (comma list); `none` keeps "
                "everything; default: sl_range_check."
            ),
        ] = None,
        units: Annotated[
            str | None,
            Query(description="`metric` (default), `english`, overrides like `temp|f,speed|kts`."),
        ] = None,
        filter: Annotated[
            str | None,
            Query(description="A filter_on expression: `(air_temp < 0) and (wind_speed > 10)`."),
        ] = None,
    ) -> None:
        self.qc_remove = parse_qc(qc)
        self.units = parse_units(units)
        self.expr = None if filter is None else parse_filter_on(filter)
        self.device = frozenset(device) if device else _NONE
        self.device_type = frozenset(device_type) if device_type else _NONE
        listed = _csv_list(vars, "vars")
        self.variables = frozenset(variable) | listed if variable else listed
        self.labels = tuple(LabelMatch.parse(x) for x in label or ())
        self.domain = Domain(
            stid=_csv_list(stid, "stid"),
            state=_csv_list(state, "state"),
            network=_csv_list(network, "network"),
            nwszone=_csv_list(nwszone, "nwszone"),
            nwsfirezone=_csv_list(nwsfirezone, "nwsfirezone"),
            radius=parse_radius(radius) if radius is not None else None,
            bbox=parse_bbox(bbox) if bbox is not None else None,
        )

    def selection(self, project_pk: int) -> Selection:
        return Selection(
            project_pk,
            self.device,
            self.device_type,
            self.variables,
            self.labels,
            self.domain,
            self.qc_remove,
            canonical_expr(self.expr, self.units),
        )

    @property
    def empty(self) -> bool:
        """No selection of series (QC removal and filter expressions aside)."""
        return not (self.device or self.device_type or self.variables or self.labels or self.domain)


SelectionDep = Annotated[SelectionParams, Depends()]


@router.get("/projects/{project}/observations")
async def history(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    select: SelectionDep,
    start: Annotated[
        str | None, Query(description="From this time (RFC 3339 or epoch ms).")
    ] = None,
    end: Annotated[str | None, Query(description="Before this time (exclusive).")] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    page: Annotated[str | None, Query(description="The `next` token of the previous page.")] = None,
    format: Annotated[
        Literal["json", "csv", "ndjson", "parquet"] | None,
        Query(
            description="Default: from `Accept` (text/csv, application/x-ndjson, "
            "application/vnd.apache.parquet), else json."
        ),
    ] = None,
    all_: Annotated[
        bool,
        Query(
            alias="all",
            description="Every matching observation in one streamed response (csv, ndjson or "
            "parquet; read a page at a time, constant memory); `limit` does not apply.",
        ),
    ] = False,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    every: Annotated[
        str | None,
        Query(description="Aggregate into buckets of this size: `30s`, `15m`, `1h`, `1d`."),
    ] = None,
    agg: Annotated[
        str | None,
        Query(
            description="With `every`: comma list of mean, min, max, count, sum, first, last "
            "(default mean,min,max,count)."
        ),
    ] = None,
    tz: Annotated[
        str | None,
        Query(
            description="With `every`: align buckets to local midnight in this IANA zone, or "
            "`site` (each station's zone); default UTC."
        ),
    ] = None,
) -> Response:
    """Stored observations ordered by time, paged with `next` tokens. With a `filter`, a page
    scans at most `STREAMGAUGE_HISTORY_SCAN_ROWS` stored rows and may hold fewer rows than
    `limit` (even none) with a `next` token: follow `next` until it is null. With `all=true`
    the whole selection is streamed (an export) in csv, ndjson or parquet.

    With `every`: `{"aggregates": [{"device", "variable", "set", "start", "end", "count",
    "mean", ...}], "units", "next"}`, one bucket per series and interval with numeric data,
    ordered by (device, variable, set) and `start`; `limit` counts buckets."""
    rec = project_for(engine, who, project, Action.READ)
    fmt = format or exports.format_from_accept(accept)
    if all_ and fmt == "json":
        raise BadRequest(
            "all=true streams csv, ndjson or parquet",
            [{"in": "query", "field": "format", "reason": "use csv, ndjson or parquet with all"}],
        )
    s = engine.settings
    n = min(limit or s.page_limit_default, s.page_limit_max)
    selection = select.selection(rec.pk)
    if every is not None:
        if all_ or fmt == "parquet":
            raise BadRequest(
                "aggregates are read as json, csv or ndjson pages",
                [
                    {
                        "in": "query",
                        "field": "every",
                        "reason": "not with all=true or format=parquet",
                    }
                ],
            )
        return await _aggregates(engine, rec.pk, select, start, end, n, page, fmt, every, agg, tz)
    for name, given in (("agg", agg), ("tz", tz)):
        if given is not None:
            raise BadRequest(
                f"{name} needs every",
                [{"in": "query", "field": name, "reason": "only with every (an aggregate read)"}],
            )
    series = None if select.empty else engine.series_of(selection)
    query = HistoryQuery(
        rec.pk,
        series=series,
        qc_remove=selection.qc_remove,
        start=parse_time(start, "start"),
        end=parse_time(end, "end"),
        after=_page_key(page),
        limit=n,
    )
    if all_:
        wanted = series if series is not None else exports.project_series(engine.registry, rec.pk)
        return exports.export_response(fmt, engine, query, selection, select.units, wanted)
    # With a filter, a page may hold fewer than `limit` rows (the scan per request is bounded);
    # `next` then resumes after the last row scanned.
    batch, resume = await engine.history_page(query, selection)
    nxt = encode_page(f"{resume[0]}:{resume[1]}") if resume is not None else None
    units = units_of(batch, engine.registry, select.units)
    headers = {"X-Units": orjson.dumps(units).decode()}
    if nxt:
        headers["X-Next-Page"] = nxt
    if fmt == "parquet":
        body = exports.parquet_bytes(batch, engine.registry, select.units, units)
        return Response(body, media_type=exports.PARQUET_MEDIA, headers=headers)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_HEADER)
        w.writerows(csv_rows(batch, engine.registry, select.units))
        return Response(out.getvalue(), media_type="text/csv", headers=headers)
    rows = batch.json_rows(engine.registry, select.units)
    if fmt == "ndjson":
        return Response(
            b"".join(r + b"\n" for r in rows), media_type="application/x-ndjson", headers=headers
        )
    body = (
        b'{"observations":['
        + b",".join(rows)
        + b'],"units":'
        + orjson.dumps(units)
        + b',"next":'
        + orjson.dumps(nxt)
        + b"}"
    )
    return Response(body, media_type="application/json", headers=headers)


def _aggregate_key(token: str | None) -> tuple[str, str, int, int] | None:
    key = decode_page(token)
    if key is None:
        return None
    try:
        d, v, st, t = orjson.loads(key)
        if not (isinstance(d, str) and isinstance(v, str)):
            raise ValueError("ids")
        if type(st) is not int or type(t) is not int or not MIN_TIME <= t <= MAX_TIME + 1:
            raise ValueError("numbers")
    except (ValueError, TypeError) as exc:
        raise BadRequest(
            "bad page token: pass the `next` token of the previous page unchanged",
            [{"in": "query", "field": "page", "reason": "not a token this server gave"}],
        ) from exc
    return d, v, st, t


async def _aggregates(
    engine: EngineDep,
    project_pk: int,
    select: SelectionParams,
    start: str | None,
    end: str | None,
    limit: int,
    page: str | None,
    format: str,
    every: str,
    agg: str | None,
    tz: str | None,
) -> Response:
    every_ms = aggregate.parse_every(every)
    aggs = aggregate.parse_aggs(agg)
    zone = aggregate.parse_tz(tz)
    aggregate.check_every(every_ms, zone)
    if select.expr is not None:
        raise BadRequest(
            "filter does not apply to aggregate reads",
            [{"in": "query", "field": "filter", "reason": "not with every (aggregates)"}],
        )
    selection = select.selection(project_pk)
    result = await engine.timeseries.aggregate(
        AggregateQuery(
            project_pk,
            engine.series_of(selection),
            selection.qc_remove,
            parse_time(start, "start"),
            parse_time(end, "end"),
            every_ms,
            aggs,
            zone,
            select.units,
            limit,
            _aggregate_key(page),
        )
    )
    nxt = encode_page(orjson.dumps(list(result.next)).decode()) if result.next else None
    headers = {"X-Units": orjson.dumps(result.units).decode()}
    if nxt:
        headers["X-Next-Page"] = nxt
    if format == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        fields = ["device", "variable", "set", "start", "end", *aggs]
        w.writerow(fields)
        w.writerows([b[f] for f in fields] for b in result.buckets)
        return Response(out.getvalue(), media_type="text/csv", headers=headers)
    if format == "ndjson":
        return Response(
            b"".join(orjson.dumps(b) + b"\n" for b in result.buckets),
            media_type="application/x-ndjson",
            headers=headers,
        )
    return json_response(
        {"aggregates": result.buckets, "units": result.units, "next": nxt}, headers=headers
    )


@router.get("/projects/{project}/latest")
async def latest(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    select: SelectionDep,
) -> Response:
    """Each selected series' newest observation: `{"latest": [observation, ...], "units"}`,
    from memory. Every selection parameter of the history read applies (with `qc`, the newest
    observation that QC does not remove)."""
    rec = project_for(engine, who, project, Action.READ)
    batch = await engine.timeseries.latest(select.selection(rec.pk))
    units = units_of(batch, engine.registry, select.units)
    rows = batch.json_rows(engine.registry, select.units)
    return Response(
        b'{"latest":[' + b",".join(rows) + b'],"units":' + orjson.dumps(units) + b"}",
        media_type="application/json",
    )


def gap_frame(framing: Framing, since: int, earliest: int) -> bytes:
    """The first frame of a stream resumed with ``on_gap=earliest`` past removed rows."""
    body: dict[str, Any] = {
        "since": since,
        "earliest": earliest,
        "resume": earliest - 1,
        "reason": "observations after the cursor asked for were removed by retention; "
        "continuing from the earliest kept",
    }
    if framing is SSE:
        return b"event: gap\ndata: %s\n\n" % orjson.dumps(body)
    return orjson.dumps({"gap": body}) + b"\n"


async def _after_gap(notice: bytes, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield notice
    async for frame in frames:
        yield frame


OnGap = Annotated[
    Literal["error", "earliest"] | None,
    Query(
        description="A resume cursor older than what retention kept: `error` (410 with "
        "`earliest`, the default) or `earliest` (continue from the earliest kept, after a "
        "`gap` frame saying so)."
    ),
]


def deliver_chunks(batch: Batch, cells: Cells, lo: int, hi: int, done: bytearray) -> None:
    """The ``deliver`` of a live native stream's framing (see ``core/framing.py``): of the
    round's subscribers ``lo`` to ``hi``, the streams written straight to their connection
    (their state a ``ChunkWriter``, their sink given) whose connection is ready get the
    round's rows as one HTTP chunk each, made for all of them in one call (``joined_frames``),
    the bytes their sink would have written; those with no rows in the round are done with
    it. The others are left to the hub's ``offer`` and their sink."""
    subs, bounds = cells.subs, cells.bounds
    groups: dict[tuple[str, UnitSystem], list[int]] = {}
    for i in range(lo, hi):
        sub = subs[i]
        writer = sub.state
        if (
            sub.sink is None
            or not isinstance(writer, ChunkWriter)
            or sub.overflowed
            or sub.closed is not None
        ):
            continue
        if bounds[i] == bounds[i + 1]:
            done[i] = 1
        elif writer.ready:
            groups.setdefault((sub.framing.name, sub.units), []).append(i)
    for members in groups.values():
        first = subs[members[0]]
        rows = first.framing.rows(batch, first.registry, first.units)
        chunks = joined_frames(
            rows,
            cells.content,
            [bounds[i] for i in members],
            [bounds[i + 1] for i in members],
            None,
            [None] * len(members),
            b"",
            b"",
            b"",
            0,
            True,
        )
        for i, chunk in zip(members, chunks, strict=True):
            cast(ChunkWriter, subs[i].state).write_chunk(chunk)
            done[i] = 1


# A live stream's framings: NDJSON and SSE with ``deliver_chunks``, by name
_CHUNKED = {f.name: dataclasses.replace(f, deliver=deliver_chunks) for f in (NDJSON, SSE)}


@router.get(
    "/projects/{project}/stream",
    response_class=StreamingResponse,
    responses={
        410: {
            "description": "The resume cursor is older than what retention kept (`earliest`).",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/NativeError"}}
            },
        }
    },
)
async def stream(
    request: Request,
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    select: SelectionDep,
    since: Annotated[str | None, Query(description="Resume after this cursor.")] = None,
    format: Annotated[Literal["ndjson", "sse"] | None, Query()] = None,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    on_gap: OnGap = None,
) -> Response:
    """Live observations: NDJSON, or SSE with `Accept: text/event-stream`. Resume with
    `since=<cursor>` or `Last-Event-ID`: every matching observation after it, exactly once,
    then live. Keepalive lines carry no cursor; a server-side close ends with the resume cursor."""
    rec = project_for(engine, who, project, Action.READ)
    framing = (
        SSE
        if format == "sse" or (format is None and "text/event-stream" in (accept or ""))
        else NDJSON
    )
    resume = since if since is not None else last_event_id
    cursor: int | None = None
    if resume is not None and resume != "":
        where = ("query", "since") if since is not None else ("header", "last-event-id")
        cursor = parse_cursor(resume, where[1], where[0])
        await engine.check_cursor(cursor)
    notice = b""
    if cursor is not None:
        asked = cursor
        cursor, earliest = await engine.timeseries.resume_point(rec.pk, cursor, on_gap)
        if earliest is not None:
            notice = gap_frame(framing, asked, earliest)
    selection = select.selection(rec.pk)
    writer = request.scope.get("extensions", {}).get(CHUNK_WRITER)
    direct = None
    if isinstance(writer, ChunkWriter):
        chunks = writer

        def direct(data: bytes) -> bool:
            return not chunks.paused and chunks.write(data)

    # Unit conversions made before the response starts: a client that has its headers is
    # live, and pint's registry (built by the first English-units stream) must not be built
    # in its first fan-out round, nor while the loop serves the rows it then expects.
    warm_units(select.units)
    frames = engine.stream(
        selection, _CHUNKED[framing.name], cursor, select.units, direct, state=writer
    )
    return StreamingResponse(
        _after_gap(notice, frames) if notice else frames,
        media_type=framing.media_type,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
