"""``GET /projects/{p}/plot.png``: a series drawn as a PNG, for reports, chat messages and the
dashboard. The rows are read through the engine; matplotlib draws in a worker thread
(``core/plots.py``), never on the event loop."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Response

from streamgauge.auth import Action
from streamgauge.core.batch import output_values, parse_qc
from streamgauge.core.plots import Line, render_png
from streamgauge.core.units import parse_units, target_unit, unit_label
from streamgauge.domain.errors import BadRequest, NotFound
from streamgauge.domain.log import HistoryQuery
from streamgauge.faces.http import StrictRoute, parse_time
from streamgauge.faces.native.deps import EngineDep, PrincipalDep, project_for

router = APIRouter(route_class=StrictRoute)

DAY_MS = 86_400_000
PLOT_MAX_POINTS = 100_000
"""Most points drawn: a longer period draws its first ``PLOT_MAX_POINTS`` (narrow the period)."""
NEVER = -(2**63)


@router.get(
    "/projects/{project}/plot.png",
    tags=["observations"],
    responses={200: {"content": {"image/png": {}}, "description": "The plot as a PNG."}},
)
async def plot_png(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    device: Annotated[str, Query(description="Device id.")],
    variable: Annotated[str, Query(description="Variable id on that device.")],
    start: Annotated[
        str | None,
        Query(description="From this time (RFC 3339 or epoch ms); default: a day before `end`."),
    ] = None,
    end: Annotated[
        str | None,
        Query(description="Before this time (exclusive); default: just after the latest value."),
    ] = None,
    units: Annotated[
        str | None,
        Query(description="`metric` (default), `english`, overrides like `temp|f,speed|kts`."),
    ] = None,
    qc: Annotated[
        str | None,
        Query(description="QC checks whose failures are left out; `none` keeps everything."),
    ] = None,
) -> Response:
    """The series of one variable of one device (each sensor set a line) as a PNG, in the
    requested units, with QC failures removed as on history reads."""
    rec = project_for(engine, who, project, Action.READ)
    system = parse_units(units)
    qc_remove = parse_qc(qc)
    t0, t1 = parse_time(start, "start"), parse_time(end, "end")
    reg = engine.registry
    dev = reg.devices.get((rec.pk, device))
    if dev is None:
        raise NotFound(
            f"no device {device!r} in project {project!r}",
            [{"in": "query", "field": "device", "reason": "no such device"}],
        )
    var = reg.variables.get((dev.pk, variable))
    if var is None:
        raise NotFound(
            f"device {device!r} has no variable {variable!r}",
            [{"in": "query", "field": "variable", "reason": "no such variable"}],
        )
    series = tuple(pk for (v, _), pk in list(reg.series.items()) if v == var.pk)
    if t1 is None:
        latest = max((int(reg.latest[pk]) for pk in series if pk < len(reg.latest)), default=NEVER)
        if t0 is not None:
            t1 = max(t0 + DAY_MS, latest + 1)
        else:
            t1 = latest + 1 if latest != NEVER else None
    if t0 is None and t1 is not None:
        t0 = t1 - DAY_MS
    if t0 is not None and t1 is not None and t0 >= t1:
        raise BadRequest(
            "start must be before end",
            [{"in": "query", "field": "start", "reason": "an empty period"}],
        )
    lines: dict[int, tuple[list[int], list[float]]] = {}
    if series and t1 is not None:
        batch = await engine.history(
            HistoryQuery(
                rec.pk, series=series, qc_remove=qc_remove, start=t0, end=t1, limit=PLOT_MAX_POINTS
            )
        )
        for s, t, v in zip(
            batch.series.tolist(),
            batch.times.tolist(),
            output_values(batch, reg, system),
            strict=True,
        ):
            if type(v) is float:
                xs, ys = lines.setdefault(reg.series_by_pk[s].set, ([], []))
                xs.append(t)
                ys.append(v)
    e = var.entry
    label = unit_label(target_unit(system, e.kind, e.unit))
    drawn = [
        Line(f"{variable} set {set_}" if len(lines) > 1 else variable, xs, ys)
        for set_, (xs, ys) in sorted(lines.items())
    ]
    png = await asyncio.to_thread(
        render_png,
        drawn,
        title=f"{project} / {device} / {variable}",
        ylabel=f"{variable} ({label})",
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
