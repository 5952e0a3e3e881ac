"""Metadata changes (projects, sites, devices, variables, service accounts, their roles and
keys), run inside the writer's transaction, and their events: written once for both stores
(``store/sqlite/metadata.py``, ``store/postgres/metadata.py``). Each store gives them its SQL
dialect (a subclass of ``MetadataChanges``: its placeholder, how an insert returns its primary
key, how a new account's pk is taken) and exports the bound methods as its module's functions
(``store.api.MetadataTables``); what reads or writes its tables in its own way stays there: the
registry loader (``load``, ``load_tables``) and the change feed (``write_events``,
``read_events``, ``events_head``).

Each change checks (against the registry, read through ``domain.readmodel.ReadModel``),
writes, and appends the change's events (``domain/events.py``) to the transaction. The writer
stores them in the same transaction (``write_events``: the ``meta_events`` table) and hands them
to the registry only after the commit, so the registry never shows what did not commit and a
failed transaction leaves no event. Bulk creates are all-or-nothing and name each bad item by
its index. With ``skip_existing`` an item whose id exists is left as it is and returned
unchanged.

``meta_events`` is the change feed since the table was created (SQLite's schema 9,
PostgreSQL's schema 2): sequence number, commit time, kind, payload (``events.encode``). It is
bounded: each write of events deletes those older than ``EVENT_RETENTION_MS`` and those more
than ``EVENT_KEEP_MAX`` behind. It is not what a store opens from: ``load`` reads the tables
themselves (as events, which the registry applies); the feed is for what follows a running
node's changes (the cluster mode's bus, a node catching up after a short outage; one further
behind reloads from the tables).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from streamgauge.domain import events as ev
from streamgauge.domain.errors import Conflict, Invalid, NotFound
from streamgauge.domain.model import (
    Device,
    DeviceIn,
    Project,
    ProjectIn,
    Role,
    Site,
    SiteIn,
    Variable,
    VariableIn,
    new_id,
    now_iso,
)
from streamgauge.domain.readmodel import ReadModel
from streamgauge.domain.records import AccountRec, DeviceRec, ProjectRec, SiteRec, VariableRec
from streamgauge.store.dbapi import Executes, WriteTx

EVENT_RETENTION_MS = 3_600_000  # meta_events keeps the last hour of changes ...
EVENT_KEEP_MAX = 100_000  # ... and at most this many (a network's first ingest adds a series each)


TxT = TypeVar("TxT", bound=WriteTx)
ConnT = TypeVar("ConnT", bound=Executes)
M = TypeVar("M", bound=BaseModel)
I = TypeVar("I", bound=BaseModel)  # noqa: E741 - an item of a create request
D = TypeVar("D", bound=BaseModel)  # the document created


def _merge(model: type[M], doc: M, patch: dict[str, Any]) -> M:
    """``doc`` with ``patch`` applied; a null ``name`` resets it to the id; 422 if invalid."""
    if "name" in patch and patch["name"] is None:
        patch["name"] = getattr(doc, "id", None)
    try:
        return model(**{**doc.model_dump(), **patch})
    except ValidationError as exc:
        raise Invalid(
            "the update does not validate",
            [{"field": ".".join(map(str, e["loc"])), "reason": e["msg"]} for e in exc.errors()],
        ) from exc


def account_events(conn: Executes) -> Iterator[ev.MetaEvent]:
    """The accounts, their roles and their keys, as the events that build them (the last part
    of each store's ``load`` and ``load_tables``)."""
    for pk, id_, name, home in conn.execute("SELECT pk, id, name, home_project_pk FROM accounts"):
        yield ev.AccountPut(pk, id_, name, home)
    for account_pk, project_pk, role in conn.execute(
        "SELECT account_pk, project_pk, role FROM roles"
    ):
        yield ev.RolePut(account_pk, project_pk, role)
    for key_id, account_pk, hash_ in conn.execute(
        "SELECT key_id, account_pk, hash FROM account_keys"
    ):
        yield ev.KeyPut(account_pk, key_id, hash_)


def _dupes(ids: list[str], what: str) -> None:
    seen: dict[str, int] = {}
    details = []
    for i, id_ in enumerate(ids):
        if id_ in seen:
            details.append({"index": i, "field": "id", "reason": f"repeats item {seen[id_]}"})
        seen.setdefault(id_, i)
    if details:
        raise Invalid(f"the same {what} id appears more than once in the request", details)


def _create_all(
    items: list[I],
    ids: list[str],
    what: str,
    existing: Callable[[str], Any],
    create: Callable[[int, I, str], D],
    *,
    skip_existing: bool,
) -> list[D]:
    """The bulk-create loop every collection shares: ids unique in the request, existing ids
    skipped (their document returned) or named as conflicts, the rest created in order."""
    _dupes(ids, what)
    docs: list[D] = []
    conflicts = []
    for i, (it, id_) in enumerate(zip(items, ids, strict=True)):
        rec = existing(id_)
        if rec is None:
            docs.append(create(i, it, id_))
        elif skip_existing:
            docs.append(rec.doc)
        else:
            conflicts.append({"index": i, "field": "id", "reason": f"{what} {id_!r} exists"})
    if conflicts:
        raise Conflict(f"a {what} with this id exists", conflicts)
    return docs


def _check_site(reg: ReadModel, project: ProjectRec, site: str | None, index: int | None) -> None:
    if site is not None and (project.pk, site) not in reg.sites:
        detail: dict[str, Any] = {"field": "site", "reason": f"no site {site!r} in this project"}
        if index is not None:
            detail["index"] = index
        raise Invalid(f"unknown site {site!r}", [detail])


class MetadataChanges(ABC, Generic[TxT, ConnT]):
    """The metadata changes of one store (``store.api.MetadataTables``), in its SQL dialect: a
    subclass sets ``PARAM`` (its placeholder) and says how an insert returns its primary key
    (``_insert_returning_pk``) and how a new account's pk is taken (``_next_account_pk``).
    Stateless: each store's module holds one and exports its methods."""

    PARAM: ClassVar[str]

    @abstractmethod
    def _insert_returning_pk(self, tx: TxT, sql: str, params: tuple[Any, ...]) -> int:
        """Run ``sql``, an INSERT of one row into a table keyed by ``pk``; the row's pk."""

    @abstractmethod
    def _next_account_pk(self, tx: TxT) -> int:
        """A new service account's pk, recorded as taken (``state.account_seq``) in ``tx``.
        Never a pk a deleted account had (max(pk) + 1 would give one): what is keyed by it (the
        DT face's account settings, cached) must not pass to a new account."""

    def _insert_doc(
        self, tx: TxT, table: str, parent: str, parent_pk: int, id_: str, doc: BaseModel
    ) -> int:
        p = self.PARAM
        return self._insert_returning_pk(
            tx,
            f"INSERT INTO {table} ({parent}, id, doc) VALUES ({p}, {p}, {p})",
            (parent_pk, id_, doc.model_dump_json()),
        )

    # -- projects -------------------------------------------------------------------------------

    def create_projects(
        self,
        tx: TxT,
        reg: ReadModel,
        items: list[ProjectIn],
        *,
        skip_existing: bool,
        admin_account: int | None,
    ) -> list[Project]:
        p = self.PARAM

        def create(i: int, it: ProjectIn, id_: str) -> Project:
            doc = Project(
                **{**it.model_dump(), "id": id_, "name": it.name or id_, "created_at": now_iso()}
            )
            pk = self._insert_returning_pk(
                tx,
                f"INSERT INTO projects (id, doc) VALUES ({p}, {p})",
                (id_, doc.model_dump_json()),
            )
            tx.events.append(ev.ProjectPut(pk, doc))
            if admin_account is not None:
                tx.execute(f"INSERT INTO roles VALUES ({p}, {p}, 'admin')", (admin_account, pk))
                tx.events.append(ev.RolePut(admin_account, pk, "admin"))
            return doc

        ids = [it.id or new_id("p") for it in items]
        return _create_all(
            items, ids, "project", reg.projects.get, create, skip_existing=skip_existing
        )

    def update_project(
        self, tx: TxT, reg: ReadModel, rec: ProjectRec, patch: dict[str, Any]
    ) -> Project:
        p = self.PARAM
        patch.pop("id", None)
        doc = _merge(Project, rec.doc, patch)
        tx.execute(f"UPDATE projects SET doc = {p} WHERE pk = {p}", (doc.model_dump_json(), rec.pk))
        tx.events.append(ev.ProjectPut(rec.pk, doc))
        return doc

    def delete_project(self, tx: TxT, reg: ReadModel, rec: ProjectRec) -> None:
        p = self.PARAM
        tx.execute(f"DELETE FROM series WHERE project_pk = {p}", (rec.pk,))
        tx.execute(f"DELETE FROM projects WHERE pk = {p}", (rec.pk,))
        tx.events.append(ev.ProjectDropped(rec.pk))  # cascades as the tables do (domain/events.py)

    # -- sites ----------------------------------------------------------------------------------

    def create_sites(
        self,
        tx: TxT,
        reg: ReadModel,
        project: ProjectRec,
        items: list[SiteIn],
        *,
        skip_existing: bool,
    ) -> list[Site]:
        def create(i: int, it: SiteIn, id_: str) -> Site:
            doc = Site(
                **{**it.model_dump(), "id": id_, "name": it.name or id_, "project": project.doc.id}
            )
            pk = self._insert_doc(tx, "sites", "project_pk", project.pk, id_, doc)
            tx.events.append(ev.SitePut(pk, project.pk, doc))
            return doc

        ids = [it.id or new_id("s") for it in items]
        docs = _create_all(
            items,
            ids,
            "site",
            lambda id_: reg.sites.get((project.pk, id_)),
            create,
            skip_existing=skip_existing,
        )
        return docs

    def update_site(self, tx: TxT, reg: ReadModel, rec: SiteRec, patch: dict[str, Any]) -> Site:
        p = self.PARAM
        patch.pop("id", None)
        doc = _merge(Site, rec.doc, patch)
        tx.execute(f"UPDATE sites SET doc = {p} WHERE pk = {p}", (doc.model_dump_json(), rec.pk))
        tx.events.append(ev.SitePut(rec.pk, rec.project_pk, doc))
        return doc

    def delete_site(self, tx: TxT, reg: ReadModel, rec: SiteRec) -> None:
        users = sorted(
            d.id
            for d in reg.devices_by_pk.values()
            if d.project_pk == rec.project_pk and d.site == rec.id
        )
        if users:
            raise Conflict(
                f"site {rec.doc.id!r} has devices; move or delete them first",
                [{"field": "devices", "reason": ", ".join(users[:20])}],
            )
        tx.execute(f"DELETE FROM sites WHERE pk = {self.PARAM}", (rec.pk,))
        tx.events.append(ev.SiteDropped(rec.pk, rec.project_pk, rec.doc.id))

    # -- devices and variables ------------------------------------------------------------------

    def create_devices(
        self,
        tx: TxT,
        reg: ReadModel,
        project: ProjectRec,
        items: list[DeviceIn],
        *,
        skip_existing: bool,
    ) -> list[Device]:
        def create(i: int, it: DeviceIn, id_: str) -> Device:
            _check_site(reg, project, it.site, i)
            doc = Device(
                id=id_,
                project=project.doc.id,
                site=it.site,
                type=it.type,
                name=it.name or id_,
                labels=it.labels,
                metadata=it.metadata,
            )
            pk = self._insert_doc(tx, "devices", "project_pk", project.pk, id_, doc)
            rec = DeviceRec(pk, project.pk, doc)
            tx.events.append(ev.DevicePut(rec.pk, project.pk, doc))
            if it.variables:
                self.create_variables(
                    tx, reg, project, rec, it.variables, skip_existing=False, index=i
                )
            return doc

        ids = [it.id or new_id("d") for it in items]
        docs = _create_all(
            items,
            ids,
            "device",
            lambda id_: reg.devices.get((project.pk, id_)),
            create,
            skip_existing=skip_existing,
        )
        return docs

    def update_device(
        self, tx: TxT, reg: ReadModel, project: ProjectRec, rec: DeviceRec, patch: dict[str, Any]
    ) -> Device:
        p = self.PARAM
        patch.pop("id", None)
        if "variables" in patch:
            raise Invalid(
                "variables are changed through the device's variables collection",
                [{"field": "variables", "reason": "not allowed in an update"}],
            )
        if "site" in patch:
            _check_site(reg, project, patch["site"], None)
        doc = _merge(Device, rec.doc, patch)
        tx.execute(f"UPDATE devices SET doc = {p} WHERE pk = {p}", (doc.model_dump_json(), rec.pk))
        tx.events.append(ev.DevicePut(rec.pk, rec.project_pk, doc))
        return doc

    def delete_device(self, tx: TxT, reg: ReadModel, rec: DeviceRec) -> None:
        p = self.PARAM
        tx.execute(f"DELETE FROM series WHERE device_pk = {p}", (rec.pk,))
        tx.execute(f"DELETE FROM devices WHERE pk = {p}", (rec.pk,))
        tx.events.append(ev.DeviceDropped(rec.pk))

    def create_variables(
        self,
        tx: TxT,
        reg: ReadModel,
        project: ProjectRec,
        device: DeviceRec,
        items: list[VariableIn],
        *,
        skip_existing: bool,
        index: int | None = None,
    ) -> list[Variable]:
        ids: list[str] = []
        bad = []
        for i, it in enumerate(items):
            id_ = it.id or it.name
            if id_ is None:
                bad.append(
                    {"index": i, "field": "name", "reason": "a variable needs a name or an id"}
                )
                id_ = ""
            ids.append(id_)
        if bad:
            raise Invalid(
                "variable without a name",
                bad
                if index is None
                else [{"index": index, "field": "variables", "reason": str(bad)}],
            )

        def create(i: int, it: VariableIn, id_: str) -> Variable:
            doc = Variable(
                **{
                    **it.model_dump(),
                    "id": id_,
                    "name": it.name or id_,
                    "project": project.doc.id,
                    "device": device.doc.id,
                }
            )
            try:
                entry, _, _ = reg.variable_entry(doc.name, doc.unit)  # the unit suits the catalog
            except Invalid as exc:
                where = {"index": i} if index is None else {"index": index, "variable": i}
                raise Invalid(exc.message, [{**d, **where} for d in exc.details]) from exc
            if doc.unit is None and entry.unit != "dimensionless":
                doc = doc.model_copy(update={"unit": entry.unit})
            pk = self._insert_doc(tx, "variables", "device_pk", device.pk, id_, doc)
            tx.events.append(ev.VariablePut(pk, device.pk, doc))
            return doc

        docs = _create_all(
            items,
            ids,
            "variable",
            lambda id_: reg.variables.get((device.pk, id_)),
            create,
            skip_existing=skip_existing,
        )
        return docs

    def update_variable(
        self, tx: TxT, reg: ReadModel, rec: VariableRec, patch: dict[str, Any]
    ) -> Variable:
        p = self.PARAM
        patch.pop("id", None)
        if "set" in patch and patch["set"] != rec.doc.set:
            raise Invalid(
                "a variable's set cannot change once created",
                [{"field": "set", "reason": "create another variable for another set"}],
            )
        doc = _merge(Variable, rec.doc, patch)
        entry, _, _ = reg.variable_entry(doc.name, doc.unit)  # a new unit must suit the entry
        if entry.unit != rec.entry.unit:
            raise Invalid(
                "a variable's unit may change only within its canonical unit's dimension",
                [{"field": "unit", "reason": f"stored in {rec.entry.unit!r}"}],
            )
        tx.execute(
            f"UPDATE variables SET doc = {p} WHERE pk = {p}", (doc.model_dump_json(), rec.pk)
        )
        tx.events.append(ev.VariablePut(rec.pk, rec.device_pk, doc))
        return doc

    def delete_variable(self, tx: TxT, reg: ReadModel, rec: VariableRec) -> None:
        p = self.PARAM
        tx.execute(f"DELETE FROM series WHERE variable_pk = {p}", (rec.pk,))
        tx.execute(f"DELETE FROM variables WHERE pk = {p}", (rec.pk,))
        tx.events.append(ev.VariableDropped(rec.pk))

    # -- service accounts, keys, roles ----------------------------------------------------------

    def create_account(
        self, tx: TxT, reg: ReadModel, project: ProjectRec, id_: str, name: str, role: Role
    ) -> AccountRec:
        p = self.PARAM
        if id_ in reg.accounts:
            raise Conflict(
                f"service account {id_!r} exists",
                [{"field": "id", "reason": "ids are unique in the deployment"}],
            )
        pk = self._next_account_pk(tx)
        tx.execute(
            f"INSERT INTO accounts (pk, id, name, home_project_pk) VALUES ({p}, {p}, {p}, {p})",
            (pk, id_, name, project.pk),
        )
        tx.execute(f"INSERT INTO roles VALUES ({p}, {p}, {p})", (pk, project.pk, role))
        tx.events += [ev.AccountPut(pk, id_, name, project.pk), ev.RolePut(pk, project.pk, role)]
        # What the account will be once committed (the registry builds its own record from the
        # events): for writes of the same transaction that need its pk.
        return AccountRec(pk, id_, name, project.pk, {project.pk: role})

    def rename_account(self, tx: TxT, reg: ReadModel, rec: AccountRec, name: str) -> None:
        p = self.PARAM
        tx.execute(f"UPDATE accounts SET name = {p} WHERE pk = {p}", (name, rec.pk))
        tx.events.append(ev.AccountPut(rec.pk, rec.id, name, rec.home_project_pk))

    def set_role(
        self, tx: TxT, reg: ReadModel, rec: AccountRec, project_pk: int, role: Role | None
    ) -> None:
        p = self.PARAM
        if role is None:
            tx.execute(
                f"DELETE FROM roles WHERE account_pk = {p} AND project_pk = {p}",
                (rec.pk, project_pk),
            )
            tx.events.append(ev.RoleDropped(rec.pk, project_pk))
        else:
            tx.execute(
                f"INSERT INTO roles VALUES ({p}, {p}, {p}) "
                "ON CONFLICT (account_pk, project_pk) DO UPDATE SET role = excluded.role",
                (rec.pk, project_pk, role),
            )
            tx.events.append(ev.RolePut(rec.pk, project_pk, role))

    def delete_account(self, tx: TxT, reg: ReadModel, rec: AccountRec) -> None:
        tx.execute(f"DELETE FROM accounts WHERE pk = {self.PARAM}", (rec.pk,))
        tx.events.append(ev.AccountDropped(rec.pk))

    def add_key(
        self, tx: TxT, reg: ReadModel, rec: AccountRec, key_id: str, hash_: str, created_at: str
    ) -> None:
        p = self.PARAM
        tx.execute(
            f"INSERT INTO account_keys VALUES ({p}, {p}, {p}, {p})",
            (key_id, rec.pk, hash_, created_at),
        )
        tx.events.append(ev.KeyPut(rec.pk, key_id, hash_))

    def delete_key(self, tx: TxT, reg: ReadModel, rec: AccountRec, key_id: str) -> None:
        if key_id not in rec.keys:
            raise NotFound(f"no key {key_id!r} on service account {rec.id!r}")
        tx.execute(f"DELETE FROM account_keys WHERE key_id = {self.PARAM}", (key_id,))
        tx.events.append(ev.KeyDropped(rec.pk, key_id))

    def key_created(self, conn: ConnT, account_pk: int) -> list[tuple[str, str]]:
        """(key id, created at) of the account's keys, by key id."""
        return [
            (k, c)
            for k, c in conn.execute(
                "SELECT key_id, created_at FROM account_keys"
                f" WHERE account_pk = {self.PARAM} ORDER BY key_id",
                (account_pk,),
            )
        ]
