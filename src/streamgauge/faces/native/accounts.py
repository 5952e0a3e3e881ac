"""Service accounts, their keys, and roles on other projects."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from streamgauge.auth import Action
from streamgauge.core.registry import AccountRec, ProjectRec
from streamgauge.domain.errors import Invalid, NotFound
from streamgauge.domain.model import NewKey, RoleIn, ServiceAccount, ServiceAccountIn
from streamgauge.faces.http import StrictRoute, json_response
from streamgauge.faces.native.deps import EngineDep, PagingDep, PrincipalDep, project_for

router = APIRouter(tags=["service accounts"], route_class=StrictRoute)


def _doc(engine: EngineDep, a: AccountRec) -> dict[str, object]:
    return engine.accounts.document(a).model_dump()


def _account(engine: EngineDep, rec: ProjectRec, sa: str) -> AccountRec:
    return engine.accounts.get(rec, sa)


@router.post("/projects/{project}/serviceaccounts", status_code=201, response_model=ServiceAccount)
async def create_account(
    engine: EngineDep, who: PrincipalDep, project: str, body: ServiceAccountIn
) -> Response:
    """Create a service account whose home is this project, with a role on it."""
    rec = project_for(engine, who, project, Action.MANAGE)
    a = await engine.accounts.create(rec, id=body.id, name=body.name, role=body.role)
    return json_response(_doc(engine, a), 201)


@router.get("/projects/{project}/serviceaccounts")
async def list_accounts(
    engine: EngineDep, who: PrincipalDep, project: str, paging: PagingDep
) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    items = ((a.id, _doc(engine, a)) for a in engine.accounts.of_project(rec))
    return json_response(paging.page(items, "serviceaccounts"))


@router.get("/projects/{project}/serviceaccounts/{sa}", response_model=ServiceAccount)
async def get_account(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    return json_response(_doc(engine, _account(engine, rec, sa)))


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
    await engine.accounts.update(
        who,
        rec,
        a,
        name=body.name if "name" in fields else None,
        role=body.role if "role" in fields else None,
    )
    return json_response(_doc(engine, a))


@router.delete("/projects/{project}/serviceaccounts/{sa}", status_code=204)
async def delete_account(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    await engine.accounts.delete(a)
    return Response(status_code=204)


@router.post(
    "/projects/{project}/serviceaccounts/{sa}/keys", status_code=201, response_model=NewKey
)
async def create_key(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    """A new key: `{key_id, secret}`. The secret is shown this once; only its hash is kept (the
    server can re-derive it from its token key, to check JWT assertions signed with it)."""
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    key = await engine.accounts.create_key(a)
    return json_response(
        {"key_id": key.key_id, "secret": key.secret, "created_at": key.created_at}, 201
    )


@router.get("/projects/{project}/serviceaccounts/{sa}/keys")
async def list_keys(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    keys = await engine.accounts.keys(a)
    return json_response({"keys": [k.model_dump() for k in keys]})


@router.delete("/projects/{project}/serviceaccounts/{sa}/keys/{key_id}", status_code=204)
async def delete_key(
    engine: EngineDep, who: PrincipalDep, project: str, sa: str, key_id: str
) -> Response:
    rec = project_for(engine, who, project, Action.MANAGE)
    a = _account(engine, rec, sa)
    await engine.accounts.delete_key(a, key_id)
    return Response(status_code=204)


@router.get("/projects/{project}/roles")
async def list_roles(engine: EngineDep, who: PrincipalDep, project: str) -> Response:
    """Every service account with a role on this project."""
    rec = project_for(engine, who, project, Action.MANAGE)
    roles = engine.accounts.roles(rec)
    return json_response({"roles": [{"account": a, "role": r} for a, r in roles]})


def _any_account(engine: EngineDep, sa: str) -> AccountRec:
    a = engine.accounts.find(sa)
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
    await engine.accounts.set_role(who, rec, a, body.role)
    return json_response({"account": a.id, "project": rec.doc.id, "role": body.role})


@router.delete("/projects/{project}/roles/{sa}", status_code=204)
async def revoke_role(engine: EngineDep, who: PrincipalDep, project: str, sa: str) -> Response:
    """Take a service account's role on this project away (admins; not your own)."""
    rec = project_for(engine, who, project, Action.READ)
    a = _any_account(engine, sa)
    engine.accounts.check_role_change(who, rec, a, None)
    if rec.pk not in a.roles:
        raise NotFound(f"service account {sa!r} has no role on project {project!r}")
    await engine.accounts.set_role(who, rec, a, None)
    return Response(status_code=204)
