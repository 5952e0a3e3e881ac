"""Tapis channels and alerts over the engine's channels (``engine.channels``).

Unlike the original, every trigger of ``triggers_with_actions`` is evaluated, thresholds compare
raw values with the operator given, and edits and pauses take effect at once. A trigger object
may also carry ``hysteresis`` (a number), ``cooldown`` and ``for`` (durations such as ``30s``);
a condition ``{"expression": "(temp > 90) and (batv < 11)"}`` on ``inst_ids[0]`` uses the filter
language. A channel belongs to the project of its instruments.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from streamgauge.auth import Action, Principal, authorize, visible_projects
from streamgauge.core.alerting import Channel
from streamgauge.core.alerts import parse_duration
from streamgauge.core.channels import ActionDoc, ChannelDoc, TriggerDoc
from streamgauge.core.engine import Engine
from streamgauge.core.registry import ProjectRec
from streamgauge.domain.errors import BadRequest, Invalid, NotFound
from streamgauge.domain.model import check_metadata, now_iso
from streamgauge.faces.tapis.model import members
from streamgauge.faces.tapis.resources import find_instrument
from streamgauge.faces.tapis.wire import CallerDep, EngineDep, ListingDep, TapisRoute, envelope

router = APIRouter(prefix="/streams", route_class=TapisRoute, tags=["tapis"])

ACTION_FIELDS = {"method", "webhook_url", "data_field", "http_url", "actor_id", "message"}


class NewChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel_id: str = Field(min_length=1, max_length=128)
    channel_name: str = Field(min_length=1, max_length=256)
    template_id: str = Field(min_length=1, max_length=128)
    type: Literal["threshold", "deadman"] = "threshold"
    triggers_with_actions: list[dict[str, Any]] = Field(min_length=1)


class UpdateChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel_name: str = Field(min_length=1, max_length=256)
    template_id: str | None = None
    type: Literal["threshold", "deadman"] | None = None
    triggers_with_actions: list[dict[str, Any]] | None = None


class UpdateStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["ACTIVE", "INACTIVE"]


def _bad(i: int, field: str, reason: str) -> Invalid:
    return Invalid(
        f"triggers_with_actions[{i}].{field}: {reason}",
        [{"index": i, "field": f"triggers_with_actions.{field}", "reason": reason}],
    )


def _action(i: int, raw: object) -> ActionDoc:
    if not isinstance(raw, dict):
        raise _bad(i, "action", "an object with method and its fields")
    method = str(raw.get("method", "")).upper()
    if method == "JOB":
        raise _bad(i, "action.method", "JOB actions are not supported here")
    extra = {k: v for k, v in raw.items() if k not in ACTION_FIELDS}
    try:
        check_metadata(extra, "action")  # kept as given: it must be JSON every reply can encode
        return ActionDoc.model_validate(
            {**{k: v for k, v in raw.items() if k in ACTION_FIELDS}, "method": method}
            | {"extra": extra}
        )
    except ValueError as exc:
        raise _bad(i, "action", str(exc).splitlines()[-1].strip()) from exc


def _duration(raw: object, i: int, field: str) -> float:
    """A duration of a trigger; a number too large for a double (``cooldown: 10**400``) is a
    400 naming the field, not an ``OverflowError``."""
    try:
        return parse_duration(raw, f"triggers.{i}.{field}")
    except OverflowError:
        raise _bad(i, field, "a number too large for a duration (seconds as a double)") from None


def _trigger(i: int, raw: dict[str, Any], channel_type: str) -> TriggerDoc:
    cond = raw.get("condition")
    if not isinstance(cond, dict):
        raise _bad(i, "condition", "an object")
    unknown = set(raw) - {"inst_ids", "condition", "action", "hysteresis", "cooldown", "for"}
    if unknown:
        raise _bad(i, sorted(unknown)[0], "not a field of a trigger")
    inst_ids = raw.get("inst_ids") or []
    key = cond.get("key")
    inst, _, var = key.partition(".") if isinstance(key, str) else ("", "", "")
    if not inst and inst_ids and isinstance(inst_ids[0], str):
        inst = inst_ids[0]
    if not inst:
        raise _bad(i, "condition.key", "'<inst_id>.<var_id>' (or inst_ids for an expression)")
    common: dict[str, Any] = {
        "device": inst,
        "hysteresis": raw.get("hysteresis", 0.0),
        "cooldown_seconds": _duration(raw.get("cooldown", 0), i, "cooldown"),
        "for_seconds": _duration(raw.get("for", 0), i, "for"),
        "actions": [_action(i, raw.get("action"))] if "action" in raw else [],
    }
    try:
        if "expression" in cond:
            return TriggerDoc(type="expression", expression=cond["expression"], **common)
        if channel_type == "deadman" or "time_since" in cond:
            seconds = _duration(cond.get("time_since"), i, "condition.time_since")
            return TriggerDoc(type="deadman", variable=var or None, seconds=seconds, **common)
        if not var:
            raise _bad(i, "condition.key", "'<inst_id>.<var_id>'")
        return TriggerDoc(
            type="threshold",
            variable=var,
            operator=cond.get("operator"),
            value=cond.get("val"),
            **common,
        )
    except ValueError as exc:
        raise _bad(i, "condition", str(exc).splitlines()[-1].strip()) from exc


def _project(engine: Engine, who: Principal, triggers: list[TriggerDoc]) -> ProjectRec:
    projects = {find_instrument(engine, who, t.device, Action.READ)[0].doc.id for t in triggers}
    if len(projects) > 1:
        raise BadRequest(
            "a channel's instruments must belong to one project",
            [{"field": "triggers_with_actions", "reason": ", ".join(sorted(projects))}],
        )
    pid = projects.pop()
    return engine.metadata.project(who, pid, Action.WRITE)


def _tapis_trigger(t: TriggerDoc) -> dict[str, Any]:
    cond: dict[str, Any]
    if t.type == "threshold":
        cond = {"key": f"{t.device}.{t.variable}", "operator": t.operator, "val": t.value}
    elif t.type == "expression":
        cond = {"expression": t.expression}
    else:
        key = f"{t.device}.{t.variable}" if t.variable else t.device
        cond = {"key": key, "time_since": f"{t.seconds:g}s"}
    out: dict[str, Any] = {"inst_ids": [t.device], "condition": cond}
    actions = [{**a.model_dump(exclude={"extra"}, exclude_none=True), **a.extra} for a in t.actions]
    if actions:
        out["action"] = actions[0]
    if len(actions) > 1:
        out["actions"] = actions
    if t.hysteresis:
        out["hysteresis"] = t.hysteresis
    if t.cooldown_seconds:
        out["cooldown"] = f"{t.cooldown_seconds:g}s"
    if t.for_seconds:
        out["for"] = f"{t.for_seconds:g}s"
    return out


def channel_view(engine: Engine, ch: Channel) -> dict[str, Any]:
    d = ch.doc
    return {
        "channel_id": d.id,
        "channel_name": d.name,
        "project_id": d.project,
        "template_id": d.template_id,
        "type": d.type or "threshold",
        "status": d.status,
        "triggers_with_actions": [_tapis_trigger(t) for t in d.triggers],
        "trigger_states": engine.channels.state_of(ch),
        "permissions": {"users": members(engine.registry, ch.project_pk)},
        "owner": d.owner,
        "created_at": d.created_at,
        "last_updated": d.last_updated,
    }


def channel_for(engine: Engine, who: Principal, channel_id: str, action: Action) -> Channel:
    ch = engine.channels.get(channel_id)
    if ch is None:
        raise NotFound(f"no channel {channel_id!r}")
    authorize(who, engine.registry.projects_by_pk.get(ch.project_pk), action, ch.project_id)
    return ch


@router.get("/channels")
async def list_channels(engine: EngineDep, who: CallerDep, listing: ListingDep) -> Response:
    """Every channel of every project the caller may see."""
    items = [
        (ch.doc.id, channel_view(engine, ch))
        for p in visible_projects(who, engine.registry)
        for ch in engine.channels.of_project(p.pk)
    ]
    return envelope(listing.page(items))


@router.post("/channels", status_code=201)
async def create_channels(engine: EngineDep, who: CallerDep, body: NewChannel) -> Response:
    triggers = [_trigger(i, t, body.type) for i, t in enumerate(body.triggers_with_actions)]
    project = _project(engine, who, triggers)
    stamp = now_iso()
    doc = ChannelDoc(
        id=body.channel_id,
        project=project.doc.id,
        name=body.channel_name,
        triggers=triggers,
        template_id=body.template_id,
        type=body.type,
        owner=who.name,
        created_at=stamp,
        last_updated=stamp,
    )
    ch = await engine.channels.create(project, doc)
    return envelope(channel_view(engine, ch), "Channel Created", 201)


@router.get("/channels/{channel_id}")
async def get_channel(engine: EngineDep, who: CallerDep, channel_id: str) -> Response:
    ch = channel_for(engine, who, channel_id, Action.READ)
    return envelope(channel_view(engine, ch), "Channel found")


@router.put("/channels/{channel_id}")
async def update_channel(
    engine: EngineDep, who: CallerDep, channel_id: str, body: UpdateChannel
) -> Response:
    """Rename, or replace the triggers; the new rules apply to the next measurement."""
    ch = channel_for(engine, who, channel_id, Action.WRITE)
    kind = body.type or ch.doc.type or "threshold"
    update: dict[str, Any] = {"name": body.channel_name, "last_updated": now_iso(), "type": kind}
    if body.template_id is not None:
        update["template_id"] = body.template_id
    if body.triggers_with_actions is not None:
        triggers = [_trigger(i, t, kind) for i, t in enumerate(body.triggers_with_actions)]
        if _project(engine, who, triggers).pk != ch.project_pk:
            raise BadRequest("a channel cannot move to another project", [{"field": "inst_ids"}])
        update["triggers"] = triggers
    ch = await engine.channels.update(ch, ch.doc.model_copy(update=update))
    return envelope(channel_view(engine, ch), "Channel Updated")


@router.post("/channels/{channel_id}")
async def update_status(
    engine: EngineDep, who: CallerDep, channel_id: str, body: UpdateStatus
) -> Response:
    """``ACTIVE`` or ``INACTIVE`` (paused: no trigger is evaluated), at once."""
    ch = channel_for(engine, who, channel_id, Action.WRITE)
    doc = ch.doc.model_copy(update={"status": body.status, "last_updated": now_iso()})
    ch = await engine.channels.update(ch, doc)
    return envelope(channel_view(engine, ch), "Channel Updated")


@router.delete("/channels/{channel_id}")
async def delete_channel(engine: EngineDep, who: CallerDep, channel_id: str) -> Response:
    """Delete a channel with its alert history (admins only)."""
    ch = channel_for(engine, who, channel_id, Action.DELETE)
    view = channel_view(engine, ch)
    await engine.channels.delete(ch)
    return envelope(view, "Channel Deleted")


def tapis_alert(a: dict[str, Any]) -> dict[str, Any]:
    """Tapis' alert fields: ``type`` is the first action's method; ``actor_id`` and
    ``execution_id`` are those of the alert's (first) ACTOR action, whatever its position."""
    first = a["actions"][0] if a["actions"] else None
    actor = next((x for x in a["actions"] if x["method"] == "ACTOR"), None)
    return {
        **a,
        "alert_id": str(a["alert_id"]),
        "type": first["method"] if first else None,
        "actor_id": actor["target"] if actor else None,
        "execution_id": (actor.get("outcome") or {}).get("execution_id") if actor else None,
    }


@router.get("/channels/{channel_id}/alerts")
async def list_alerts(
    engine: EngineDep,
    who: CallerDep,
    channel_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    skip: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """The channel's alerts, newest first, each with every action's delivery outcome."""
    ch = channel_for(engine, who, channel_id, Action.READ)
    total, alerts = await engine.channels.alerts(ch, skip, limit)
    return envelope(
        {"alerts": [tapis_alert(a) for a in alerts], "num_of_alerts": total}, "Alerts found"
    )
