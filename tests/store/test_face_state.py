"""The face-state stores (``store/face_state.py``) on SQLite: DT account settings (written in
the caller's transaction, visible after its commit), DT data connectors, the state an existing
database already holds, and the core operations beside them (device transfer, the probe)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from streamgauge.core.registry import AccountRec, Registry
from streamgauge.domain.errors import Unavailable
from streamgauge.domain.face_state import DTAccountSettings, StoredConnector
from streamgauge.domain.log import HistoryQuery, IngestColumns
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn
from streamgauge.store.face_state import DTAccountStore, DTConnectorStore
from streamgauge.store.sqlite import metadata
from streamgauge.store.sqlite import ops as sqlite_ops
from streamgauge.store.sqlite.face_state import SqliteDTAccounts, SqliteDTConnectors
from streamgauge.store.sqlite.store import SqliteStore, Tx
from tests.store.rules import log_rules


async def open_store(path: Path) -> SqliteStore:
    store = SqliteStore(path / "db", rules=log_rules(), registry=Registry())
    await store.open(lambda batch: None)
    return store


async def make_projects(store: SqliteStore, *ids: str) -> None:
    reg = store.registry
    await store.write(
        lambda tx: metadata.create_projects(
            tx, reg, [ProjectIn(id=i) for i in ids], skip_existing=False, admin_account=None
        )
    )


async def make_account(
    store: SqliteStore, accounts: DTAccountStore[Tx], id_: str, settings: DTAccountSettings
) -> AccountRec:
    reg = store.registry

    def run(tx: Tx) -> AccountRec:
        rec = metadata.create_account(tx, reg, reg.projects["p"], id_, id_, "user")
        accounts.put(tx, rec.pk, settings)
        return rec

    return await store.write(run)


# -- DT account settings ----------------------------------------------------------------------


async def test_account_settings_commit_with_their_account_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p")
        accounts: DTAccountStore[Tx] = SqliteDTAccounts(store)
        await accounts.load()
        assert dict(accounts.by_pk) == {}
        a = await make_account(store, accounts, "a", DTAccountSettings(False, "t1", "t1"))
        b = await make_account(store, accounts, "b", DTAccountSettings(True, "t2", "t2"))
        assert accounts.by_pk[a.pk] == DTAccountSettings(False, "t1", "t1")
        assert accounts.by_pk[b.pk] == DTAccountSettings(True, "t2", "t2")
    finally:
        await store.close()
    store = await open_store(tmp_path)
    try:
        again = SqliteDTAccounts(store)
        await again.load()
        assert dict(again.by_pk) == {
            a.pk: DTAccountSettings(False, "t1", "t1"),
            b.pk: DTAccountSettings(True, "t2", "t2"),
        }
    finally:
        await store.close()


async def test_an_update_keeps_the_create_time_in_memory_and_on_disk(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p")
        accounts = SqliteDTAccounts(store)
        await accounts.load()
        a = await make_account(store, accounts, "a", DTAccountSettings(True, "t1", "t1"))
        await store.write(lambda tx: accounts.put(tx, a.pk, DTAccountSettings(False, "t9", "t2")))
        assert accounts.by_pk[a.pk] == DTAccountSettings(False, "t1", "t2")
        fresh = SqliteDTAccounts(store)
        await fresh.load()
        assert fresh.by_pk[a.pk] == DTAccountSettings(False, "t1", "t2")
    finally:
        await store.close()


async def test_settings_of_a_rolled_back_transaction_are_never_seen(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p")
        accounts = SqliteDTAccounts(store)
        await accounts.load()
        a = await make_account(store, accounts, "a", DTAccountSettings(True, "t1", "t1"))

        def failing(tx: Tx) -> None:
            accounts.put(tx, a.pk, DTAccountSettings(False, "t1", "t2"))
            raise RuntimeError("the rest of the transaction failed")

        with pytest.raises(RuntimeError):
            await store.write(failing)
        assert accounts.by_pk[a.pk] == DTAccountSettings(True, "t1", "t1")
        fresh = SqliteDTAccounts(store)
        await fresh.load()
        assert fresh.by_pk[a.pk] == DTAccountSettings(True, "t1", "t1")
    finally:
        await store.close()


async def test_settings_go_with_their_account(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p")
        accounts = SqliteDTAccounts(store)
        a = await make_account(store, accounts, "a", DTAccountSettings(False, "t1", "t1"))
        reg = store.registry
        await store.write(lambda tx: metadata.delete_account(tx, reg, a))
        fresh = SqliteDTAccounts(store)
        await fresh.load()
        assert dict(fresh.by_pk) == {}
    finally:
        await store.close()


# -- DT data connectors -----------------------------------------------------------------------


DOC = {"displayName": "c", "status": "ACTIVE", "events": [], "labels": [], "httpConfig": {}}


async def test_connectors_insert_update_delete_and_survive_a_restart(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p", "q")
        p, q = store.registry.projects["p"].pk, store.registry.projects["q"].pk
        connectors: DTConnectorStore = SqliteDTConnectors(store)
        assert await connectors.load() == []
        one = await connectors.insert(p, "c1", DOC, 5)
        two = await connectors.insert(q, "c2", {**DOC, "displayName": "two"}, 7)
        assert one == StoredConnector(one.pk, p, "c1", DOC, 5)
        assert two.pk > one.pk
        await connectors.update(one.pk, {**DOC, "status": "USER_DISABLED"}, 9)
        await connectors.delete(two.pk)
        await connectors.delete(two.pk)  # nothing left to delete: no error
    finally:
        await store.close()
    store = await open_store(tmp_path)
    try:
        assert await SqliteDTConnectors(store).load() == [
            StoredConnector(one.pk, p, "c1", {**DOC, "status": "USER_DISABLED"}, 9)
        ]
    finally:
        await store.close()


async def test_connector_ids_are_unique_and_connectors_go_with_their_project(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p", "q")
        reg = store.registry
        connectors = SqliteDTConnectors(store)
        await connectors.insert(reg.projects["p"].pk, "c1", DOC, 0)
        with pytest.raises(sqlite3.IntegrityError):
            await connectors.insert(reg.projects["q"].pk, "c1", DOC, 0)
        kept = await connectors.insert(reg.projects["q"].pk, "c2", DOC, 0)
        await store.write(lambda tx: metadata.delete_project(tx, reg, reg.projects["p"]))
        assert await connectors.load() == [kept]
    finally:
        await store.close()


# -- an existing database ---------------------------------------------------------------------


async def test_an_existing_database_keeps_its_dt_state(tmp_path: Path) -> None:
    """Rows written the way the DT face wrote them before it had a store interface (its own SQL
    on the store's connection) are read back unchanged: the on-disk format did not move."""
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p")
        reg = store.registry
        rec = await store.write(
            lambda tx: metadata.create_account(tx, reg, reg.projects["p"], "a", "a", "user")
        )
        project_pk = reg.projects["p"].pk
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "db")
    with conn:
        conn.execute(
            "INSERT INTO dt_accounts VALUES (?, ?, ?, ?)",
            (rec.pk, 0, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
        )
        conn.execute(
            "INSERT INTO dt_connectors (project_pk, id, doc, start_cursor) VALUES (?, ?, ?, ?)",
            (project_pk, "old", '{"displayName":"old","events":["touch"]}', 42),
        )
    conn.close()
    store = await open_store(tmp_path)
    try:
        accounts = SqliteDTAccounts(store)
        await accounts.load()
        assert dict(accounts.by_pk) == {
            rec.pk: DTAccountSettings(False, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
        }
        [old] = await SqliteDTConnectors(store).load()
        assert (old.project_pk, old.id, old.start) == (project_pk, "old", 42)
        assert old.doc == {"displayName": "old", "events": ["touch"]}
    finally:
        await store.close()


# -- core operations beside the face state ----------------------------------------------------


async def test_transfer_moves_a_device_with_its_series_and_rows(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await make_projects(store, "p", "q")
        reg = store.registry
        p, q = reg.projects["p"], reg.projects["q"]
        dev_in = DeviceIn(id="d", site=None, variables=[VariableIn(name="t")])
        await store.write(
            lambda tx: metadata.create_devices(tx, reg, p, [dev_in], skip_existing=False)
        )
        [var_pk] = list(reg.variables_by_pk)
        await store.append(
            IngestColumns(
                p.pk,
                np.array([var_pk], np.int64),
                np.ones(1, np.int64),
                np.array([1000], np.int64),
                [1.5],
                np.zeros(1, np.int64),
            )
        )
        dev = reg.devices[(p.pk, "d")]
        await sqlite_ops.transfer_device(store, dev, q)
        moved = reg.devices[(q.pk, "d")]
        assert (p.pk, "d") not in reg.devices
        assert (moved.pk, moved.doc.project, moved.doc.site) == (dev.pk, "q", None)
        assert reg.variables_by_pk[var_pk].doc.project == "q"
        assert {s.project_pk for s in reg.series_by_pk.values()} == {q.pk}
        assert len(await store.history(HistoryQuery(p.pk))) == 0
        assert (await store.history(HistoryQuery(q.pk))).values == [1.5]
    finally:
        await store.close()
    store = await open_store(tmp_path)  # the registry read back from disk agrees
    try:
        reg = store.registry
        assert (reg.projects["q"].pk, "d") in reg.devices
        assert (reg.projects["p"].pk, "d") not in reg.devices
        assert reg.variables_by_pk[var_pk].doc.project == "q"
        assert (await store.history(HistoryQuery(reg.projects["q"].pk))).values == [1.5]
    finally:
        await store.close()


async def test_probe_answers_while_open_and_raises_when_closed(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await sqlite_ops.probe(store)
    await store.close()
    with pytest.raises(Unavailable, match="closed"):
        await sqlite_ops.probe(store)
