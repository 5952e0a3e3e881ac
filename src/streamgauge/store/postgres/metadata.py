"""Metadata changes in PostgreSQL (the twin of ``store/sqlite/metadata.py``: the same checks
and registry updates, PostgreSQL's SQL), run inside the writer's transaction, and the registry
loader.

Each function checks, writes, and queues the registry update for after the commit, so the
registry never shows what did not commit. Bulk creates are all-or-nothing and name each bad item by
its index. With ``skip_existing`` an item whose id exists is left as it is and returned unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from streamgauge.core.registry import (
    AccountRec,
    DeviceRec,
    ProjectRec,
    Registry,
    SeriesRec,
    SiteRec,
    VariableRec,
    series_prefix,
)
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
from streamgauge.store.postgres.conn import Conn, Tx, one


def _set_doc(reg: Registry, rec: Any, doc: Any) -> Callable[[], None]:
    def run() -> None:
        rec.doc = doc
        reg.bump()

    return run


def _then_bump(reg: Registry, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        fn()
        reg.bump()

    return run


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


def load(conn: Conn, reg: Registry) -> None:
    """Fill the registry from the database (on start)."""
    for pk, doc in conn.execute("SELECT pk, doc FROM projects"):
        p = ProjectRec(pk, Project.model_validate_json(doc))
        reg.projects[p.doc.id] = p
        reg.projects_by_pk[pk] = p
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM sites"):
        s = SiteRec(pk, project_pk, Site.model_validate_json(doc))
        reg.sites[(project_pk, s.doc.id)] = s
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM devices"):
        d = DeviceRec(pk, project_pk, Device.model_validate_json(doc))
        reg.put_device(d)
    for pk, device_pk, doc in conn.execute("SELECT pk, device_pk, doc FROM variables"):
        v = VariableRec(pk, device_pk, Variable.model_validate_json(doc))
        reg.put_variable(v)
    for pk, project_pk, device_pk, variable_pk, set_ in conn.execute(
        "SELECT pk, project_pk, device_pk, variable_pk, set_ FROM series"
    ):
        dev, var = reg.devices_by_pk[device_pk], reg.variables_by_pk[variable_pk]
        reg.add_series(
            SeriesRec(
                pk,
                project_pk,
                device_pk,
                variable_pk,
                set_,
                dev.doc.id,
                var.doc.id,
                series_prefix(dev.doc.id, var.doc.id, set_),
            )
        )
    for pk, id_, name, home in conn.execute("SELECT pk, id, name, home_project_pk FROM accounts"):
        a = AccountRec(pk, id_, name, home)
        reg.accounts[id_] = a
        reg.accounts_by_pk[pk] = a
    for account_pk, project_pk, role in conn.execute(
        "SELECT account_pk, project_pk, role FROM roles"
    ):
        reg.accounts_by_pk[account_pk].roles[project_pk] = role
    for key_id, account_pk, hash_ in conn.execute(
        "SELECT key_id, account_pk, hash FROM account_keys"
    ):
        reg.accounts_by_pk[account_pk].keys[key_id] = hash_
        reg.key_owner[key_id] = account_pk
    reg.bump()


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


def _returned(cur: Any) -> int:
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _insert(tx: Tx, table: str, parent: str, parent_pk: int, id_: str, doc: BaseModel) -> int:
    cur = tx.execute(
        f"INSERT INTO {table} ({parent}, id, doc) VALUES (%s, %s, %s) RETURNING pk",
        (parent_pk, id_, doc.model_dump_json()),
    )
    return _returned(cur)


# -- projects -----------------------------------------------------------------------------------


def create_projects(
    tx: Tx, reg: Registry, items: list[ProjectIn], *, skip_existing: bool, admin_account: int | None
) -> list[Project]:
    def create(i: int, it: ProjectIn, id_: str) -> Project:
        doc = Project(
            **{**it.model_dump(), "id": id_, "name": it.name or id_, "created_at": now_iso()}
        )
        cur = tx.execute(
            "INSERT INTO projects (id, doc) VALUES (%s, %s) RETURNING pk",
            (id_, doc.model_dump_json()),
        )
        rec = ProjectRec(_returned(cur), doc)

        def add() -> None:
            reg.projects[rec.doc.id] = rec
            reg.projects_by_pk[rec.pk] = rec
            if admin_account is not None:
                reg.accounts_by_pk[admin_account].roles[rec.pk] = "admin"
            reg.bump()

        if admin_account is not None:
            tx.execute("INSERT INTO roles VALUES (%s, %s, 'admin')", (admin_account, rec.pk))
        tx.after_commit.append(add)
        return doc

    ids = [it.id or new_id("p") for it in items]
    return _create_all(items, ids, "project", reg.projects.get, create, skip_existing=skip_existing)


def update_project(tx: Tx, reg: Registry, rec: ProjectRec, patch: dict[str, Any]) -> Project:
    patch.pop("id", None)
    doc = _merge(Project, rec.doc, patch)
    tx.execute("UPDATE projects SET doc = %s WHERE pk = %s", (doc.model_dump_json(), rec.pk))
    tx.after_commit.append(_set_doc(reg, rec, doc))
    return doc


def delete_project(tx: Tx, reg: Registry, rec: ProjectRec) -> None:
    tx.execute("DELETE FROM series WHERE project_pk = %s", (rec.pk,))
    tx.execute("DELETE FROM projects WHERE pk = %s", (rec.pk,))
    homeless = [a for a in reg.accounts_by_pk.values() if a.home_project_pk == rec.pk]

    def drop() -> None:
        reg.drop_project(rec)
        for a in homeless:
            _forget_account(reg, a)
        reg.bump()

    tx.after_commit.append(drop)


# -- sites --------------------------------------------------------------------------------------


def create_sites(
    tx: Tx, reg: Registry, project: ProjectRec, items: list[SiteIn], *, skip_existing: bool
) -> list[Site]:
    def create(i: int, it: SiteIn, id_: str) -> Site:
        doc = Site(
            **{**it.model_dump(), "id": id_, "name": it.name or id_, "project": project.doc.id}
        )
        rec = SiteRec(_insert(tx, "sites", "project_pk", project.pk, id_, doc), project.pk, doc)
        tx.after_commit.append(functools.partial(reg.sites.__setitem__, (project.pk, id_), rec))
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
    tx.after_commit.append(reg.bump)
    return docs


def update_site(tx: Tx, reg: Registry, rec: SiteRec, patch: dict[str, Any]) -> Site:
    patch.pop("id", None)
    doc = _merge(Site, rec.doc, patch)
    tx.execute("UPDATE sites SET doc = %s WHERE pk = %s", (doc.model_dump_json(), rec.pk))
    tx.after_commit.append(_set_doc(reg, rec, doc))
    return doc


def delete_site(tx: Tx, reg: Registry, rec: SiteRec) -> None:
    users = sorted(
        d.doc.id
        for d in reg.devices_by_pk.values()
        if d.project_pk == rec.project_pk and d.doc.site == rec.doc.id
    )
    if users:
        raise Conflict(
            f"site {rec.doc.id!r} has devices; move or delete them first",
            [{"field": "devices", "reason": ", ".join(users[:20])}],
        )
    tx.execute("DELETE FROM sites WHERE pk = %s", (rec.pk,))
    tx.after_commit.append(
        _then_bump(reg, lambda: reg.sites.pop((rec.project_pk, rec.doc.id), None))
    )


# -- devices and variables ----------------------------------------------------------------------


def _check_site(reg: Registry, project: ProjectRec, site: str | None, index: int | None) -> None:
    if site is not None and (project.pk, site) not in reg.sites:
        detail: dict[str, Any] = {"field": "site", "reason": f"no site {site!r} in this project"}
        if index is not None:
            detail["index"] = index
        raise Invalid(f"unknown site {site!r}", [detail])


def create_devices(
    tx: Tx, reg: Registry, project: ProjectRec, items: list[DeviceIn], *, skip_existing: bool
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
        rec = DeviceRec(_insert(tx, "devices", "project_pk", project.pk, id_, doc), project.pk, doc)
        tx.after_commit.append(functools.partial(reg.put_device, rec))
        if it.variables:
            create_variables(tx, reg, project, rec, it.variables, skip_existing=False, index=i)
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
    tx.after_commit.append(reg.bump)
    return docs


def update_device(
    tx: Tx, reg: Registry, project: ProjectRec, rec: DeviceRec, patch: dict[str, Any]
) -> Device:
    patch.pop("id", None)
    if "variables" in patch:
        raise Invalid(
            "variables are changed through the device's variables collection",
            [{"field": "variables", "reason": "not allowed in an update"}],
        )
    if "site" in patch:
        _check_site(reg, project, patch["site"], None)
    doc = _merge(Device, rec.doc, patch)
    tx.execute("UPDATE devices SET doc = %s WHERE pk = %s", (doc.model_dump_json(), rec.pk))
    tx.after_commit.append(_then_bump(reg, functools.partial(reg.put_device, rec, doc)))
    return doc


def delete_device(tx: Tx, reg: Registry, rec: DeviceRec) -> None:
    tx.execute("DELETE FROM series WHERE device_pk = %s", (rec.pk,))
    tx.execute("DELETE FROM devices WHERE pk = %s", (rec.pk,))
    tx.after_commit.append(_then_bump(reg, lambda: reg.drop_device(rec)))


def create_variables(
    tx: Tx,
    reg: Registry,
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
            bad.append({"index": i, "field": "name", "reason": "a variable needs a name or an id"})
            id_ = ""
        ids.append(id_)
    if bad:
        raise Invalid(
            "variable without a name",
            bad if index is None else [{"index": index, "field": "variables", "reason": str(bad)}],
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
            rec = VariableRec(0, device.pk, doc)  # checks the unit against the catalog
        except Invalid as exc:
            where = {"index": i} if index is None else {"index": index, "variable": i}
            raise Invalid(exc.message, [{**d, **where} for d in exc.details]) from exc
        if doc.unit is None and rec.entry.unit != "dimensionless":
            doc = doc.model_copy(update={"unit": rec.entry.unit})
            rec.doc = doc
        rec.pk = _insert(tx, "variables", "device_pk", device.pk, id_, doc)
        tx.after_commit.append(functools.partial(reg.put_variable, rec))
        return doc

    docs = _create_all(
        items,
        ids,
        "variable",
        lambda id_: reg.variables.get((device.pk, id_)),
        create,
        skip_existing=skip_existing,
    )
    tx.after_commit.append(reg.bump)
    return docs


def update_variable(tx: Tx, reg: Registry, rec: VariableRec, patch: dict[str, Any]) -> Variable:
    patch.pop("id", None)
    if "set" in patch and patch["set"] != rec.doc.set:
        raise Invalid(
            "a variable's set cannot change once created",
            [{"field": "set", "reason": "create another variable for another set"}],
        )
    doc = _merge(Variable, rec.doc, patch)
    checked = VariableRec(rec.pk, rec.device_pk, doc)  # a new unit must suit the catalog entry
    if checked.entry.unit != rec.entry.unit:
        raise Invalid(
            "a variable's unit may change only within its canonical unit's dimension",
            [{"field": "unit", "reason": f"stored in {rec.entry.unit!r}"}],
        )
    tx.execute("UPDATE variables SET doc = %s WHERE pk = %s", (doc.model_dump_json(), rec.pk))

    def replace() -> None:
        reg.put_variable(checked)
        reg.refresh_limits(checked)
        reg.bump()

    tx.after_commit.append(replace)
    return doc


def delete_variable(tx: Tx, reg: Registry, rec: VariableRec) -> None:
    tx.execute("DELETE FROM series WHERE variable_pk = %s", (rec.pk,))
    tx.execute("DELETE FROM variables WHERE pk = %s", (rec.pk,))
    tx.after_commit.append(_then_bump(reg, lambda: reg.drop_variable(rec)))


# -- service accounts, keys, roles --------------------------------------------------------------


def create_account(
    tx: Tx, reg: Registry, project: ProjectRec, id_: str, name: str, role: Role
) -> AccountRec:
    if id_ in reg.accounts:
        raise Conflict(
            f"service account {id_!r} exists",
            [{"field": "id", "reason": "ids are unique in the deployment"}],
        )
    # Never a pk a deleted account had (SQLite's max(pk) + 1 would give one): what is keyed by
    # it (the DT face's account settings, cached) must not pass to a new account.
    (pk,) = one(
        tx.execute(
            "SELECT greatest(coalesce((SELECT max(pk) FROM accounts), 0),"
            " coalesce((SELECT value FROM state WHERE key = 'account_seq'), 0)) + 1"
        )
    )
    tx.execute(
        "INSERT INTO state VALUES ('account_seq', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (pk,),
    )
    tx.execute(
        "INSERT INTO accounts (pk, id, name, home_project_pk) VALUES (%s, %s, %s, %s)",
        (pk, id_, name, project.pk),
    )
    tx.execute("INSERT INTO roles VALUES (%s, %s, %s)", (pk, project.pk, role))
    rec = AccountRec(pk, id_, name, project.pk, {project.pk: role})

    def add() -> None:
        reg.accounts[id_] = rec
        reg.accounts_by_pk[pk] = rec
        reg.bump()

    tx.after_commit.append(add)
    return rec


def rename_account(tx: Tx, reg: Registry, rec: AccountRec, name: str) -> None:
    tx.execute("UPDATE accounts SET name = %s WHERE pk = %s", (name, rec.pk))
    tx.after_commit.append(lambda: setattr(rec, "name", name))


def set_role(tx: Tx, reg: Registry, rec: AccountRec, project_pk: int, role: Role | None) -> None:
    if role is None:
        tx.execute(
            "DELETE FROM roles WHERE account_pk = %s AND project_pk = %s", (rec.pk, project_pk)
        )
        tx.after_commit.append(lambda: rec.roles.pop(project_pk, None) and None)
    else:
        tx.execute(
            "INSERT INTO roles VALUES (%s, %s, %s) "
            "ON CONFLICT (account_pk, project_pk) DO UPDATE SET role = excluded.role",
            (rec.pk, project_pk, role),
        )
        tx.after_commit.append(lambda: rec.roles.__setitem__(project_pk, role))


def delete_account(tx: Tx, reg: Registry, rec: AccountRec) -> None:
    tx.execute("DELETE FROM accounts WHERE pk = %s", (rec.pk,))
    tx.after_commit.append(lambda: _forget_account(reg, rec))


def _forget_account(reg: Registry, rec: AccountRec) -> None:
    reg.accounts.pop(rec.id, None)
    reg.accounts_by_pk.pop(rec.pk, None)
    for key_id in rec.keys:
        reg.key_owner.pop(key_id, None)
    reg.bump()


def add_key(
    tx: Tx, reg: Registry, rec: AccountRec, key_id: str, hash_: str, created_at: str
) -> None:
    tx.execute(
        "INSERT INTO account_keys VALUES (%s, %s, %s, %s)", (key_id, rec.pk, hash_, created_at)
    )

    def add() -> None:
        rec.keys[key_id] = hash_
        reg.key_owner[key_id] = rec.pk

    tx.after_commit.append(add)


def delete_key(tx: Tx, reg: Registry, rec: AccountRec, key_id: str) -> None:
    if key_id not in rec.keys:
        raise NotFound(f"no key {key_id!r} on service account {rec.id!r}")
    tx.execute("DELETE FROM account_keys WHERE key_id = %s", (key_id,))

    def drop() -> None:
        rec.keys.pop(key_id, None)
        reg.key_owner.pop(key_id, None)

    tx.after_commit.append(drop)


def key_created(conn: Conn, account_pk: int) -> list[tuple[str, str]]:
    return [
        (k, c)
        for k, c in conn.execute(
            "SELECT key_id, created_at FROM account_keys WHERE account_pk = %s ORDER BY key_id",
            (account_pk,),
        )
    ]
