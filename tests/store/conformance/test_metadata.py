"""Metadata as the store persists it: create (bulk, all or nothing), update, delete, accounts,
keys and roles; the registry shows a change only once committed, and a reopen loads exactly
what was committed."""

from __future__ import annotations

from typing import Any

import pytest

from streamgauge.core.registry import Registry
from streamgauge.domain.errors import Conflict, Invalid, NotFound
from streamgauge.domain.model import DeviceIn, ProjectIn, SiteIn, VariableIn
from tests.store.conformance.harness import Harness, cols


def snapshot(reg: Registry) -> dict[str, Any]:
    """What the registry holds of the metadata, by id (pks are the store's to give)."""
    devices = {d.pk: d for d in reg.devices_by_pk.values()}
    return {
        "projects": {p.doc.id: p.doc.model_dump() for p in reg.projects.values()},
        "sites": {s.doc.id: s.doc.model_dump() for s in reg.sites.values()},
        "devices": {d.doc.id: d.doc.model_dump() for d in reg.devices_by_pk.values()},
        "variables": {
            (devices[v.device_pk].doc.id, v.doc.id): v.doc.model_dump()
            for v in reg.variables_by_pk.values()
        },
        "accounts": {
            a.id: (
                a.name,
                reg.projects_by_pk[a.home_project_pk].doc.id,
                {reg.projects_by_pk[p].doc.id: r for p, r in a.roles.items()},
                dict(a.keys),
            )
            for a in reg.accounts.values()
        },
        "key_owner": {k: reg.accounts_by_pk[pk].id for k, pk in reg.key_owner.items()},
    }


async def build(h: Harness) -> None:
    reg = h.store.registry
    md = h.md
    await h.write(
        lambda tx: md.create_projects(
            tx,
            reg,
            [ProjectIn(id="p", description="first"), ProjectIn(id="q")],
            skip_existing=False,
            admin_account=None,
        )
    )
    p = reg.projects["p"]
    await h.write(
        lambda tx: md.create_sites(
            tx, reg, p, [SiteIn(id="s1", lat=1.5, lon=2.5), SiteIn(id="s2")], skip_existing=False
        )
    )
    await h.write(
        lambda tx: md.create_devices(
            tx,
            reg,
            p,
            [
                DeviceIn(
                    id="d0",
                    site="s1",
                    type="met",
                    labels={"k": "v"},
                    variables=[VariableIn(name="t")],
                ),
                DeviceIn(id="d1"),
            ],
            skip_existing=False,
        )
    )
    d1 = reg.devices[(p.pk, "d1")]
    await h.write(
        lambda tx: md.create_variables(
            tx, reg, p, d1, [VariableIn(id="a", unit="m"), VariableIn(id="b")], skip_existing=False
        )
    )


async def test_created_metadata_survives_a_reopen(backend: Harness) -> None:
    await build(backend)
    reg = backend.store.registry
    made = snapshot(reg)
    assert set(made["projects"]) == {"p", "q"}
    assert made["projects"]["p"]["description"] == "first"
    assert set(made["sites"]) == {"s1", "s2"}
    assert made["devices"]["d0"]["site"] == "s1" and made["devices"]["d0"]["labels"] == {"k": "v"}
    assert set(made["variables"]) == {("d0", "t"), ("d1", "a"), ("d1", "b")}
    store = await backend.reopen()
    assert snapshot(store.registry) == made


async def test_bulk_creates_are_all_or_nothing(backend: Harness) -> None:
    await build(backend)
    reg = backend.store.registry
    md = backend.md
    p = reg.projects["p"]
    before = snapshot(reg)
    with pytest.raises(Conflict) as err:  # d0 exists: the new d9 is not created either
        await backend.write(
            lambda tx: md.create_devices(
                tx, reg, p, [DeviceIn(id="d9"), DeviceIn(id="d0")], skip_existing=False
            )
        )
    assert [d["index"] for d in err.value.details] == [1]
    with pytest.raises(Invalid):  # the same id twice in one request
        await backend.write(
            lambda tx: md.create_projects(
                tx,
                reg,
                [ProjectIn(id="z"), ProjectIn(id="z")],
                skip_existing=False,
                admin_account=None,
            )
        )
    with pytest.raises(Invalid):  # an unknown site
        await backend.write(
            lambda tx: md.create_devices(
                tx,
                reg,
                p,
                [DeviceIn(id="d8"), DeviceIn(id="d7", site="nowhere")],
                skip_existing=False,
            )
        )
    assert snapshot(reg) == before
    # skip_existing: the existing item is returned as it is, the new one created
    docs = await backend.write(
        lambda tx: md.create_devices(
            tx, reg, p, [DeviceIn(id="d0", type="other"), DeviceIn(id="d9")], skip_existing=True
        )
    )
    assert [(d.id, d.type) for d in docs] == [("d0", "met"), ("d9", None)]
    store = await backend.reopen()
    assert set(snapshot(store.registry)["devices"]) == {"d0", "d1", "d9"}


async def test_a_failed_transaction_leaves_no_trace(backend: Harness) -> None:
    await build(backend)
    reg = backend.store.registry
    md = backend.md
    before = snapshot(reg)

    def half(tx: Any) -> None:
        md.create_projects(tx, reg, [ProjectIn(id="r")], skip_existing=False, admin_account=None)
        raise RuntimeError("half way")

    with pytest.raises(RuntimeError):
        await backend.write(half)
    assert snapshot(reg) == before
    store = await backend.reopen()
    assert snapshot(store.registry) == before


async def test_updates_are_stored(backend: Harness) -> None:
    await build(backend)
    reg = backend.store.registry
    md = backend.md
    p = reg.projects["p"]
    await backend.write(lambda tx: md.update_project(tx, reg, p, {"description": "changed"}))
    s1 = reg.sites[(p.pk, "s1")]
    await backend.write(lambda tx: md.update_site(tx, reg, s1, {"lat": -3.0}))
    d0 = reg.devices[(p.pk, "d0")]
    await backend.write(lambda tx: md.update_device(tx, reg, p, d0, {"site": "s2", "type": "x"}))
    a = reg.variables[(reg.devices[(p.pk, "d1")].pk, "a")]
    await backend.write(lambda tx: md.update_variable(tx, reg, a, {"metadata": {"note": "x"}}))
    made = snapshot(reg)
    assert made["projects"]["p"]["description"] == "changed"
    assert made["sites"]["s1"]["lat"] == -3.0
    assert (made["devices"]["d0"]["site"], made["devices"]["d0"]["type"]) == ("s2", "x")
    assert made["variables"][("d1", "a")]["metadata"] == {"note": "x"}
    store = await backend.reopen()
    assert snapshot(store.registry) == made


async def test_deletes_are_stored(backend: Harness) -> None:
    await build(backend)
    reg = backend.store.registry
    md = backend.md
    p = reg.projects["p"]
    d1 = reg.devices[(p.pk, "d1")]
    with pytest.raises(Conflict):  # a site with devices stays
        await backend.write(lambda tx: md.delete_site(tx, reg, reg.sites[(p.pk, "s1")]))
    await backend.write(lambda tx: md.delete_site(tx, reg, reg.sites[(p.pk, "s2")]))
    await backend.write(lambda tx: md.delete_variable(tx, reg, reg.variables[(d1.pk, "b")]))
    await backend.write(lambda tx: md.delete_device(tx, reg, reg.devices[(p.pk, "d0")]))
    await backend.write(lambda tx: md.delete_project(tx, reg, reg.projects["q"]))
    made = snapshot(reg)
    assert set(made["projects"]) == {"p"} and set(made["sites"]) == {"s1"}
    assert set(made["devices"]) == {"d1"} and set(made["variables"]) == {("d1", "a")}
    store = await backend.reopen()
    assert snapshot(store.registry) == made


async def test_a_deleted_variables_rows_stay_in_the_log_and_its_series_pk_is_not_reused(
    backend: Harness,
) -> None:
    await build(backend)
    store = backend.store
    reg = store.registry
    md = backend.md
    p = reg.projects["p"]
    d1 = reg.devices[(p.pk, "d1")]
    b = reg.variables[(d1.pk, "b")]
    await store.append(cols(p.pk, [b.pk], [1000], [1.0]))
    old = reg.series[(b.pk, 1)]
    await backend.write(lambda tx: md.delete_variable(tx, reg, b))
    store = await backend.reopen()
    reg = store.registry
    log = await store.read_log(0, store.head, 10)
    assert log.series.tolist() == [old]
    await backend.write(
        lambda tx: md.create_variables(
            tx,
            reg,
            reg.projects["p"],
            reg.devices[(p.pk, "d1")],
            [VariableIn(id="b")],
            skip_existing=False,
        )
    )
    again = reg.variables[(d1.pk, "b")]
    await store.append(cols(p.pk, [again.pk], [1000], [2.0]))  # a new key: not a conflict
    assert reg.series[(again.pk, 1)] != old


async def test_accounts_keys_and_roles(backend: Harness) -> None:
    await build(backend)
    reg = backend.store.registry
    md = backend.md
    p, q = reg.projects["p"], reg.projects["q"]
    acc = await backend.write(lambda tx: md.create_account(tx, reg, p, "svc", "Service", "viewer"))
    with pytest.raises(Conflict):
        await backend.write(lambda tx: md.create_account(tx, reg, q, "svc", "Again", "viewer"))
    await backend.write(lambda tx: md.add_key(tx, reg, acc, "k2", "hash-2", "2026-01-02T00:00:00Z"))
    await backend.write(lambda tx: md.add_key(tx, reg, acc, "k1", "hash-1", "2026-01-01T00:00:00Z"))
    await backend.write(lambda tx: md.set_role(tx, reg, acc, q.pk, "editor"))
    await backend.write(lambda tx: md.rename_account(tx, reg, acc, "Renamed"))
    made = snapshot(reg)
    assert made["accounts"]["svc"] == (
        "Renamed",
        "p",
        {"p": "viewer", "q": "editor"},
        {"k1": "hash-1", "k2": "hash-2"},
    )
    assert made["key_owner"] == {"k1": "svc", "k2": "svc"}
    store = await backend.reopen()
    reg = store.registry
    assert snapshot(reg) == made
    acc = reg.accounts["svc"]
    assert await backend.read(lambda c: md.key_created(c, acc.pk)) == [
        ("k1", "2026-01-01T00:00:00Z"),
        ("k2", "2026-01-02T00:00:00Z"),
    ]
    await backend.write(lambda tx: md.delete_key(tx, reg, acc, "k2"))
    with pytest.raises(NotFound):
        await backend.write(lambda tx: md.delete_key(tx, reg, acc, "k2"))
    await backend.write(lambda tx: md.set_role(tx, reg, acc, reg.projects["q"].pk, None))
    store = await backend.reopen()
    reg = store.registry
    assert reg.accounts["svc"].roles == {reg.projects["p"].pk: "viewer"}
    assert reg.accounts["svc"].keys == {"k1": "hash-1"}
    await backend.write(lambda tx: md.delete_account(tx, reg, reg.accounts["svc"]))
    assert "svc" not in reg.accounts and reg.key_owner == {}
    store = await backend.reopen()
    assert store.registry.accounts == {} and store.registry.key_owner == {}
