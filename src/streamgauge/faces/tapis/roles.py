"""Tapis roles (``/v3/streams/roles``) on the one permission table, and the token endpoint.

A Tapis ``user`` is a service account id (the ``tapis/username`` of its tokens); a role on a
project is the native role on that project, so a grant or revoke here takes effect at once on
every face. Who may grant and revoke is the one rule of ``auth.permissions``
(``check_role_change``), the same as the native face's: an admin may grant any role, a manager
``manager`` or ``user``, nobody changes their own role; revokes are for admins. Channel and
template roles are not separate here: a channel's access follows its project's roles.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from streamgauge.auth import Action, Principal
from streamgauge.core.engine import Engine
from streamgauge.core.registry import AccountRec, ProjectRec
from streamgauge.domain.errors import BadRequest, NotFound
from streamgauge.domain.model import Role
from streamgauge.faces.tapis.resources import project_rec
from streamgauge.faces.tapis.wire import CallerDep, EngineDep, TapisRoute, envelope

router = APIRouter(prefix="/streams", route_class=TapisRoute, tags=["tapis"])
tokens_router = APIRouter(route_class=TapisRoute, tags=["tapis"])


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    resource_type: Literal["project", "channel", "template"]
    resource_id: str
    role_name: Role


def _project_of(engine: Engine, who: Principal, resource_type: str, resource_id: str) -> ProjectRec:
    if resource_type == "channel":
        ch = engine.channels.get(resource_id)
        if ch is None:
            raise NotFound(f"no channel {resource_id!r}")
        return project_rec(engine, who, ch.project_id, Action.READ)
    if resource_type != "project":
        raise BadRequest(
            f"roles on {resource_type}s are not kept separately",
            [{"field": "resource_type", "reason": "grant the role on the project"}],
        )
    return project_rec(engine, who, resource_id, Action.READ)


def _account(engine: Engine, user: str) -> AccountRec:
    a = engine.accounts.find(user)
    if a is None:
        raise NotFound(f"no user {user!r} (a user is a service account id)")
    return a


@router.post("/roles", status_code=201)
async def grant_role(engine: EngineDep, who: CallerDep, body: RoleBody) -> Response:
    """Grant ``role_name`` on a project (a channel: on its project) to a service account."""
    if body.resource_type == "channel":
        raise BadRequest(
            "channel roles follow the channel's project",
            [{"field": "resource_type", "reason": "grant the role on the project"}],
        )
    p = _project_of(engine, who, body.resource_type, body.resource_id)
    target = _account(engine, body.user)
    await engine.accounts.set_role(who, p, target, body.role_name, field="role_name")
    return envelope(
        f"role {body.role_name} granted to {target.id} on {p.doc.id}", "Role granted", 201
    )


@router.post("/roles/revokeRole")
async def revoke_role(engine: EngineDep, who: CallerDep, body: RoleBody) -> Response:
    """Revoke a role (admins of the project only)."""
    if body.resource_type == "channel":
        raise BadRequest(
            "channel roles follow the channel's project",
            [{"field": "resource_type", "reason": "revoke the role on the project"}],
        )
    p = _project_of(engine, who, body.resource_type, body.resource_id)
    target = _account(engine, body.user)
    engine.accounts.check_role_change(who, p, target, None, field="role_name")
    if target.roles.get(p.pk) != body.role_name:
        raise NotFound(f"{target.id!r} has no role {body.role_name!r} on {p.doc.id!r}")
    await engine.accounts.set_role(who, p, target, None, field="role_name")
    return envelope(f"role {body.role_name} revoked from {target.id} on {p.doc.id}", "Role revoked")


@router.get("/roles")
async def list_roles(
    engine: EngineDep,
    who: CallerDep,
    user: Annotated[str, Query()],
    resource_type: Annotated[Literal["project", "channel", "template"], Query()],
    resource_id: Annotated[str, Query()],
) -> Response:
    """A user's roles on a project or a channel: yours, or anyone's if you manage the project."""
    p = _project_of(engine, who, resource_type, resource_id)
    if who.name != user:
        project_rec(engine, who, p.doc.id, Action.MANAGE)
    target = _account(engine, user)
    role = target.roles.get(p.pk)
    return envelope({"roleNames": [] if role is None else [role]}, "Roles found")


# -- tokens -------------------------------------------------------------------------------------


class TokenBody(BaseModel):
    """What ``tapipy``'s ``get_tokens()`` sends; ``username`` is a key id, ``password`` its
    secret."""

    model_config = ConfigDict(extra="forbid")
    username: str
    password: str
    grant_type: Literal["password"]
    client_id: str | None = None
    client_key: str | None = None


@tokens_router.post("/oauth2/tokens", status_code=201)
async def create_token(request: Request, engine: EngineDep, body: TokenBody) -> Response:
    """An access token (JWT with ``tapis/tenant_id`` and ``tapis/username``) for a service
    account key."""
    client = request.client.host if request.client else None
    who = await engine.auth.key_async(body.username, body.password, client)
    assert who.account is not None
    s = engine.settings
    jwt, exp = engine.tokens.issue(
        who.account.id,
        ttl_seconds=s.tapis_token_ttl_seconds,
        claims={
            "tapis/tenant_id": s.tapis_tenant_id,
            "tapis/username": who.account.id,
            "key_id": body.username,
        },
    )
    result: dict[str, Any] = {
        "access_token": {
            "access_token": jwt,
            "expires_at": datetime.fromtimestamp(exp, UTC).isoformat(),
            "expires_in": s.tapis_token_ttl_seconds,
        }
    }
    return envelope(result, "Token created", 201)
