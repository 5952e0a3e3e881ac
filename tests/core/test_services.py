"""The engine's services (``core/services/``) through a real Engine on a temporary directory:
metadata and accounts as every face calls them, and the one list-and-page helper."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import streamgauge
from streamgauge.auth import Action, Principal
from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.core.registry import AccountRec, ProjectRec
from streamgauge.core.services import page
from streamgauge.domain.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from streamgauge.domain.model import DeviceIn, ProjectIn, SiteIn, VariableIn, now_iso

ADMIN = Principal(None)


async def open_engine(data: Path, **kw: Any) -> Engine:
    e = Engine(Settings(data=data, delivery_poll_seconds=3600, **kw), "token")
    await e.start()
    return e


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    e = await open_engine(tmp_path / "data")
    try:
        yield e
    finally:
        await e.stop()


async def project(engine: Engine, id_: str = "p1") -> ProjectRec:
    await engine.metadata.create_projects(ADMIN, [ProjectIn(id=id_)])
    return engine.metadata.project(ADMIN, id_, Action.READ)


async def account(engine: Engine, p: ProjectRec, id_: str, role: Any = "user") -> AccountRec:
    return await engine.accounts.create(p, id=id_, role=role)


# -- paging -------------------------------------------------------------------------------------


def test_page_is_in_key_order_and_names_the_last_key_when_more_follow() -> None:
    items = [("c", 3), ("a", 1), ("d", 4), ("b", 2)]
    first = page(items, 2)
    assert first.items == [1, 2] and first.next_key == "b" and first.more
    second = page(items, 2, after=first.next_key)
    assert second.items == [3, 4] and second.next_key is None and not second.more
    assert page(items, 10).next_key is None
    assert page(items, 2, skip=1).items == [2, 3]
    assert page(items, 2, skip=3).items == [4] and not page(items, 2, skip=3).more
    assert page([], 5).items == [] and page(items, 3, after="z").items == []


# -- now_iso ------------------------------------------------------------------------------------


def test_now_iso_is_utc_whole_seconds() -> None:
    stamp = now_iso()
    assert stamp.endswith("Z") and len(stamp) == len("2026-01-02T03:04:05Z")


# -- projects -----------------------------------------------------------------------------------


async def test_project_lookup_applies_the_permission_table(engine: Engine) -> None:
    p = await project(engine)
    await project(engine, "other")
    user = Principal(await account(engine, p, "u1"))
    assert engine.metadata.project(user, "p1", Action.READ).pk == p.pk
    with pytest.raises(Forbidden):
        engine.metadata.project(user, "p1", Action.WRITE)
    with pytest.raises(NotFound):  # no role there: it does not exist for them
        engine.metadata.project(user, "other", Action.READ)
    with pytest.raises(NotFound):
        engine.metadata.project(ADMIN, "nope", Action.READ)
    assert [r.doc.id for r in engine.metadata.visible_projects(user)] == ["p1"]
    assert {r.doc.id for r in engine.metadata.visible_projects(ADMIN)} == {"p1", "other"}


async def test_a_service_account_that_creates_a_project_becomes_its_admin(engine: Engine) -> None:
    home = await project(engine)
    a = await account(engine, home, "maker")
    docs = await engine.metadata.create_projects(Principal(a), [ProjectIn(id="mine", name="M")])
    assert docs[0].id == "mine" and docs[0].name == "M" and docs[0].created_at
    mine = engine.registry.projects["mine"]
    assert a.roles[mine.pk] == "admin"


async def test_admin_only_project_create(tmp_path: Path) -> None:
    e = await open_engine(tmp_path / "data", admin_only_project_create=True)
    try:
        home = await project(e)
        a = await account(e, home, "maker", "admin")
        with pytest.raises(Forbidden):
            await e.metadata.create_projects(Principal(a), [ProjectIn(id="x")])
        assert "x" not in e.registry.projects
    finally:
        await e.stop()


async def test_create_projects_is_all_or_nothing_and_skip_returns_the_existing(
    engine: Engine,
) -> None:
    await engine.metadata.create_projects(ADMIN, [ProjectIn(id="a", description="old")])
    with pytest.raises(Conflict) as err:
        await engine.metadata.create_projects(ADMIN, [ProjectIn(id="b"), ProjectIn(id="a")])
    assert err.value.details[0]["index"] == 1
    assert "b" not in engine.registry.projects
    docs = await engine.metadata.create_projects(
        ADMIN, [ProjectIn(id="a", description="new"), ProjectIn(id="b")], if_exists="skip"
    )
    assert [d.description for d in docs] == ["old", ""]
    assert "b" in engine.registry.projects


async def test_skip_never_passes_over_a_project_the_caller_cannot_see(engine: Engine) -> None:
    home = await project(engine)
    await project(engine, "secret")
    a = Principal(await account(engine, home, "sa"))
    with pytest.raises(NotFound):
        await engine.metadata.create_projects(a, [ProjectIn(id="secret")], if_exists="skip")


async def test_update_and_delete_project(engine: Engine) -> None:
    p = await project(engine)
    gone: list[int] = []
    engine.metadata.project_deleted.append(gone.append)
    doc = await engine.metadata.update_project(p, {"description": "d", "id": "ignored"})
    assert doc.id == "p1" and doc.description == "d"
    assert engine.registry.projects["p1"].doc.description == "d"
    await engine.metadata.delete_project(p)
    assert "p1" not in engine.registry.projects and gone == [p.pk]


# -- sites, devices, variables ------------------------------------------------------------------


async def test_sites_devices_and_variables(engine: Engine) -> None:
    p = await project(engine)
    sites = await engine.metadata.create_sites(p, [SiteIn(id="s1"), SiteIn(id="s2", name="Two")])
    assert [(s.id, s.name, s.project) for s in sites] == [("s1", "s1", "p1"), ("s2", "Two", "p1")]
    devices = await engine.metadata.create_devices(
        p,
        [
            DeviceIn(id="d1", site="s1", type="gauge", variables=[VariableIn(name="stage")]),
            DeviceIn(id="d2", site="s2", type="rain"),
        ],
    )
    assert [d.id for d in devices] == ["d1", "d2"]
    assert sorted(s.doc.id for s in engine.metadata.sites(p)) == ["s1", "s2"]
    assert [d.doc.id for d in engine.metadata.devices(p, site="s1")] == ["d1"]
    assert [d.doc.id for d in engine.metadata.devices(p, type="rain")] == ["d2"]
    assert len(engine.metadata.devices(p)) == 2
    d1 = engine.registry.devices[(p.pk, "d1")]
    assert [v.doc.id for v in engine.metadata.variables(d1)] == ["stage"]

    # all or nothing: an unknown site names its item, and nothing of the request is created
    with pytest.raises(Invalid) as err:
        await engine.metadata.create_devices(p, [DeviceIn(id="d3"), DeviceIn(id="d4", site="x")])
    assert err.value.details[0]["index"] == 1
    assert (p.pk, "d3") not in engine.registry.devices

    vs = await engine.metadata.create_variables(
        p, d1, [VariableIn(name="stage"), VariableIn(name="flow")], if_exists="skip"
    )
    assert [v.id for v in vs] == ["stage", "flow"]
    with pytest.raises(Conflict):
        await engine.metadata.create_variables(p, d1, [VariableIn(name="flow")])

    site = engine.registry.sites[(p.pk, "s1")]
    with pytest.raises(Conflict):  # a device stands at it
        await engine.metadata.delete_site(site)
    assert (await engine.metadata.update_site(site, {"name": "One"})).name == "One"

    d2 = engine.registry.devices[(p.pk, "d2")]
    docs = await engine.metadata.update_devices(
        p, [(d1, {"labels": {"a": "1"}}), (d2, {"site": None})]
    )
    assert docs[0].labels == {"a": "1"} and docs[1].site is None
    assert engine.registry.devices[(p.pk, "d2")].doc.site is None
    with pytest.raises(Invalid):  # all or nothing: the first change is not applied either
        await engine.metadata.update_devices(
            p, [(d1, {"labels": {"b": "2"}}), (d2, {"site": "nowhere"})]
        )
    assert engine.registry.devices[(p.pk, "d1")].doc.labels == {"a": "1"}

    flow = engine.registry.variables[(d1.pk, "flow")]
    assert (await engine.metadata.update_variable(flow, {"name": "Flow"})).name == "Flow"
    await engine.metadata.delete_variable(flow)
    assert (d1.pk, "flow") not in engine.registry.variables
    await engine.metadata.delete_device(d1)
    assert (p.pk, "d1") not in engine.registry.devices
    await engine.metadata.delete_site(site)
    assert (p.pk, "s1") not in engine.registry.sites


async def test_metadata_survives_a_restart(tmp_path: Path) -> None:
    e = await open_engine(tmp_path / "data")
    p = await project(e)
    await e.metadata.create_devices(p, [DeviceIn(id="d1", variables=[VariableIn(name="t")])])
    await e.stop()
    e = await open_engine(tmp_path / "data")
    try:
        p = e.metadata.project(ADMIN, "p1", Action.READ)
        (d1,) = e.metadata.devices(p)
        assert [v.doc.id for v in e.metadata.variables(d1)] == ["t"]
    finally:
        await e.stop()


# -- accounts -----------------------------------------------------------------------------------


async def test_accounts_create_read_update_delete(engine: Engine) -> None:
    p = await project(engine)
    other = await project(engine, "p2")
    a = await engine.accounts.create(p, id="sa1", name="One", role="manager")
    b = await engine.accounts.create(p)  # generated id, name defaults to it
    assert b.id.startswith("sa") and b.name == b.id and b.roles == {p.pk: "user"}
    with pytest.raises(Conflict):
        await engine.accounts.create(other, id="sa1")
    assert engine.accounts.get(p, "sa1") is a and engine.accounts.find("sa1") is a
    with pytest.raises(NotFound):  # its home is p1
        engine.accounts.get(other, "sa1")
    assert [x.id for x in engine.accounts.of_project(p)] == sorted(["sa1", b.id])
    doc = engine.accounts.document(a)
    assert (doc.id, doc.name, doc.project, doc.roles) == ("sa1", "One", "p1", {"p1": "manager"})

    await engine.accounts.update(ADMIN, p, a, name="Uno", role="user")
    assert a.name == "Uno" and a.roles[p.pk] == "user"
    await engine.accounts.set_role(ADMIN, other, a, "manager")
    assert engine.accounts.document(a).roles == {"p1": "user", "p2": "manager"}
    assert engine.accounts.roles(other) == [("sa1", "manager")]
    await engine.accounts.set_role(ADMIN, other, a, None)
    assert engine.accounts.roles(other) == []

    await engine.accounts.delete(a)
    assert engine.accounts.find("sa1") is None


async def test_role_changes_follow_the_one_rule(engine: Engine) -> None:
    p = await project(engine)
    admin = await account(engine, p, "adm", "admin")
    manager = await account(engine, p, "mgr", "manager")
    user = await account(engine, p, "usr")
    with pytest.raises(Forbidden):  # nobody changes their own role
        await engine.accounts.set_role(Principal(admin), p, admin, "user")
    with pytest.raises(Forbidden):  # a manager may not grant admin
        await engine.accounts.set_role(Principal(manager), p, user, "admin")
    with pytest.raises(Forbidden) as err:  # ... on any path, naming the face's field
        await engine.accounts.update(
            Principal(manager), p, user, name="x", role="admin", field="role_name"
        )
    assert err.value.details[0]["field"] == "role_name"
    assert user.name == "usr"  # nothing of the refused update was written
    with pytest.raises(Forbidden):  # a manager may not revoke
        await engine.accounts.set_role(Principal(manager), p, user, None)
    await engine.accounts.set_role(Principal(manager), p, user, "manager")
    assert user.roles[p.pk] == "manager"
    await engine.accounts.set_role(Principal(admin), p, user, None)
    assert p.pk not in user.roles
    await engine.accounts.update(Principal(admin), p, manager, name="renamed")  # no role: no rule
    assert manager.name == "renamed"


async def test_also_runs_in_the_same_transaction(engine: Engine) -> None:
    p = await project(engine)
    seen: list[str] = []

    def fail(tx: Any, rec: AccountRec) -> None:
        seen.append(rec.id)
        raise Invalid("the face's own write failed")

    with pytest.raises(Invalid):
        await engine.accounts.create(p, id="sa1", also=fail)
    assert seen == ["sa1"] and engine.accounts.find("sa1") is None  # rolled back together

    a = await engine.accounts.create(p, id="sa2", also=lambda tx, rec: seen.append(rec.id))
    with pytest.raises(Invalid):
        await engine.accounts.update(ADMIN, p, a, name="new", also=fail)
    assert a.name == "sa2"
    assert seen == ["sa1", "sa2", "sa2"]


async def test_keys(engine: Engine) -> None:
    p = await project(engine)
    a = await account(engine, p, "sa1")
    key = await engine.accounts.create_key(a)
    assert key.secret and key.created_at.endswith("Z")
    who = await engine.auth.key_async(key.key_id, key.secret)
    assert who.account is a
    assert [k.key_id for k in await engine.accounts.keys(a)] == [key.key_id]
    await engine.accounts.delete_key(a, key.key_id)
    assert await engine.accounts.keys(a) == []
    with pytest.raises(Unauthorized):
        await engine.auth.key_async(key.key_id, key.secret)
    with pytest.raises(NotFound):
        await engine.accounts.delete_key(a, key.key_id)


# -- the faces call the services, not the store -------------------------------------------------

SWITCHED = [
    "faces/native/resources.py",
    "faces/native/accounts.py",
    "faces/native/deps.py",
    "faces/native/channels.py",
    "faces/tapis/resources.py",
    "faces/tapis/roles.py",
    "faces/tapis/channels.py",
    "faces/dt/devices.py",
    "faces/dt/accounts.py",
]


@pytest.mark.parametrize("module", SWITCHED)
def test_faces_write_metadata_through_the_services_only(module: str) -> None:
    """No face module switched to the services imports the store's metadata writes or the
    SQLite store (its ``Tx``), at run time or for typing."""
    source = Path(streamgauge.__file__).parent / module
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not imported & {"streamgauge.store.sqlite.metadata", "streamgauge.store.sqlite.store"}
