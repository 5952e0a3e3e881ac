"""Projects, sites, devices and variables: the engine's metadata operations.

Every write is one store transaction (the backend's ``MetadataTables`` run inside it and write the
change's metadata events, which the registry applies after the commit); bulk creates are all or
nothing, ``if_exists="skip"`` leaves an item whose id exists as it is and returns it unchanged.
Reads come from the registry. A method that acts on a project takes the project's record as
returned by :meth:`MetadataService.project`, which has checked the caller's role; the methods
that decide a permission of their own take the caller's principal.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal

from streamgauge.auth import Action, Principal, authorize, visible_projects
from streamgauge.config import Settings
from streamgauge.core.registry import DeviceRec, ProjectRec, Registry, SiteRec, VariableRec
from streamgauge.core.services.base import ConnT, MetadataStore, TxT
from streamgauge.domain.errors import Forbidden
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
from streamgauge.store.api import MetadataTables

IfExists = Literal["error", "skip"]
Patch = dict[str, Any]
"""The fields of a partial update (``model_dump(exclude_unset=True)`` of an ``*In`` model)."""


class MetadataService(Generic[TxT, ConnT]):
    def __init__(
        self,
        store: MetadataStore[TxT, ConnT],
        tables: MetadataTables[TxT, ConnT],
        registry: Registry,
        settings: Settings,
    ) -> None:
        self._store = store
        self._tables = tables  # the backend's metadata tables, run in the store's transactions
        self._reg = registry
        self._settings = settings
        # Run after a project was deleted, with its pk (the engine closes its streams and forgets
        # its channels).
        self.project_deleted: list[Callable[[int], None]] = []

    # -- lookups --------------------------------------------------------------------------------

    def project(self, who: Principal, project_id: str, action: Action) -> ProjectRec:
        """The project if ``who`` may do ``action`` on it; else NotFound (no role there, or no
        such project) or Forbidden (the role does not allow it)."""
        return authorize(who, self._reg.projects.get(project_id), action, project_id)

    def visible_projects(self, who: Principal) -> list[ProjectRec]:
        """The projects ``who`` has a role in (every project for the deployment admin)."""
        return visible_projects(who, self._reg)

    def sites(self, project: ProjectRec) -> list[SiteRec]:
        return [s for (pk, _), s in self._reg.sites.items() if pk == project.pk]

    def devices(
        self, project: ProjectRec, *, site: str | None = None, type: str | None = None
    ) -> list[DeviceRec]:
        """The project's devices, of ``site`` and ``type`` if given."""
        return [
            d
            for (pk, _), d in self._reg.devices.items()
            if pk == project.pk
            and (site is None or d.site == site)
            and (type is None or d.type == type)
        ]

    def variables(self, device: DeviceRec) -> list[VariableRec]:
        reg = self._reg
        return [reg.variables_by_pk[pk] for pk in sorted(reg.device_variables.get(device.pk, ()))]

    # -- projects -------------------------------------------------------------------------------

    async def create_projects(
        self, who: Principal, items: Sequence[ProjectIn], *, if_exists: IfExists = "error"
    ) -> list[Project]:
        """Create projects, all or nothing. A service account that creates one becomes its
        admin; with ``admin_only_project_create`` only the deployment admin may create. An
        existing project is skipped over only if the caller may read it."""
        if self._settings.admin_only_project_create and not who.is_admin:
            raise Forbidden("only the deployment admin may create projects on this server")
        account = who.account.pk if who.account is not None else None
        if if_exists == "skip" and account is not None:
            for it in items:  # an existing project you cannot see is not yours to skip over
                rec = self._reg.projects.get(it.id or "")
                if rec is not None:
                    self.project(who, rec.doc.id, Action.READ)
        reg, todo = self._reg, list(items)
        return await self._store.write(
            lambda tx: self._tables.create_projects(
                tx, reg, todo, skip_existing=if_exists == "skip", admin_account=account
            )
        )

    async def update_project(self, project: ProjectRec, patch: Patch) -> Project:
        reg = self._reg
        return await self._store.write(
            lambda tx: self._tables.update_project(tx, reg, project, dict(patch))
        )

    async def delete_project(self, project: ProjectRec) -> None:
        """Delete a project with everything in it; then its streams are closed and its channels
        forgotten (``project_deleted``)."""
        reg = self._reg
        await self._store.write(lambda tx: self._tables.delete_project(tx, reg, project))
        for hook in self.project_deleted:
            hook(project.pk)

    # -- sites ----------------------------------------------------------------------------------

    async def create_sites(
        self, project: ProjectRec, items: Sequence[SiteIn], *, if_exists: IfExists = "error"
    ) -> list[Site]:
        reg, todo = self._reg, list(items)
        return await self._store.write(
            lambda tx: self._tables.create_sites(
                tx, reg, project, todo, skip_existing=if_exists == "skip"
            )
        )

    async def update_site(self, site: SiteRec, patch: Patch) -> Site:
        reg = self._reg
        return await self._store.write(
            lambda tx: self._tables.update_site(tx, reg, site, dict(patch))
        )

    async def delete_site(self, site: SiteRec) -> None:
        """Delete a site; a Conflict while devices stand at it."""
        reg = self._reg
        await self._store.write(lambda tx: self._tables.delete_site(tx, reg, site))

    # -- devices --------------------------------------------------------------------------------

    async def create_devices(
        self, project: ProjectRec, items: Sequence[DeviceIn], *, if_exists: IfExists = "error"
    ) -> list[Device]:
        """Create devices, each with the variables it lists inline, all or nothing."""
        reg, todo = self._reg, list(items)
        return await self._store.write(
            lambda tx: self._tables.create_devices(
                tx, reg, project, todo, skip_existing=if_exists == "skip"
            )
        )

    async def update_device(self, project: ProjectRec, device: DeviceRec, patch: Patch) -> Device:
        return (await self.update_devices(project, [(device, patch)]))[0]

    async def update_devices(
        self, project: ProjectRec, changes: Iterable[tuple[DeviceRec, Patch]]
    ) -> list[Device]:
        """Update several devices of ``project`` in one transaction (all or nothing)."""
        reg, todo = self._reg, [(d, dict(p)) for d, p in changes]
        return await self._store.write(
            lambda tx: [self._tables.update_device(tx, reg, project, d, p) for d, p in todo]
        )

    async def delete_device(self, device: DeviceRec) -> None:
        """Delete a device and its variables; its observations are no longer readable."""
        reg = self._reg
        await self._store.write(lambda tx: self._tables.delete_device(tx, reg, device))

    # -- variables ------------------------------------------------------------------------------

    async def create_variables(
        self,
        project: ProjectRec,
        device: DeviceRec,
        items: Sequence[VariableIn],
        *,
        if_exists: IfExists = "error",
    ) -> list[Variable]:
        """Create variables of a device (an id defaults to the name), all or nothing."""
        reg, todo = self._reg, list(items)
        return await self._store.write(
            lambda tx: self._tables.create_variables(
                tx, reg, project, device, todo, skip_existing=if_exists == "skip"
            )
        )

    async def update_variable(self, variable: VariableRec, patch: Patch) -> Variable:
        reg = self._reg
        return await self._store.write(
            lambda tx: self._tables.update_variable(tx, reg, variable, dict(patch))
        )

    async def delete_variable(self, variable: VariableRec) -> None:
        reg = self._reg
        await self._store.write(lambda tx: self._tables.delete_variable(tx, reg, variable))

    # -- bridges: devices and variables on first sight ------------------------------------------

    def missing(
        self,
        project: ProjectRec,
        wanted: Mapping[str, tuple[Collection[str], Mapping[str, str] | None]],
    ) -> bool:
        """Whether ``ensure`` has anything to do (a device, a variable or a label is not there)."""
        reg = self._reg
        for device_id, (variables, labels) in wanted.items():
            rec = reg.devices.get((project.pk, device_id))
            if rec is None:
                return True
            if any((rec.pk, v) not in reg.variables for v in variables):
                return True
            if labels and any(rec.doc.labels.get(k) != v for k, v in labels.items()):
                return True
        return False

    async def ensure(
        self,
        project: ProjectRec,
        wanted: Mapping[str, tuple[Collection[str], Mapping[str, str] | None]],
        *,
        create: bool,
    ) -> None:
        """``ensure_writes`` in a transaction of their own (nothing is written when nothing
        is missing). A bridge that ingests what it creates passes the writes to
        ``Engine.ingest_rows`` instead, so both commit together."""
        writes = self.ensure_writes(project, wanted, create=create)
        if writes is not None:
            await self._store.write(writes)

    def ensure_writes(
        self,
        project: ProjectRec,
        wanted: Mapping[str, tuple[Collection[str], Mapping[str, str] | None]],
        *,
        create: bool,
    ) -> Callable[[TxT], None] | None:
        """The writes, to run in one write transaction, that make ``wanted`` (device id ->
        (variable ids, labels)) true: with ``create``, the devices and variables that do not
        exist yet (a variable's name is its id, so a catalog name gets the catalog's unit);
        and the labels given that differ from a device's (merged into its labels). What exists
        is decided when the writes run, in their transaction. Ids must be valid
        (``model.ID_RE``): the caller checks them and names where a bad one came from. None
        when nothing is missing now."""
        if not self.missing(project, wanted):
            return None
        reg = self._reg
        todo = {k: (list(v), dict(labels or {})) for k, (v, labels) in wanted.items()}

        def run(tx: TxT) -> None:
            new: list[DeviceIn] = []
            for device_id, (variables, labels) in todo.items():
                rec = reg.devices.get((project.pk, device_id))
                if rec is None:
                    if create:
                        new.append(
                            DeviceIn(
                                id=device_id,
                                labels=labels,
                                variables=[VariableIn(name=v) for v in variables],
                            )
                        )
                    continue
                absent = [VariableIn(name=v) for v in variables if (rec.pk, v) not in reg.variables]
                if absent and create:
                    self._tables.create_variables(tx, reg, project, rec, absent, skip_existing=True)
                if labels and any(rec.doc.labels.get(k) != v for k, v in labels.items()):
                    patch = {"labels": {**rec.doc.labels, **labels}}
                    self._tables.update_device(tx, reg, project, rec, patch)
            if new:
                self._tables.create_devices(tx, reg, project, new, skip_existing=True)

        return run
