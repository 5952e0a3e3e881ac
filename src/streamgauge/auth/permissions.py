"""The permission table: every request of every face is decided here.

Roles are per project. The deployment admin may do everything. For a service account:

    action   admin  manager  user
    read       x       x       x      read metadata and observations, stream
    write      x       x              create/update metadata, ingest
    delete     x                      delete metadata
    manage     x                      service accounts, keys, roles, the project itself

A caller with no role in a project gets 404 for it (it does not exist for them); a caller whose
role lacks the action gets 403.

Roles on a project are changed by one rule, the same on every face (the native
``PUT``/``DELETE /api/v1/projects/{p}/roles/{account}`` and ``PATCH`` of a service account's
role, Tapis' ``POST /v3/streams/roles`` and ``/roles/revokeRole``); it is Tapis' own rule:

    caller's role   may grant               may revoke
    admin           admin, manager, user    any role
    manager         manager, user           nothing
    user            nothing                 nothing

and besides: nobody changes their own role (grant or revoke), only an admin changes the role of
an admin, and the deployment admin may do everything. ``check_role_change`` decides it.
"""

from __future__ import annotations

from enum import StrEnum

from streamgauge.auth.principals import Principal
from streamgauge.core.registry import AccountRec, ProjectRec, Registry
from streamgauge.domain.errors import Forbidden, NotFound
from streamgauge.domain.model import Role


class Action(StrEnum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    MANAGE = "manage"


TABLE: dict[Role, frozenset[Action]] = {
    "admin": frozenset(Action),
    "manager": frozenset({Action.READ, Action.WRITE}),
    "user": frozenset({Action.READ}),
}


GRANTS: dict[Role, frozenset[Role]] = {
    "admin": frozenset({"admin", "manager", "user"}),
    "manager": frozenset({"manager", "user"}),
    "user": frozenset(),
}
"""The roles each role may grant on its project."""

REVOKERS: frozenset[Role] = frozenset({"admin"})
"""The roles that may revoke a role on their project."""


def role_of(principal: Principal, project: ProjectRec) -> Role | None:
    if principal.account is None:
        return "admin"
    return principal.account.roles.get(project.pk)


def authorize(
    principal: Principal, project: ProjectRec | None, action: Action, name: str
) -> ProjectRec:
    """The project if ``principal`` may do ``action`` on it; else NotFound or Forbidden."""
    if project is None:
        raise NotFound(f"no project {name!r}")
    if principal.is_admin:
        return project
    role = role_of(principal, project)
    if role is None:
        raise NotFound(f"no project {name!r}")
    if action not in TABLE[role]:
        raise Forbidden(
            f"role {role!r} on project {name!r} does not allow {action.value}",
            [{"reason": f"needs one of: {', '.join(r for r, a in TABLE.items() if action in a)}"}],
        )
    return project


def visible_projects(principal: Principal, reg: Registry) -> list[ProjectRec]:
    if principal.is_admin:
        return list(reg.projects.values())
    assert principal.account is not None
    return [reg.projects_by_pk[pk] for pk in principal.account.roles if pk in reg.projects_by_pk]


def check_role_change(
    principal: Principal,
    project: ProjectRec,
    target: AccountRec,
    role: Role | None,
    *,
    field: str = "role",
) -> None:
    """Raise ``Forbidden`` unless ``principal`` may set ``target``'s role on ``project`` to
    ``role`` (``None``: revoke it), by the grant table in this module's docstring; ``NotFound``
    if the principal has no role there. ``field`` names the role in the request (``role`` on
    the native face, ``role_name`` on the Tapis face)."""
    if principal.is_admin:
        return
    assert principal.account is not None
    mine = role_of(principal, project)
    if mine is None:
        raise NotFound(f"no project {project.doc.id!r}")
    if principal.account.pk == target.pk:
        raise Forbidden(
            "nobody may change their own role",
            [{"field": "account", "reason": "ask another admin of the project"}],
        )
    if role is None:
        if mine not in REVOKERS:
            raise Forbidden(
                f"role {mine!r} on project {project.doc.id!r} may not revoke roles",
                [{"reason": f"needs one of: {', '.join(sorted(REVOKERS))}"}],
            )
        return
    allowed = GRANTS[mine]
    if role not in allowed:
        may = ", ".join(sorted(allowed)) or "nothing"
        raise Forbidden(
            f"role {mine!r} on project {project.doc.id!r} may not grant {role!r}",
            [{"field": field, "reason": f"you may grant: {may}"}],
        )
    if target.roles.get(project.pk) == "admin" and mine != "admin":
        raise Forbidden(
            f"{target.id!r} is an admin of {project.doc.id!r}; only an admin may change that",
            [{"field": "account", "reason": "only an admin changes an admin's role"}],
        )
