"""``streamgauge tail | import | export``: the command line over the Python client.

Credentials: ``--url``/``--token`` or ``STREAMGAUGE_URL``/``STREAMGAUGE_TOKEN``. A server error
is printed with its message and details (exit 1); nothing here converts rows the server can
give in the wanted format (``export`` writes the server's CSV, NDJSON or Parquet as it comes).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from streamgauge.client import APIError, AsyncClient, ClientError, IngestResult, Observation
from streamgauge.client._encode import file_batches, file_kind
from streamgauge.client._params import DEFAULT_URL, ENV_TOKEN, ENV_URL
from streamgauge.wire.rows import format_time, to_ms

console = Console(stderr=True)

UrlOpt = Annotated[
    str,
    typer.Option(help="Base URL of the server.", envvar=ENV_URL),
]
TokenOpt = Annotated[
    str,
    typer.Option(help="Bearer token.", envvar=ENV_TOKEN, show_default=False),
]
ListOpt = Annotated[list[str] | None, typer.Option()]


class TailFormat(StrEnum):
    ndjson = "ndjson"
    csv = "csv"
    table = "table"


class ExportFormat(StrEnum):
    csv = "csv"
    ndjson = "ndjson"
    parquet = "parquet"
    geojson = "geojson"


def _filters(
    device: list[str] | None,
    variable: list[str] | None,
    state: list[str] | None,
    filter_: str | None,
    units: str | None,
    qc: str | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"device": device or None, "variable": variable or None}
    if state:
        out["state"] = ",".join(state)
    if filter_:
        out["filter"] = filter_
    if units:
        out["units"] = units
    if qc:
        out["qc"] = qc
    return out


def _fail(exc: BaseException, what: str) -> typer.Exit:
    console.print(f"[red]{escape(f'{what}: {exc}')}[/red]", soft_wrap=True)
    return typer.Exit(1)


def _run(coro: Any, what: str) -> Any:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (ClientError, ValueError, OSError) as exc:
        raise _fail(exc, what) from exc


# -- tail -----------------------------------------------------------------------------------


def _row(o: Observation) -> dict[str, Any]:
    return {
        "cursor": o.cursor,
        "device": o.device,
        "variable": o.variable,
        "set": o.set,
        "time": format_time(to_ms(o.time)),
        "value": o.value,
        "qc": list(o.qc),
    }


async def _tail(
    client: AsyncClient,
    project: str,
    since: str | None,
    filters: dict[str, Any],
    fmt: TailFormat,
    count: int | None,
    checkpoint: Path | None,
) -> None:
    out = sys.stdout
    seen = 0
    stream = client.stream(project, since=since, checkpoint=checkpoint, **filters)
    async with client, contextlib.aclosing(stream):
        if fmt is TailFormat.table:
            await _table(stream, project, count)
            return
        if fmt is TailFormat.csv:
            import csv

            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(("cursor", "device", "variable", "set", "time", "value", "qc"))
        async for o in stream:
            if fmt is TailFormat.csv:
                r = _row(o)
                r["qc"] = " ".join(o.qc)
                r["value"] = "" if o.value is None else o.value
                writer.writerow(r.values())
            else:
                out.write(orjson.dumps(_row(o)).decode() + "\n")
            out.flush()
            seen += 1
            if count is not None and seen >= count:
                return


async def _table(stream: AsyncIterator[Observation], project: str, count: int | None) -> None:
    """A live terminal view: the latest value of each series, refreshed as they arrive."""
    from rich.live import Live
    from rich.table import Table

    latest: dict[tuple[str, str, int], Observation] = {}
    seen = 0

    def render() -> Table:
        t = Table(title=f"{project}: {seen} observations", expand=False)
        for name in ("device", "variable", "set", "time", "value", "qc", "cursor"):
            t.add_column(name, justify="right" if name in ("value", "cursor") else "left")
        for key in sorted(latest):
            o = latest[key]
            t.add_row(
                o.device,
                o.variable,
                str(o.set),
                format_time(to_ms(o.time)),
                "" if o.value is None else str(o.value),
                " ".join(o.qc),
                str(o.cursor),
            )
        return t

    out = Console()
    with Live(render(), console=out, refresh_per_second=4, auto_refresh=True) as live:
        async for o in stream:
            latest[(o.device, o.variable, o.set)] = o
            seen += 1
            live.update(render())
            if count is not None and seen >= count:
                return


def tail(
    project: Annotated[str, typer.Argument(help="Project id.")],
    since: Annotated[
        str | None,
        typer.Option(
            help="Start after this cursor, or from this time (RFC 3339): stored observations "
            "from then on first, then live. Default: live from now."
        ),
    ] = None,
    device: Annotated[list[str] | None, typer.Option(help="Device id (repeatable).")] = None,
    variable: Annotated[list[str] | None, typer.Option(help="Variable id (repeatable).")] = None,
    state: Annotated[list[str] | None, typer.Option(help="Site state (repeatable).")] = None,
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter", help="A filter expression: '(air_temp < 0) and (wind_speed > 10)'."
        ),
    ] = None,
    units: Annotated[str | None, typer.Option(help="metric, english, or overrides.")] = None,
    qc: Annotated[str | None, typer.Option(help="QC checks whose failures are removed.")] = None,
    format: Annotated[TailFormat, typer.Option(help="Output format.")] = TailFormat.ndjson,
    count: Annotated[
        int | None, typer.Option(min=1, help="Exit (0) after this many observations.")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Keep the last cursor in this file and resume after it on restart."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Follow the live stream of PROJECT, resuming on its own after disconnects and restarts
    (nothing lost or repeated). `--format table` is a live terminal view."""
    client = AsyncClient(url, token=token or None)
    filters = _filters(device, variable, state, filter_, units, qc)
    _run(_tail(client, project, since, filters, format, count, checkpoint), "tail")


# -- import ---------------------------------------------------------------------------------


async def _import(client: AsyncClient, project: str, path: Path, batch_size: int | None) -> None:
    file_kind(path)  # a clear error before anything is sent
    batch_size = batch_size or client.file_batch_size(path)
    show = console.is_terminal
    started = time.perf_counter()
    try:
        result = await _send_file(client, project, path, batch_size, show)
    except APIError as exc:
        if any(isinstance(d.get("index"), int) for d in exc.details):
            exc.message += f"; index: the row of {path.name}, 0 being its first data row"
            exc.args = (exc._text(),)
        raise
    took = time.perf_counter() - started
    rate = result.rows / took if took > 0 else 0.0
    print(
        f"imported {path.name}: {result.rows} rows, {result.accepted} accepted, "
        f"{result.duplicates} duplicates, in {result.batches} batches, {took:.1f} s "
        f"({rate:,.0f} rows/s)"
    )


async def _send_file(
    client: AsyncClient, project: str, path: Path, batch_size: int, show: bool
) -> IngestResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    async with client:
        bodies = file_batches(path, batch_size)
        if show:
            columns = (
                TextColumn("importing {task.fields[name]}"),
                BarColumn(),
                TextColumn("{task.completed:,} rows"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("import", total=None, name=path.name)

                def stored(rows: int) -> None:
                    bar.update(task, advance=rows)

                result = await client.ingest_bodies(project, bodies, progress=stored)
        else:
            result = await client.ingest_bodies(project, bodies)
    return result


def import_(
    project: Annotated[str, typer.Argument(help="Project id.")],
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help=".csv (header device,variable,time,value[,set]), .ndjson or .parquet",
        ),
    ],
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rows per request (default: 50,000 for .csv and .parquet sent as Arrow, "
            "10,000 for .ndjson).",
            show_default=False,
        ),
    ] = None,
    columnar: Annotated[
        bool,
        typer.Option(
            help="Send .csv and .parquet rows as Arrow IPC batches (JSON if the server does "
            "not take them); --no-columnar sends JSON."
        ),
    ] = True,
    in_flight: Annotated[
        int,
        typer.Option(
            min=1,
            help="Requests outstanding at once (the server reads one while it stores another).",
        ),
    ] = 2,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Send the observations of FILE to PROJECT in batches, each all or nothing and safe to
    repeat: importing the same file twice stores nothing twice (its rows count as duplicates)."""
    client = AsyncClient(
        url, token=token or None, columnar=None if columnar else False, in_flight=in_flight
    )
    _run(_import(client, project, file, batch_size), "import")


# -- export ---------------------------------------------------------------------------------


async def _export(
    client: AsyncClient,
    project: str,
    fmt: ExportFormat,
    out: IO[bytes],
    stations: bool,
    params: dict[str, Any],
) -> None:
    async with client:
        if stations:
            body = await client.stations_geojson(project)
            out.write(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
        else:
            await client.export(project, out, format=fmt.value, **params)
    out.flush()


def export(
    project: Annotated[str, typer.Argument(help="Project id.")],
    format: Annotated[
        ExportFormat, typer.Option(help="csv, ndjson, parquet; geojson with --stations.")
    ] = ExportFormat.csv,
    out: Annotated[Path | None, typer.Option(help="Write here (default: standard output).")] = None,
    stations: Annotated[
        bool, typer.Option("--stations", help="The stations as GeoJSON instead of observations.")
    ] = False,
    device: Annotated[list[str] | None, typer.Option(help="Device id (repeatable).")] = None,
    variable: Annotated[list[str] | None, typer.Option(help="Variable id (repeatable).")] = None,
    state: Annotated[list[str] | None, typer.Option(help="Site state (repeatable).")] = None,
    filter_: Annotated[str | None, typer.Option("--filter", help="A filter expression.")] = None,
    start: Annotated[str | None, typer.Option(help="From this time (RFC 3339).")] = None,
    end: Annotated[str | None, typer.Option(help="Before this time (RFC 3339).")] = None,
    qc: Annotated[str | None, typer.Option(help="QC checks whose failures are removed.")] = None,
    units: Annotated[str | None, typer.Option(help="metric, english, or overrides.")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Write PROJECT's observations (every page, streamed by the server in the format asked,
    in constant memory), or with --stations its stations as a GeoJSON FeatureCollection."""
    if stations and format is not ExportFormat.geojson:
        raise typer.BadParameter(
            "--stations writes geojson: add --format geojson", param_hint="--format"
        )
    if format is ExportFormat.geojson and not stations:
        raise typer.BadParameter("geojson is for --stations", param_hint="--format")
    params = _filters(device, variable, state, filter_, units, qc)
    params.update({"start": start, "end": end})
    client = AsyncClient(url, token=token or None)
    if out is None:
        _run(_export(client, project, format, sys.stdout.buffer, stations, params), "export")
        return
    tmp = out.with_name(out.name + ".part")
    try:
        with tmp.open("wb") as f:
            _run(_export(client, project, format, f, stations, params), "export")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def register(app: typer.Typer) -> None:
    app.command()(tail)
    app.command("import")(import_)
    app.command()(export)
