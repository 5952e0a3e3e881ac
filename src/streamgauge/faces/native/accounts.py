"""Service accounts, their keys, and roles on other projects."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from streamgauge.auth import Action
from streamgauge.auth.permissions import check_role_change
from streamgauge.domain.errors import Invalid, NotFound
from streamgauge.domain.model import NewKey, RoleIn, ServiceAccount, ServiceAccountIn, new_id
from streamgauge.faces.http import StrictRoute, json_response
from streamgauge.faces.native.deps import EngineDep, PagingDep, PrincipalDep, project_for
from streamgauge.store import metadata
from streamgauge.store.registry import AccountRec, ProjectRec, Registry
from streamgauge.store.sqlite import Tx

router = APIRouter(tags=["service accounts"], route_class=StrictRoute)


def _doc(reg: Registry, a: AccountRec) -> dict[str, object]:
    return ServiceAccount(
        id=a.id,
        name=a.name,
        project=reg.projects_by_pk[a.home_project_pk].doc.id,
        roles={
            reg.projects_by_pk[pk].doc.id: r
            for pk, r in a.roles.items()
            if pk in reg.projects_by_pk
        },
    ).model_dump()


def _account(engine: EngineDep, rec: ProjectRec, sa: str) -> AccountRec:
    a = engine.registry.accounts.get(sa)
    if a is None or a.home_project_pk != rec.pk:
        raise NotFound(f"no service account {sa!r} in project {rec.doc.id!r}")
    return a


@router.post("/projects/{project}/serviceaccounts", status_code=201, response_model=ServiceAccount)
async def create_account(
    engine: EngineDep, who: PrincipalDep, project: str, body: ServiceAccountIn
) -> Response:
    """Create a service account whose home is this project, with a role on it."""
    rec = project_for(engine, who, project, Action.MANAGE)
    id_ = body.id or new_id("sa")
    a = await engine.store.write(
        lambda tx: metadata.create_account(
            tx, engine.registry, rec, id_, body.name or id_, body.role
        )
    )
    return json_response(_doc(engine.registry, a), 201)


@router.get("/projects/{project}/serviceaccounts")
async def list_accounts(
    engine: EngineDep, who: PrincipalDep, project: str, paging: PagingDep
) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    reg = engine.registry
    items = ((a.id, _doc(reg, a)) for a in reg.accounts.values() if a.home_project_pk == rec.pk)
    return json_response(paging.page(items, "serviceaccounts"))


@router.get("/projects/{project}/serviceaccounts/{sa}", response_model=ServiceAccount)
async def get_account(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    return json_response(_doc(engine.registry, _account(engine, rec, sa)))


@router.patch("/projects/{project}/serviceaccounts/{sa}", response_model=ServiceAccount)
async def update_account(
    engine: EngineDep, who: PrincipalDep, project: str, sa: str, body: ServiceAccountIn
) -> Response:
    """Rename the account or change its role on its home project."""
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    fields = body.model_fields_set
    if "id" in fields and body.id != a.id:
        raise Invalid("a service account's id cannot change", [{"field": "id", "reason": "fixed"}])
    if "role" in fields:
        check_role_change(who, rec, a, body.role)

    def run(tx: Tx) -> None:
        if "name" in fields and body.name:
            metadata.rename_account(tx, engine.registry, a, body.name)
        if "role" in fields:
            metadata.set_role(tx, engine.registry, a, rec.pk, body.role)

    await engine.store.write(run)
    return json_response(_doc(engine.registry, a))


@router.delete("/projects/{project}/serviceaccounts/{sa}", status_code=204)
async def delete_account(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    await engine.store.write(lambda tx: metadata.delete_account(tx, engine.registry, a))
    return Response(status_code=204)


@router.post(
    "/projects/{project}/serviceaccounts/{sa}/keys", status_code=201, response_model=NewKey
)
async def create_key(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    """A new key: `{key_id, secret}`. The secret is shown this once; only its hash is kept (the
    server can re-derive it from its token key, to check JWT assertions signed with it)."""
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    key_id, secret, created = await engine.create_key(a)
    return json_response({"key_id": key_id, "secret": secret, "created_at": created}, 201)


@router.get("/projects/{project}/serviceaccounts/{sa}/keys")
async def list_keys(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    keys = await engine.store.read(lambda conn: metadata.key_created(conn, a.pk))
    return json_response({"keys": [{"key_id": k, "created_at": c} for k, c in keys]})


@router.delete("/projects/{project}/serviceaccounts/{sa}/keys/{key_id}", status_code=204)
async def delete_key(
    engine: EngineDep, who: PrincipalDep, project: str, sa: str, key_id: str
) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    await engine.store.write(lambda tx: metadata.delete_key(tx, engine.registry, a, key_id))
    return Response(status_code=204)


@router.get("/projects/{project}/roles")
async def list_roles(engine: EngineDep, who: PrincipalDep, project: str) -> Response:
    """Every service account with a role on this project."""
    rec = project_for(engine, who, project, Action.MANAGE)
    reg = engine.registry
    roles = sorted((a.id, a.roles[rec.pk]) for a in reg.accounts.values() if rec.pk in a.roles)
    return json_response({"roles": [{"account": a, "role": r} for a, r in roles]})


def _any_account(engine: EngineDep, sa: str) -> AccountRec:
    a = engine.registry.accounts.get(sa)
    if a is None:
        raise NotFound(f"no service account {sa!r}")
    return a


@router.put("/projects/{project}/roles/{sa}")
async def grant_role(
    engine: EngineDep,
    who: PrincipalDep,
    project: str,
    sa: str,
    body: Annotated[RoleIn, Body()],
) -> Response:
    """Give a service account (of any project) a role on this project; takes effect at once.
    Who may grant what is the one rule of ``auth.permissions``: an admin any role, a manager
    ``manager`` or ``user``, nobody to themselves (as on the Tapis face)."""
    rec = project_for(engine, who, project, Action.READ)
    a = _any_account(engine, sa)
    check_role_change(who, rec, a, body.role)
    await engine.store.write(
        lambda tx: metadata.set_role(tx, engine.registry, a, rec.pk, body.role)
    )
    return json_response({"account": a.id, "project": rec.doc.id, "role": body.role})


@router.delete("/projects/{project}/roles/{sa}", status_code=204)
async def revoke_role(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    """Take a service account's role on this project away (admins; not your own)."""
    rec = project_for(engine, who, project, Action.READ)
    a = _any_account(engine, sa)
    check_role_change(who, rec, a, None)
    if rec.pk not in a.roles:
        raise NotFound(f"service account {sa!r} has no role on project {project!r}")
    await engine.store.write(lambda tx: metadata.set_role(tx, engine.registry, a, rec.pk, None))
    return Response(status_code=204)
