"""Metadata changes in PostgreSQL (the twin of ``store/sqlite/metadata.py``: the same checks and
events, PostgreSQL's SQL), run inside the writer's transaction; their events; the loader.

Each function checks (against the registry, read through ``domain.readmodel.ReadModel``),
writes, and appends the change's events (``domain/events.py``) to the transaction. The writer
stores them in the same transaction (``write_events``: the ``meta_events`` table) and hands them
to the registry only after the commit, so the registry never shows what did not commit and a
failed transaction leaves no event. Bulk creates are all-or-nothing and name each bad item by
its index. With ``skip_existing`` an item whose id exists is left as it is and returned
unchanged.

``meta_events`` is the change feed since the table was created (schema 2): sequence number,
commit time, kind, payload (``events.encode``). It is bounded: each write of events deletes
those older than ``EVENT_RETENTION_MS`` and those more than ``EVENT_KEEP_MAX`` behind. It is not
what a store opens from: ``load`` reads the tables themselves (as events, which the registry
applies); the feed is for what follows a running node's changes (the cluster mode's bus, a node
catching up after a short outage; one further behind reloads from the tables). Sequence numbers
are gapless and commit-ordered across the nodes: every write transaction holds the store's log
lock, and ``write_events`` numbers from ``state.events_head`` (a counter row, not a sequence: a
sequence leaves gaps when a transaction rolls back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

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
from streamgauge.domain.readmodel import ReadModel, Tables
from streamgauge.domain.records import AccountRec, DeviceRec, ProjectRec, SiteRec, VariableRec
from streamgauge.store.postgres.conn import Conn, Tx, one

EVENT_RETENTION_MS = 3_600_000  # meta_events keeps the last hour of changes ...
EVENT_KEEP_MAX = 100_000  # ... and at most this many (a network's first ingest adds a series each)

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


def load(conn: Conn) -> Iterator[ev.MetaEvent]:
    """What the tables hold, as the events that build it from nothing (on open: the store
    hands each to its registry's ``apply``)."""
    for pk, doc in conn.execute("SELECT pk, doc FROM projects"):
        yield ev.ProjectPut(pk, Project.model_validate_json(doc))
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM sites"):
        yield ev.SitePut(pk, project_pk, Site.model_validate_json(doc))
    for pk, project_pk, doc in conn.execute("SELECT pk, project_pk, doc FROM devices"):
        yield ev.DevicePut(pk, project_pk, Device.model_validate_json(doc))
    for pk, device_pk, doc in conn.execute("SELECT pk, device_pk, doc FROM variables"):
        yield ev.VariablePut(pk, device_pk, Variable.model_validate_json(doc))
    for row in conn.execute(
        "SELECT s.pk, s.project_pk, s.device_pk, s.variable_pk, s.set_, d.id, v.id "
        "FROM series s JOIN devices d ON d.pk = s.device_pk "
        "JOIN variables v ON v.pk = s.variable_pk"
    ):
        yield ev.SeriesAdded(*row)
    yield from _account_events(conn)


def load_tables(conn: Conn) -> Tables:
    """What the tables hold, in a few big reads, for ``ReadModel.load`` (on open: the same
    registry as ``load``'s events build, without an object per row on the way)."""
    t = Tables()
    t.projects = [
        ev.ProjectPut(pk, Project.model_validate_json(doc))
        for pk, doc in conn.execute("SELECT pk, doc FROM projects")
    ]
    t.sites = [tuple(r) for r in conn.execute("SELECT pk, project_pk, doc FROM sites")]
    t.devices = [tuple(r) for r in conn.execute("SELECT pk, project_pk, doc FROM devices")]
    t.variables = [tuple(r) for r in conn.execute("SELECT pk, device_pk, doc FROM variables")]
    t.series = [
        tuple(r)
        for r in conn.execute("SELECT pk, project_pk, device_pk, variable_pk, set_ FROM series")
    ]
    t.accounts = list(_account_events(conn))
    return t


def _account_events(conn: Conn) -> Iterator[ev.MetaEvent]:
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


def write_events(tx: Tx, events: Sequence[ev.MetaEvent], now_ms: int) -> int:
    """Store a transaction's events in it, in order, numbered after ``state.events_head`` (the
    caller holds the log lock), and drop those past the retention. Returns the last event's
    sequence number (the events are ``last - len(events) + 1 .. last``)."""
    (head,) = one(tx.execute("SELECT value FROM state WHERE key = 'events_head' FOR UPDATE"))
    first = int(head) + 1
    tx.execute(
        "INSERT INTO meta_events (seq, time, kind, payload) "
        "SELECT %s + i - 1, %s, k, p FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY"
        " AS e(k, p, i)",
        (first, now_ms, [ev.kind(e) for e in events], [ev.encode(e).decode() for e in events]),
    )
    last = first + len(events) - 1
    tx.execute("UPDATE state SET value = %s WHERE key = 'events_head'", (last,))
    tx.execute(
        "DELETE FROM meta_events WHERE time < %s OR seq <= %s",
        (now_ms - EVENT_RETENTION_MS, last - EVENT_KEEP_MAX),
    )
    return last


def read_events(
    conn: Conn, after: int = 0, upto: int | None = None, limit: int = -1
) -> list[tuple[int, ev.MetaEvent]]:
    """(sequence number, event) of the stored events after ``after`` (up to ``upto``), in
    order, at most ``limit`` (all if negative)."""
    return [
        (int(seq), ev.decode(payload))
        for seq, payload in conn.execute(
            "SELECT seq, payload FROM meta_events WHERE seq > %s AND seq <= %s ORDER BY seq"
            " LIMIT %s",
            (after, upto if upto is not None else 2**62, None if limit < 0 else limit),
        )
    ]


def events_head(conn: Conn) -> int:
    """The last event's sequence number (0: none yet)."""
    row = conn.execute("SELECT value FROM state WHERE key = 'events_head'").fetchone()
    return int(row[0]) if row else 0


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


def _insert(tx: Tx, table: str, parent: str, parent_pk: int, id_: str, doc: BaseModel) -> int:
    cur = tx.execute(
        f"INSERT INTO {table} ({parent}, id, doc) VALUES (%s, %s, %s) RETURNING pk",
        (parent_pk, id_, doc.model_dump_json()),
    )
    return int(one(cur)[0])


# -- projects -----------------------------------------------------------------------------------


def create_projects(
    tx: Tx,
    reg: ReadModel,
    items: list[ProjectIn],
    *,
    skip_existing: bool,
    admin_account: int | None,
) -> list[Project]:
    def create(i: int, it: ProjectIn, id_: str) -> Project:
        doc = Project(
            **{**it.model_dump(), "id": id_, "name": it.name or id_, "created_at": now_iso()}
        )
        cur = tx.execute(
            "INSERT INTO projects (id, doc) VALUES (%s, %s) RETURNING pk",
            (id_, doc.model_dump_json()),
        )
        pk = int(one(cur)[0])
        tx.events.append(ev.ProjectPut(pk, doc))
        if admin_account is not None:
            tx.execute("INSERT INTO roles VALUES (%s, %s, 'admin')", (admin_account, pk))
            tx.events.append(ev.RolePut(admin_account, pk, "admin"))
        return doc

    ids = [it.id or new_id("p") for it in items]
    return _create_all(items, ids, "project", reg.projects.get, create, skip_existing=skip_existing)


def update_project(tx: Tx, reg: ReadModel, rec: ProjectRec, patch: dict[str, Any]) -> Project:
    patch.pop("id", None)
    doc = _merge(Project, rec.doc, patch)
    tx.execute("UPDATE projects SET doc = %s WHERE pk = %s", (doc.model_dump_json(), rec.pk))
    tx.events.append(ev.ProjectPut(rec.pk, doc))
    return doc


def delete_project(tx: Tx, reg: ReadModel, rec: ProjectRec) -> None:
    tx.execute("DELETE FROM series WHERE project_pk = %s", (rec.pk,))
    tx.execute("DELETE FROM projects WHERE pk = %s", (rec.pk,))
    tx.events.append(ev.ProjectDropped(rec.pk))  # cascades as the tables do (domain/events.py)


# -- sites --------------------------------------------------------------------------------------


def create_sites(
    tx: Tx, reg: ReadModel, project: ProjectRec, items: list[SiteIn], *, skip_existing: bool
) -> list[Site]:
    def create(i: int, it: SiteIn, id_: str) -> Site:
        doc = Site(
            **{**it.model_dump(), "id": id_, "name": it.name or id_, "project": project.doc.id}
        )
        pk = _insert(tx, "sites", "project_pk", project.pk, id_, doc)
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


def update_site(tx: Tx, reg: ReadModel, rec: SiteRec, patch: dict[str, Any]) -> Site:
    patch.pop("id", None)
    doc = _merge(Site, rec.doc, patch)
    tx.execute("UPDATE sites SET doc = %s WHERE pk = %s", (doc.model_dump_json(), rec.pk))
    tx.events.append(ev.SitePut(rec.pk, rec.project_pk, doc))
    return doc


def delete_site(tx: Tx, reg: ReadModel, rec: SiteRec) -> None:
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
    tx.execute("DELETE FROM sites WHERE pk = %s", (rec.pk,))
    tx.events.append(ev.SiteDropped(rec.pk, rec.project_pk, rec.doc.id))


# -- devices and variables ----------------------------------------------------------------------


def _check_site(reg: ReadModel, project: ProjectRec, site: str | None, index: int | None) -> None:
    if site is not None and (project.pk, site) not in reg.sites:
        detail: dict[str, Any] = {"field": "site", "reason": f"no site {site!r} in this project"}
        if index is not None:
            detail["index"] = index
        raise Invalid(f"unknown site {site!r}", [detail])


def create_devices(
    tx: Tx, reg: ReadModel, project: ProjectRec, items: list[DeviceIn], *, skip_existing: bool
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
        tx.events.append(ev.DevicePut(rec.pk, project.pk, doc))
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
    return docs


def update_device(
    tx: Tx, reg: ReadModel, project: ProjectRec, rec: DeviceRec, patch: dict[str, Any]
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
    tx.events.append(ev.DevicePut(rec.pk, rec.project_pk, doc))
    return doc


def delete_device(tx: Tx, reg: ReadModel, rec: DeviceRec) -> None:
    tx.execute("DELETE FROM series WHERE device_pk = %s", (rec.pk,))
    tx.execute("DELETE FROM devices WHERE pk = %s", (rec.pk,))
    tx.events.append(ev.DeviceDropped(rec.pk))


def create_variables(
    tx: Tx,
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
            entry, _, _ = reg.variable_entry(doc.name, doc.unit)  # the unit suits the catalog
        except Invalid as exc:
            where = {"index": i} if index is None else {"index": index, "variable": i}
            raise Invalid(exc.message, [{**d, **where} for d in exc.details]) from exc
        if doc.unit is None and entry.unit != "dimensionless":
            doc = doc.model_copy(update={"unit": entry.unit})
        pk = _insert(tx, "variables", "device_pk", device.pk, id_, doc)
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


def update_variable(tx: Tx, reg: ReadModel, rec: VariableRec, patch: dict[str, Any]) -> Variable:
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
    tx.execute("UPDATE variables SET doc = %s WHERE pk = %s", (doc.model_dump_json(), rec.pk))
    tx.events.append(ev.VariablePut(rec.pk, rec.device_pk, doc))
    return doc


def delete_variable(tx: Tx, reg: ReadModel, rec: VariableRec) -> None:
    tx.execute("DELETE FROM series WHERE variable_pk = %s", (rec.pk,))
    tx.execute("DELETE FROM variables WHERE pk = %s", (rec.pk,))
    tx.events.append(ev.VariableDropped(rec.pk))


# -- service accounts, keys, roles --------------------------------------------------------------


def create_account(
    tx: Tx, reg: ReadModel, project: ProjectRec, id_: str, name: str, role: Role
) -> AccountRec:
    if id_ in reg.accounts:
        raise Conflict(
            f"service account {id_!r} exists",
            [{"field": "id", "reason": "ids are unique in the deployment"}],
        )
    # Never a pk a deleted account had (max(pk) + 1 would give one): what is keyed by
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
    tx.events += [ev.AccountPut(pk, id_, name, project.pk), ev.RolePut(pk, project.pk, role)]
    # What the account will be once committed (the registry builds its own record from the
    # events): for writes of the same transaction that need its pk.
    return AccountRec(pk, id_, name, project.pk, {project.pk: role})


def rename_account(tx: Tx, reg: ReadModel, rec: AccountRec, name: str) -> None:
    tx.execute("UPDATE accounts SET name = %s WHERE pk = %s", (name, rec.pk))
    tx.events.append(ev.AccountPut(rec.pk, rec.id, name, rec.home_project_pk))


def set_role(tx: Tx, reg: ReadModel, rec: AccountRec, project_pk: int, role: Role | None) -> None:
    if role is None:
        tx.execute(
            "DELETE FROM roles WHERE account_pk = %s AND project_pk = %s", (rec.pk, project_pk)
        )
        tx.events.append(ev.RoleDropped(rec.pk, project_pk))
    else:
        tx.execute(
            "INSERT INTO roles VALUES (%s, %s, %s) "
            "ON CONFLICT (account_pk, project_pk) DO UPDATE SET role = excluded.role",
            (rec.pk, project_pk, role),
        )
        tx.events.append(ev.RolePut(rec.pk, project_pk, role))


def delete_account(tx: Tx, reg: ReadModel, rec: AccountRec) -> None:
    tx.execute("DELETE FROM accounts WHERE pk = %s", (rec.pk,))
    tx.events.append(ev.AccountDropped(rec.pk))


def add_key(
    tx: Tx, reg: ReadModel, rec: AccountRec, key_id: str, hash_: str, created_at: str
) -> None:
    tx.execute(
        "INSERT INTO account_keys VALUES (%s, %s, %s, %s)", (key_id, rec.pk, hash_, created_at)
    )
    tx.events.append(ev.KeyPut(rec.pk, key_id, hash_))


def delete_key(tx: Tx, reg: ReadModel, rec: AccountRec, key_id: str) -> None:
    if key_id not in rec.keys:
        raise NotFound(f"no key {key_id!r} on service account {rec.id!r}")
    tx.execute("DELETE FROM account_keys WHERE key_id = %s", (key_id,))
    tx.events.append(ev.KeyDropped(rec.pk, key_id))


def key_created(conn: Conn, account_pk: int) -> list[tuple[str, str]]:
    return [
        (k, c)
        for k, c in conn.execute(
            "SELECT key_id, created_at FROM account_keys WHERE account_pk = %s ORDER BY key_id",
            (account_pk,),
        )
    ]
