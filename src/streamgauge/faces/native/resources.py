"""Projects, sites, devices and variables: create (one or a bulk array), list, get, update,
delete. The routes call the engine's metadata service (`core/services/metadata.py`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response

from streamgauge.auth import Action
from streamgauge.core.registry import DeviceRec, ProjectRec
from streamgauge.domain.errors import NotFound
from streamgauge.domain.model import (
    Device,
    DeviceIn,
    Project,
    ProjectIn,
    Site,
    SiteIn,
    Variable,
    VariableIn,
)
from streamgauge.faces.http import StrictRoute, json_response
from streamgauge.faces.native.deps import EngineDep, PagingDep, PrincipalDep, project_for

router = APIRouter(route_class=StrictRoute)

IfExists = Annotated[
    Literal["error", "skip"],
    Query(description="What an existing id does: `error` (409) or `skip` (left as it is)."),
]


def _many(body: Any) -> tuple[list[Any], bool]:
    return (body, True) if isinstance(body, list) else ([body], False)


def _created(docs: list[Any], many: bool) -> Response:
    dumped = [d.model_dump() for d in docs]
    return json_response(dumped if many else dumped[0], 201)


def _patch(body: Any) -> dict[str, Any]:
    patch: dict[str, Any] = body.model_dump(exclude_unset=True)
    return patch


# -- projects -----------------------------------------------------------------------------------


@router.post(
    "/projects", status_code=201, response_model=Project | list[Project], tags=["projects"]
)
async def create_project(
    engine: EngineDep,
    who: PrincipalDep,
    body: ProjectIn | list[ProjectIn],
    if_exists: IfExists = "error",
) -> Response:
    """Create a project (or several); a service account that creates one becomes its admin."""
    items, many = _many(body)
    return _created(await engine.metadata.create_projects(who, items, if_exists=if_exists), many)


@router.get("/projects", tags=["projects"])
async def list_projects(engine: EngineDep, who: PrincipalDep, paging: PagingDep) -> Response:
    """The projects the caller has a role in (all of them for the deployment admin)."""
    recs = engine.metadata.visible_projects(who)
    return json_response(paging.page(((p.doc.id, p.doc.model_dump()) for p in recs), "projects"))


@router.get("/projects/{project}", response_model=Project, tags=["projects"])
async def get_project(engine: EngineDep, who: PrincipalDep, project: str) -> Response:
    return json_response(project_for(engine, who, project, Action.READ).doc.model_dump())


@router.patch("/projects/{project}", response_model=Project, tags=["projects"])
async def update_project(
    engine: EngineDep, who: PrincipalDep, project: str, body: ProjectIn
) -> Response:
    rec = project_for(engine, who, project, Action.WRITE)
    doc = await engine.metadata.update_project(rec, _patch(body))
    return json_response(doc.model_dump())


@router.delete("/projects/{project}", status_code=204, tags=["projects"])
async def delete_project(engine: EngineDep, who: PrincipalDep, project: str) -> Response:
    """Delete a project with everything in it; its open streams are closed."""
    rec = project_for(engine, who, project, Action.MANAGE)
    await engine.metadata.delete_project(rec)
    return Response(status_code=204)


# -- sites --------------------------------------------------------------------------------------


@router.post(
    "/projects/{project}/sites", status_code=201, response_model=Site | list[Site], tags=["sites"]
)
async def create_site(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    body: SiteIn | list[SiteIn],
    if_exists: IfExists = "error",
) -> Response:
    """Create a site (station), or several from a JSON array (all or nothing)."""
    rec = project_for(engine, who, project, Action.WRITE)
    items, many = _many(body)
    docs = await engine.metadata.create_sites(rec, items, if_exists=if_exists)
    return _created(docs, many)


@router.get("/projects/{project}/sites", tags=["sites"])
async def list_sites(
    engine: EngineDep, who: PrincipalDep, project: str, paging: PagingDep
) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    items = ((s.doc.id, s.doc.model_dump()) for s in engine.metadata.sites(rec))
    return json_response(paging.page(items, "sites"))


def _site(engine: EngineDep, rec: ProjectRec, site: str) -> Any:
    s = engine.registry.sites.get((rec.pk, site))
    if s is None:
        raise NotFound(f"no site {site!r} in project {rec.doc.id!r}")
    return s


@router.get("/projects/{project}/sites/{site}", response_model=Site, tags=["sites"])
async def get_site(engine: EngineDep, who: PrincipalDep, project: str, site: str) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    return json_response(_site(engine, rec, site).doc.model_dump())


@router.patch("/projects/{project}/sites/{site}", response_model=Site, tags=["sites"])
async def update_site(
    engine: EngineDep, who: PrincipalDep, project: str, site: str, body: SiteIn
) -> Response:
    rec = project_for(engine, who, project, Action.WRITE)
    s = _site(engine, rec, site)
    doc = await engine.metadata.update_site(s, _patch(body))
    return json_response(doc.model_dump())


@router.delete("/projects/{project}/sites/{site}", status_code=204, tags=["sites"])
async def delete_site(engine: EngineDep, who: PrincipalDep, project: str, site: str) -> Response:
    """Delete a site; refused (409) while devices stand at it."""
    rec = project_for(engine, who, project, Action.DELETE)
    s = _site(engine, rec, site)
    await engine.metadata.delete_site(s)
    return Response(status_code=204)


# -- devices ------------------------------------------------------------------------------------


@router.post(
    "/projects/{project}/devices",
    status_code=201,
    response_model=Device | list[Device],
    tags=["devices"],
)
async def create_device(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    body: Annotated[DeviceIn | list[DeviceIn], Body()],
    if_exists: IfExists = "error",
) -> Response:
    """Create a device (or several from an array), optionally with its variables inline."""
    rec = project_for(engine, who, project, Action.WRITE)
    items, many = _many(body)
    docs = await engine.metadata.create_devices(rec, items, if_exists=if_exists)
    return _created(docs, many)


@router.get("/projects/{project}/devices", tags=["devices"])
async def list_devices(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    paging: PagingDep,
    site: Annotated[str | None, Query(description="Only devices at this site.")] = None,
    type: Annotated[str | None, Query(description="Only devices of this type.")] = None,
) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    items = (
        (d.doc.id, d.doc.model_dump()) for d in engine.metadata.devices(rec, site=site, type=type)
    )
    return json_response(paging.page(items, "devices"))


def _device(engine: EngineDep, rec: ProjectRec, device: str) -> DeviceRec:
    d = engine.registry.devices.get((rec.pk, device))
    if d is None:
        raise NotFound(f"no device {device!r} in project {rec.doc.id!r}")
    return d


@router.get("/projects/{project}/devices/{device}", response_model=Device, tags=["devices"])
async def get_device(engine: EngineDep, who: PrincipalDep, project: str, device: str) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    return json_response(_device(engine, rec, device).doc.model_dump())


@router.patch("/projects/{project}/devices/{device}", response_model=Device, tags=["devices"])
async def update_device(
    engine: EngineDep, who: PrincipalDep, project: str, device: str, body: DeviceIn
) -> Response:
    rec = project_for(engine, who, project, Action.WRITE)
    d = _device(engine, rec, device)
    doc = await engine.metadata.update_device(rec, d, _patch(body))
    return json_response(doc.model_dump())


@router.delete("/projects/{project}/devices/{device}", status_code=204, tags=["devices"])
async def delete_device(
    engine: EngineDep, who: PrincipalDep, project: str, device: str
) -> Response:
    """Delete a device and its variables; its observations are no longer readable."""
    rec = project_for(engine, who, project, Action.DELETE)
    d = _device(engine, rec, device)
    await engine.metadata.delete_device(d)
    return Response(status_code=204)


# -- variables ----------------------------------------------------------------------------------


@router.post(
    "/projects/{project}/devices/{device}/variables",
    status_code=201,
    response_model=Variable | list[Variable],
    tags=["variables"],
)
async def create_variable(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    device: str,
    body: VariableIn | list[VariableIn],
    if_exists: IfExists = "error",
) -> Response:
    """Create a variable (or several); its id defaults to its name."""
    rec = project_for(engine, who, project, Action.WRITE)
    d = _device(engine, rec, device)
    items, many = _many(body)
    docs = await engine.metadata.create_variables(rec, d, items, if_exists=if_exists)
    return _created(docs, many)


@router.get("/projects/{project}/devices/{device}/variables", tags=["variables"])
async def list_variables(
    engine: EngineDep, who: PrincipalDep, project: str, device: str, paging: PagingDep
) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    d = _device(engine, rec, device)
    items = ((v.doc.id, v.doc.model_dump()) for v in engine.metadata.variables(d))
    return json_response(paging.page(items, "variables"))


def _variable(engine: EngineDep, d: DeviceRec, variable: str) -> Any:
    v = engine.registry.variables.get((d.pk, variable))
    if v is None:
        raise NotFound(f"device {d.doc.id!r} has no variable {variable!r}")
    return v


@router.get(
    "/projects/{project}/devices/{device}/variables/{variable}",
    response_model=Variable,
    tags=["variables"],
)
async def get_variable(
    engine: EngineDep, who: PrincipalDep, project: str, device: str, variable: str
) -> Response:
    rec = project_for(engine, who, project, Action.READ)
    return json_response(_variable(engine, _device(engine, rec, device), variable).doc.model_dump())


@router.patch(
    "/projects/{project}/devices/{device}/variables/{variable}",
    response_model=Variable,
    tags=["variables"],
)
async def update_variable(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    device: str,
    variable: str,
    body: VariableIn,
) -> Response:
    rec = project_for(engine, who, project, Action.WRITE)
    v = _variable(engine, _device(engine, rec, device), variable)
    doc = await engine.metadata.update_variable(v, _patch(body))
    return json_response(doc.model_dump())


@router.delete(
    "/projects/{project}/devices/{device}/variables/{variable}", status_code=204, tags=["variables"]
)
async def delete_variable(
    engine: EngineDep, who: PrincipalDep, project: str, device: str, variable: str
) -> Response:
    rec = project_for(engine, who, project, Action.DELETE)
    v = _variable(engine, _device(engine, rec, device), variable)
    await engine.metadata.delete_variable(v)
    return Response(status_code=204)
