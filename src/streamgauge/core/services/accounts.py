"""Service accounts, their keys, and roles: the engine's account operations.

A service account has one deployment-wide id, a home project and a role on it; it may hold roles
on other projects. Roles change by the one rule of ``auth.permissions.check_role_change``, applied
here to every change a caller asks for, so every face gets the same rule. A key's secret is
derived from the server's token key and shown once; only its argon2 hash is stored.

``also``: a face that keeps its own data about an account (the DT face's account settings) gives
a function run inside the same write transaction, with the account's record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamgauge.auth import Authenticator, Principal
from streamgauge.auth.permissions import check_role_change
from streamgauge.auth.principals import new_key_id
from streamgauge.auth.tokens import TokenIssuer
from streamgauge.core.registry import AccountRec, ProjectRec, Registry
from streamgauge.core.services.base import MetadataStore
from streamgauge.domain.errors import NotFound
from streamgauge.domain.model import Key, NewKey, Role, ServiceAccount, new_id, now_iso
from streamgauge.store.api import MetadataTables
from streamgauge.store.sqlite import metadata as sqlite_metadata

if TYPE_CHECKING:
    from streamgauge.store.sqlite.store import Tx

Also = Callable[["Tx", AccountRec], object]
"""A face's own write about an account, run in the account change's transaction."""


class AccountService:
    def __init__(
        self,
        store: MetadataStore,
        auth: Authenticator,
        tokens: TokenIssuer,
        tables: MetadataTables[Any, Any] = sqlite_metadata,
    ) -> None:
        self._store = store
        self._reg: Registry = store.registry
        self._auth = auth
        self._tokens = tokens
        self._md = tables  # the backend's metadata tables (store.api.MetadataTables)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, project: ProjectRec, account_id: str) -> AccountRec:
        """The service account ``account_id`` whose home is ``project``; else NotFound."""
        a = self._reg.accounts.get(account_id)
        if a is None or a.home_project_pk != project.pk:
            raise NotFound(f"no service account {account_id!r} in project {project.doc.id!r}")
        return a

    def find(self, account_id: str) -> AccountRec | None:
        """A service account of any project, by its id."""
        return self._reg.accounts.get(account_id)

    def of_project(self, project: ProjectRec) -> list[AccountRec]:
        """The service accounts whose home is ``project``, by id."""
        reg = self._reg
        return sorted(
            (a for a in reg.accounts.values() if a.home_project_pk == project.pk),
            key=lambda a: a.id,
        )

    def document(self, account: AccountRec) -> ServiceAccount:
        reg = self._reg
        return ServiceAccount(
            id=account.id,
            name=account.name,
            project=reg.projects_by_pk[account.home_project_pk].doc.id,
            roles={
                reg.projects_by_pk[pk].doc.id: r
                for pk, r in account.roles.items()
                if pk in reg.projects_by_pk
            },
        )

    def roles(self, project: ProjectRec) -> list[tuple[str, Role]]:
        """(account id, role) of every service account with a role on ``project``, by id."""
        reg = self._reg
        return sorted(
            (a.id, a.roles[project.pk]) for a in reg.accounts.values() if project.pk in a.roles
        )

    # -- accounts -------------------------------------------------------------------------------

    async def create(
        self,
        project: ProjectRec,
        *,
        id: str | None = None,
        name: str | None = None,
        role: Role = "user",
        also: Also | None = None,
    ) -> AccountRec:
        """A new service account whose home is ``project``, with ``role`` on it; its id is
        generated if not given, its name defaults to the id. Conflict if the id is taken."""
        id_ = id or new_id("sa")
        reg = self._reg

        def run(tx: Tx) -> AccountRec:
            rec = self._md.create_account(tx, reg, project, id_, name or id_, role)
            if also is not None:
                also(tx, rec)
            return rec

        return await self._store.write(run)

    async def update(
        self,
        who: Principal,
        project: ProjectRec,
        account: AccountRec,
        *,
        name: str | None = None,
        role: Role | None = None,
        field: str = "role",
        also: Also | None = None,
    ) -> AccountRec:
        """Rename ``account`` (a ``name``) and set its role on ``project`` (a ``role``, by the
        rule of ``check_role_change``), in one transaction."""
        if role is not None:
            self.check_role_change(who, project, account, role, field=field)
        reg = self._reg

        def run(tx: Tx) -> None:
            if name:
                self._md.rename_account(tx, reg, account, name)
            if role is not None:
                self._md.set_role(tx, reg, account, project.pk, role)
            if also is not None:
                also(tx, account)

        await self._store.write(run)
        return account

    async def delete(self, account: AccountRec) -> None:
        reg = self._reg
        await self._store.write(lambda tx: self._md.delete_account(tx, reg, account))

    # -- roles ----------------------------------------------------------------------------------

    def check_role_change(
        self,
        who: Principal,
        project: ProjectRec,
        account: AccountRec,
        role: Role | None,
        *,
        field: str = "role",
    ) -> None:
        """Forbidden unless ``who`` may set ``account``'s role on ``project`` to ``role``
        (``None``: revoke it); the rule of ``auth.permissions``."""
        check_role_change(who, project, account, role, field=field)

    async def set_role(
        self,
        who: Principal,
        project: ProjectRec,
        account: AccountRec,
        role: Role | None,
        *,
        field: str = "role",
    ) -> None:
        """Grant ``role`` on ``project`` to ``account`` (``None``: revoke its role there), if
        ``who`` may; it takes effect at once on every face."""
        self.check_role_change(who, project, account, role, field=field)
        reg = self._reg
        await self._store.write(lambda tx: self._md.set_role(tx, reg, account, project.pk, role))

    # -- keys -----------------------------------------------------------------------------------

    async def create_key(self, account: AccountRec) -> NewKey:
        """A new key of ``account``. The secret is derived from the server's token key (so a JWT
        assertion signed with it can be checked) and only its argon2 hash is stored; every face
        shows it once."""
        key_id = new_key_id()
        secret = self._tokens.secret_for(key_id)
        hashed = await self._auth.hash_async(secret)
        created = now_iso()
        reg = self._reg
        await self._store.write(
            lambda tx: self._md.add_key(tx, reg, account, key_id, hashed, created)
        )
        return NewKey(key_id=key_id, secret=secret, created_at=created)

    async def keys(self, account: AccountRec) -> list[Key]:
        """The account's keys (without secrets), by key id."""
        rows = await self._store.read(lambda conn: self._md.key_created(conn, account.pk))
        return [Key(key_id=k, created_at=c) for k, c in rows]

    async def delete_key(self, account: AccountRec, key_id: str) -> None:
        """Delete a key (NotFound if the account has no such key); logins with it fail at once."""
        reg = self._reg
        await self._store.write(lambda tx: self._md.delete_key(tx, reg, account, key_id))
