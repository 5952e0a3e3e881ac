"""The permission table: every request of every face is decided here.

Roles are per project. The deployment admin may do everything. For a service account:

    action   admin  manager  user
    read       x       x       x      read metadata and observations, stream
    write      x       x              create/update metadata, ingest
    delete     x                      delete metadata
    manage     x                      service accounts, keys, roles, the project itself

A caller with no role in a project gets 404 for it (it does not exist for them); a caller whose
role lacks the action gets 403.
"""

from __future__ import annotations

from enum import StrEnum

from streamgauge.auth.principals import Principal
from streamgauge.errors import Forbidden, NotFound
from streamgauge.model import Role
from streamgauge.store.registry import ProjectRec, Registry


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
