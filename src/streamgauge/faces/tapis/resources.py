"""Tapis projects, sites, instruments and variables over the core model (see ``model``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from streamgauge.auth import Action, Principal
from streamgauge.core.engine import Engine
from streamgauge.core.registry import (
    DeviceRec,
    ProjectRec,
    SiteRec,
    VariableRec,
    variable_entry,
)
from streamgauge.domain.errors import Conflict, Forbidden, Invalid, NotFound
from streamgauge.domain.model import DeviceIn, ProjectIn, SiteIn, VariableIn, now_iso
from streamgauge.faces.tapis.model import (
    VAR_KEPT,
    NewInstrument,
    NewProject,
    NewSite,
    NewVariable,
    UpdateInst,
    UpdateSite,
    UpdateVariable,
    check_id,
    instrument_doc,
    project_doc,
    same_id,
    site_doc,
    split_metadata,
    variable_doc,
    with_tapis,
)
from streamgauge.faces.tapis.wire import CallerDep, EngineDep, ListingDep, TapisRoute, envelope

router = APIRouter(prefix="/streams", route_class=TapisRoute, tags=["tapis"])

P = "/projects/{project_id}"
S = P + "/sites/{site_id}"
I = S + "/instruments/{inst_id}"  # noqa: E741 - the instrument path


# -- lookups (each checks the caller's role on the project) -------------------------------------


def project_rec(engine: Engine, who: Principal, project_id: str, action: Action) -> ProjectRec:
    return engine.metadata.project(who, project_id, action)


def site_rec(engine: Engine, p: ProjectRec, site_id: str) -> SiteRec:
    s = engine.registry.sites.get((p.pk, site_id))
    if s is None:
        raise NotFound(f"no site {site_id!r} in project {p.doc.id!r}")
    return s


def device_rec(engine: Engine, p: ProjectRec, s: SiteRec, inst_id: str) -> DeviceRec:
    d = engine.registry.devices.get((p.pk, inst_id))
    if d is None or d.doc.site != s.doc.id:
        raise NotFound(f"no instrument {inst_id!r} at site {s.doc.id!r}")
    return d


def variable_rec(engine: Engine, d: DeviceRec, var_id: str) -> VariableRec:
    v = engine.registry.variables.get((d.pk, var_id))
    if v is None:
        raise NotFound(f"instrument {d.doc.id!r} has no variable {var_id!r}")
    return v


def find_instrument(
    engine: Engine, who: Principal, inst_id: str, action: Action
) -> tuple[ProjectRec, DeviceRec]:
    """An instrument by its id alone (Tapis instrument ids are unique in the deployment), among
    the projects the caller may see; the caller's role must allow ``action``."""
    reg = engine.registry
    found = [
        (p, d)
        for p in engine.metadata.visible_projects(who)
        if (d := reg.devices.get((p.pk, inst_id))) is not None
    ]
    if not found:
        raise NotFound(f"no instrument {inst_id!r}")
    if len(found) > 1:
        raise Conflict(
            f"instrument id {inst_id!r} is used in several projects",
            [{"field": "inst_id", "reason": ", ".join(sorted(p.doc.id for p, _ in found))}],
        )
    p, d = found[0]
    engine.metadata.project(who, p.doc.id, action)
    return p, d


def instrument_view(engine: Engine, d: DeviceRec) -> dict[str, Any]:
    reg = engine.registry
    variables = [reg.variables_by_pk[pk] for pk in reg.device_variables.get(d.pk, ())]
    return instrument_doc(reg, d, variables)


def site_view(engine: Engine, s: SiteRec) -> dict[str, Any]:
    reg = engine.registry
    devices = sorted(
        (reg.devices_by_pk[pk] for pk in reg.devices_at(s.project_pk, s.doc.id)),
        key=lambda d: d.doc.id,
    )
    return site_doc(reg, s, [instrument_view(engine, d) for d in devices])


def _touch(md: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    user, old = split_metadata(md)
    return with_tapis(user, {**old, **extra, "last_updated": now_iso()})


# -- projects -----------------------------------------------------------------------------------


@router.get("/projects")
async def list_projects(engine: EngineDep, who: CallerDep, listing: ListingDep) -> Response:
    """Every project the caller has a role in, shared ones included."""
    reg = engine.registry
    recs = engine.metadata.visible_projects(who)
    return envelope(listing.page((p.doc.id, project_doc(reg, p.pk, p.doc)) for p in recs))


@router.post("/projects", status_code=201)
async def create_project(engine: EngineDep, who: CallerDep, body: NewProject) -> Response:
    """A new project; its id is the name without spaces. The caller becomes its admin."""
    if engine.settings.admin_only_project_create and not who.is_admin:  # before the 400s
        raise Forbidden("only the deployment admin may create projects on this server")
    project_id = check_id(body.project_name.replace(" ", ""), "project_name")
    same_id(body.project_id, project_id, "project_id")
    stamp = now_iso()
    extra = {
        "funding_resource": body.funding_resource,
        "project_url": body.project_url,
        "active": body.active,
        "last_updated": stamp,
    }
    item = ProjectIn(
        id=project_id,
        name=body.project_name,
        description=body.description,
        owner=body.owner,
        pi=body.pi,
        metadata=with_tapis(body.metadata, extra),
    )
    docs = await engine.metadata.create_projects(who, [item])
    rec = engine.registry.projects[docs[0].id]
    return envelope(project_doc(engine.registry, rec.pk, rec.doc), "Project Created", 201)


@router.get(P)
async def get_project(engine: EngineDep, who: CallerDep, project_id: str) -> Response:
    rec = project_rec(engine, who, project_id, Action.READ)
    return envelope(project_doc(engine.registry, rec.pk, rec.doc), "Project found")


@router.put(P)
async def update_project(
    engine: EngineDep, who: CallerDep, project_id: str, body: NewProject
) -> Response:
    """Rewrite the project's fields; its id stays."""
    rec = project_rec(engine, who, project_id, Action.WRITE)
    same_id(body.project_id, rec.doc.id, "project_id")
    extra = {
        "funding_resource": body.funding_resource,
        "project_url": body.project_url,
        "active": body.active,
    }
    patch = {
        "name": body.project_name,
        "description": body.description,
        "owner": body.owner,
        "pi": body.pi,
        "metadata": _touch(with_tapis(body.metadata, split_metadata(rec.doc.metadata)[1]), extra),
    }
    doc = await engine.metadata.update_project(rec, patch)
    return envelope(project_doc(engine.registry, rec.pk, doc), "Project Updated")


@router.delete(P)
async def delete_project(engine: EngineDep, who: CallerDep, project_id: str) -> Response:
    """Delete the project with everything in it (admins only)."""
    rec = project_rec(engine, who, project_id, Action.MANAGE)
    doc = project_doc(engine.registry, rec.pk, rec.doc)
    await engine.metadata.delete_project(rec)
    return envelope(doc, "Project Deleted")


# -- sites --------------------------------------------------------------------------------------


@router.get(P + "/sites")
async def list_sites(
    engine: EngineDep, who: CallerDep, project_id: str, listing: ListingDep
) -> Response:
    p = project_rec(engine, who, project_id, Action.READ)
    sites = engine.metadata.sites(p)
    return envelope(listing.page((s.doc.id, site_view(engine, s)) for s in sites))


@router.post(P + "/sites", status_code=201)
async def create_site(
    engine: EngineDep,
    who: CallerDep,
    project_id: str,
    body: Annotated[list[NewSite], Body()],
) -> Response:
    """Sites from an array, all or nothing."""
    p = project_rec(engine, who, project_id, Action.WRITE)
    for i, it in enumerate(body):
        same_id(it.project_id, p.doc.id, "project_id", i)
    stamp = now_iso()
    items = [
        SiteIn(
            id=check_id(it.site_id, "site_id", i),
            name=it.site_name,
            lat=it.latitude,
            lon=it.longitude,
            elevation=it.elevation,
            metadata=with_tapis(
                it.metadata,
                {"description": it.description, "created_at": stamp, "last_updated": stamp},
            ),
        )
        for i, it in enumerate(body)
    ]
    if not items:
        raise Invalid("the array holds no sites", [{"reason": "send at least one site"}])
    await engine.metadata.create_sites(p, items)
    out = [site_view(engine, site_rec(engine, p, it.id or "")) for it in items]
    return envelope(out, "Sites Created", 201)


@router.get(S)
async def get_site(engine: EngineDep, who: CallerDep, project_id: str, site_id: str) -> Response:
    p = project_rec(engine, who, project_id, Action.READ)
    return envelope(site_view(engine, site_rec(engine, p, site_id)), "Site found")


@router.put(S)
async def update_site(
    engine: EngineDep, who: CallerDep, project_id: str, site_id: str, body: UpdateSite
) -> Response:
    p = project_rec(engine, who, project_id, Action.WRITE)
    s = site_rec(engine, p, site_id)
    same_id(body.project_id, p.doc.id, "project_id")
    same_id(body.site_id, s.doc.id, "site_id")
    user = body.metadata if body.metadata is not None else split_metadata(s.doc.metadata)[0]
    patch = {
        "name": body.site_name,
        "lat": body.latitude,
        "lon": body.longitude,
        "elevation": body.elevation,
        "metadata": _touch(
            with_tapis(user, split_metadata(s.doc.metadata)[1]), {"description": body.description}
        ),
    }
    await engine.metadata.update_site(s, patch)
    return envelope(site_view(engine, s), "Site Updated")


@router.delete(S)
async def delete_site(engine: EngineDep, who: CallerDep, project_id: str, site_id: str) -> Response:
    """Delete a site; refused (409) while instruments stand at it."""
    p = project_rec(engine, who, project_id, Action.DELETE)
    s = site_rec(engine, p, site_id)
    doc = site_view(engine, s)
    await engine.metadata.delete_site(s)
    return envelope(doc, "Site Deleted")


# -- instruments --------------------------------------------------------------------------------


@router.get(S + "/instruments")
async def list_instruments(
    engine: EngineDep, who: CallerDep, project_id: str, site_id: str, listing: ListingDep
) -> Response:
    p = project_rec(engine, who, project_id, Action.READ)
    s = site_rec(engine, p, site_id)
    reg = engine.registry
    devices = [reg.devices_by_pk[pk] for pk in reg.devices_at(p.pk, s.doc.id)]
    return envelope(listing.page((d.doc.id, instrument_view(engine, d)) for d in devices))


@router.post(S + "/instruments", status_code=201)
async def create_instrument(
    engine: EngineDep,
    who: CallerDep,
    project_id: str,
    site_id: str,
    body: Annotated[list[NewInstrument], Body()],
) -> Response:
    """Instruments from an array, all or nothing; an instrument id is unique in the deployment."""
    p = project_rec(engine, who, project_id, Action.WRITE)
    s = site_rec(engine, p, site_id)
    if not body:
        raise Invalid("the array holds no instruments", [{"reason": "send at least one"}])
    for i, it in enumerate(body):
        same_id(it.project_id, p.doc.id, "project_id", i)
        same_id(it.site_id, s.doc.id, "site_id", i)
    taken = {d.id for d in engine.registry.devices_by_pk.values()}
    conflicts = [
        {"index": i, "field": "inst_id", "reason": f"instrument {it.inst_id!r} exists"}
        for i, it in enumerate(body)
        if it.inst_id in taken
    ]
    if conflicts:
        raise Conflict("an instrument with this id exists (ids are unique here)", conflicts)
    stamp = now_iso()
    items = [
        DeviceIn(
            id=check_id(it.inst_id, "inst_id", i, inst=True),
            site=s.doc.id,
            name=it.inst_name,
            metadata=with_tapis(
                it.metadata,
                {
                    "inst_description": it.inst_description,
                    "topic_category_id": it.topic_category_id,
                    "tags": it.tags,
                    "created_at": stamp,
                    "last_updated": stamp,
                },
            ),
        )
        for i, it in enumerate(body)
    ]
    await engine.metadata.create_devices(p, items)
    reg = engine.registry
    out = [instrument_view(engine, reg.devices[(p.pk, it.id or "")]) for it in items]
    return envelope(out, "Instruments Created", 201)


@router.get(I)
async def get_instrument(
    engine: EngineDep, who: CallerDep, project_id: str, site_id: str, inst_id: str
) -> Response:
    p = project_rec(engine, who, project_id, Action.READ)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    return envelope(instrument_view(engine, d), "Instrument found")


@router.put(I)
async def update_instrument(
    engine: EngineDep,
    who: CallerDep,
    project_id: str,
    site_id: str,
    inst_id: str,
    body: UpdateInst,
) -> Response:
    p = project_rec(engine, who, project_id, Action.WRITE)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    same_id(body.project_id, p.doc.id, "project_id")
    same_id(body.site_id, d.doc.site or "", "site_id")
    same_id(body.inst_id, d.doc.id, "inst_id")
    user, old = split_metadata(d.doc.metadata)
    extra: dict[str, Any] = {}
    if body.inst_description is not None:
        extra["inst_description"] = body.inst_description
    if body.tags is not None:
        extra["tags"] = body.tags
    if "topic_category_id" in body.model_fields_set:
        extra["topic_category_id"] = body.topic_category_id
    md = _touch(with_tapis(body.metadata if body.metadata is not None else user, old), extra)
    patch = {"name": body.inst_name, "metadata": md}
    await engine.metadata.update_device(p, d, patch)
    return envelope(instrument_view(engine, d), "Instrument Updated")


@router.delete(I)
async def delete_instrument(
    engine: EngineDep, who: CallerDep, project_id: str, site_id: str, inst_id: str
) -> Response:
    """Delete an instrument and its variables (admins only)."""
    p = project_rec(engine, who, project_id, Action.DELETE)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    doc = instrument_view(engine, d)
    await engine.metadata.delete_device(d)
    return envelope(doc, "Instrument Deleted")


# -- variables ----------------------------------------------------------------------------------


def _unit_for(var_id: str, units: str | None) -> str | None:
    """The Tapis ``units`` as the native unit when it suits the variable (a unit pint knows,
    convertible to the catalog unit of a catalogued name); else none (kept as text only)."""
    if not units:
        return None
    try:
        variable_entry(var_id, units)
    except Invalid:
        return None
    return units


def _variable_in(it: NewVariable, i: int, stamp: str) -> VariableIn:
    var_id = check_id(it.var_id, "var_id", i)
    extra = {
        "var_name": it.var_name,
        **{name: getattr(it, name) for name in VAR_KEPT},
        "created_at": stamp,
        "last_updated": stamp,
    }
    return VariableIn(
        id=var_id,
        name=var_id,
        unit=_unit_for(var_id, it.units),
        metadata=with_tapis(it.metadata, extra),
    )


@router.get(I + "/variables")
async def list_variables(
    engine: EngineDep,
    who: CallerDep,
    project_id: str,
    site_id: str,
    inst_id: str,
    listing: ListingDep,
) -> Response:
    p = project_rec(engine, who, project_id, Action.READ)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    reg = engine.registry
    vs = [reg.variables_by_pk[pk] for pk in reg.device_variables.get(d.pk, ())]
    return envelope(listing.page((v.doc.id, variable_doc(reg, v, d.doc.site)) for v in vs))


@router.post(I + "/variables", status_code=201)
async def create_variable(
    engine: EngineDep,
    who: CallerDep,
    project_id: str,
    site_id: str,
    inst_id: str,
    body: Annotated[list[NewVariable], Body()],
) -> Response:
    """Variables from an array; a ``var_id`` the instrument already has is skipped (as Tapis
    1.5.1 does), a repeat inside the array is a 400."""
    p = project_rec(engine, who, project_id, Action.WRITE)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    if not body:
        raise Invalid("the array holds no variables", [{"reason": "send at least one"}])
    for i, it in enumerate(body):
        same_id(it.project_id, p.doc.id, "project_id", i)
        same_id(it.site_id, d.doc.site or "", "site_id", i)
        same_id(it.inst_id, d.doc.id, "inst_id", i)
    stamp = now_iso()
    items = [_variable_in(it, i, stamp) for i, it in enumerate(body)]
    docs = await engine.metadata.create_variables(p, d, items, if_exists="skip")
    reg = engine.registry
    out = [variable_doc(reg, reg.variables[(d.pk, v.id)], d.doc.site) for v in docs]
    return envelope(out, "Variables Created", 201)


@router.get(I + "/variables/{var_id}")
async def get_variable(
    engine: EngineDep, who: CallerDep, project_id: str, site_id: str, inst_id: str, var_id: str
) -> Response:
    p = project_rec(engine, who, project_id, Action.READ)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    v = variable_rec(engine, d, var_id)
    return envelope(variable_doc(engine.registry, v, d.doc.site), "Variable found")


@router.put(I + "/variables/{var_id}")
async def update_variable(
    engine: EngineDep,
    who: CallerDep,
    project_id: str,
    site_id: str,
    inst_id: str,
    var_id: str,
    body: UpdateVariable,
) -> Response:
    p = project_rec(engine, who, project_id, Action.WRITE)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    v = variable_rec(engine, d, var_id)
    same_id(body.project_id, p.doc.id, "project_id")
    same_id(body.site_id, d.doc.site or "", "site_id")
    same_id(body.inst_id, d.doc.id, "inst_id")
    same_id(body.var_id, v.doc.id, "var_id")
    user, old = split_metadata(v.doc.metadata)
    extra: dict[str, Any] = {"var_name": body.var_name}
    for name in VAR_KEPT:
        if name in body.model_fields_set:
            extra[name] = getattr(body, name)
    patch: dict[str, Any] = {
        "metadata": _touch(
            with_tapis(body.metadata if body.metadata is not None else user, old), extra
        )
    }
    if "units" in body.model_fields_set and _unit_for(v.doc.name, body.units) is not None:
        patch["unit"] = body.units
    await engine.metadata.update_variable(v, patch)
    fresh = variable_rec(engine, d, var_id)
    return envelope(variable_doc(engine.registry, fresh, d.doc.site), "Variable Updated")


@router.delete(I + "/variables/{var_id}")
async def delete_variable(
    engine: EngineDep, who: CallerDep, project_id: str, site_id: str, inst_id: str, var_id: str
) -> Response:
    p = project_rec(engine, who, project_id, Action.DELETE)
    d = device_rec(engine, p, site_rec(engine, p, site_id), inst_id)
    v = variable_rec(engine, d, var_id)
    doc = variable_doc(engine.registry, v, d.doc.site)
    await engine.metadata.delete_variable(v)
    return envelope(doc, "Variable Deleted")
