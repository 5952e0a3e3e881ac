"""Alert channels on the native face: ``/api/v1/projects/{project}/channels`` (+ ``/alerts``),
and the plot actor's images. The same channels as the Tapis face's ``/v3/streams/channels``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from streamgauge.auth import Action
from streamgauge.core.actors import plot_path
from streamgauge.core.alerting import Channel
from streamgauge.core.channels import ChannelDoc, TriggerDoc
from streamgauge.core.engine import Engine
from streamgauge.core.registry import ProjectRec
from streamgauge.domain.errors import NotFound
from streamgauge.domain.model import Id, Name, check_metadata, new_id, now_iso
from streamgauge.faces.http import StrictRoute, json_response
from streamgauge.faces.native.deps import EngineDep, PrincipalDep, project_for

router = APIRouter(tags=["channels"], route_class=StrictRoute)


def _check_extras(triggers: list[TriggerDoc] | None) -> list[TriggerDoc] | None:
    """An action's ``extra`` fields are kept as given: they must be JSON every reply can
    encode (checked here, on input; stored channels load as they are)."""
    for i, t in enumerate(triggers or ()):
        for j, a in enumerate(t.actions):
            check_metadata(a.extra, f"triggers[{i}].actions[{j}].extra")
    return triggers


Triggers = Annotated[list[TriggerDoc], AfterValidator(_check_extras)]


class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Id | None = Field(
        default=None, description="Unique in the deployment; generated if omitted."
    )
    name: Name | None = None
    status: Literal["ACTIVE", "INACTIVE"] = "ACTIVE"
    triggers: Triggers = Field(min_length=1)


class ChannelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    status: Literal["ACTIVE", "INACTIVE"] | None = None
    triggers: Triggers | None = Field(default=None, min_length=1)


def view(engine: Engine, ch: Channel) -> dict[str, Any]:
    doc = ch.doc.model_dump(exclude={"template_id", "type"})
    doc["states"] = engine.channels.state_of(ch)
    return doc


def _channel(engine: Engine, rec: ProjectRec, channel: str) -> Channel:
    ch = engine.channels.get(channel)
    if ch is None or ch.project_pk != rec.pk:
        raise NotFound(f"no channel {channel!r} in project {rec.doc.id!r}")
    return ch


@router.post("/projects/{project}/channels", status_code=201)
async def create_channel(
    engine: EngineDep, who: PrincipalDep, project: str, body: ChannelIn
) -> Response:
    """A channel: triggers (threshold, expression, deadman), each with its actions."""
    rec = project_for(engine, who, project, Action.WRITE)
    stamp = now_iso()
    id_ = body.id or new_id("ch")
    doc = ChannelDoc(
        id=id_,
        project=rec.doc.id,
        name=body.name or id_,
        status=body.status,
        triggers=body.triggers,
        owner=who.name,
        created_at=stamp,
        last_updated=stamp,
    )
    ch = await engine.channels.create(rec, doc)
    return json_response(view(engine, ch), 201)


@router.get("/projects/{project}/channels")
async def list_channels(engine: EngineDep, who: PrincipalDep, project: str) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    chans = sorted(engine.channels.of_project(rec.pk), key=lambda c: c.doc.id)
    return json_response({"channels": [view(engine, c) for c in chans]})


@router.get("/projects/{project}/channels/{channel}")
async def get_channel(engine: EngineDep, who: PrincipalDep, project: str, channel: str) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    return json_response(view(engine, _channel(engine, rec, channel)))


@router.patch("/projects/{project}/channels/{channel}")
async def update_channel(
    engine: EngineDep, who: PrincipalDep, project: str, channel: str, body: ChannelPatch
) -> Response:
    """Rename, pause/resume (`status`) or replace the triggers; takes effect at once."""
    rec = project_for(engine, who, project, Action.WRITE)
    ch = _channel(engine, rec, channel)
    update: dict[str, Any] = {"last_updated": now_iso()}
    for name in ("name", "status", "triggers"):
        if getattr(body, name) is not None:
            update[name] = getattr(body, name)
    ch = await engine.channels.update(ch, ch.doc.model_copy(update=update))
    return json_response(view(engine, ch))


@router.delete("/projects/{project}/channels/{channel}", status_code=204)
async def delete_channel(
    engine: EngineDep, who: PrincipalDep, project: str, channel: str
) -> Response:
    rec = project_for(engine, who, project, Action.DELETE)
    await engine.channels.delete(_channel(engine, rec, channel))
    return Response(status_code=204)


@router.get("/projects/{project}/channels/{channel}/alerts")
async def list_alerts(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    channel: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    skip: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Alerts newest first: `{"alerts": [...], "total": N}`, each with its actions' outcomes."""
    rec = project_for(engine, who, project, Action.READ)
    total, alerts = await engine.channels.alerts(_channel(engine, rec, channel), skip, limit)
    return json_response({"alerts": alerts, "total": total})


@router.get("/projects/{project}/plots/{alert_id}.png", response_class=FileResponse)
async def get_plot(engine: EngineDep, who: PrincipalDep, project: str, alert_id: int) -> Response:
    """The plot actor's PNG for an alert of this project."""
    project_for(engine, who, project, Action.READ)
    path = plot_path(engine.settings.data, alert_id)
    owner = await engine.channels.project_of_alert(alert_id)
    if owner != project or not path.exists():
        raise NotFound(f"no plot for alert {alert_id} in project {project!r}")
    return FileResponse(path, media_type="image/png")
