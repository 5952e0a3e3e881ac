"""The registry kept beside the database at a clean stop (``store/sqlite/snapshot.py``): the
next open takes it only when it is of the same tables and code, and then builds the same
registry as reading the tables."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamgauge.auth import Action
from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.core.registry import _NOT_SNAPSHOT, Registry
from streamgauge.domain.errors import Unavailable
from streamgauge.domain.model import DeviceIn, ProjectIn, QCLimits, SiteIn, VariableIn
from streamgauge.store.factory import DB_NAME, SQLITE_REPLICA
from streamgauge.store.sqlite import metadata, snapshot
from streamgauge.store.sqlite import store as sqlite_store
from tests.core.test_registry_events import ADMIN, nd, open_engine, row
from tests.core.test_registry_events import snapshot as contents


def tables_registry(data: Path) -> Registry:
    """The registry read from the tables (what an open without a snapshot builds)."""
    reg = Registry()
    conn = sqlite3.connect(f"file:{data / DB_NAME}?mode=ro", uri=True, isolation_level=None)
    try:
        reg.load(metadata.load_tables(conn))
    finally:
        conn.close()
    return reg


def same_column(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], name: str) -> None:
    """Equal where both have room; past the shorter one, the longer holds one fill value
    (room to grow)."""
    n = min(len(x), len(y))
    nan = x.dtype.kind == "f"
    assert np.array_equal(x[:n], y[:n], equal_nan=nan), name
    for rest in (x[n:], y[n:]):
        if len(rest):
            assert np.array_equal(rest, np.full(len(rest), rest[0]), equal_nan=nan), name


def plain(value: Any) -> Any:
    """``value`` as comparable plain data: records by their slots, sets sorted, dicts as
    their items in order (the order is the registry's listing order)."""
    if isinstance(value, dict):
        return [(plain(k), plain(v)) for k, v in value.items()]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    slots = getattr(type(value), "__slots__", None)
    if slots is not None and not isinstance(value, (str, int, float)):
        return (type(value).__name__, [plain(getattr(value, n, None)) for n in slots])
    return repr(value)


def same_attributes(a: Registry, b: Registry) -> None:
    """Every attribute a snapshot holds is equal in ``a`` and ``b`` (columns element-wise;
    string codes are only comparable between a registry and its own snapshot)."""
    names = set(vars(a)) - _NOT_SNAPSHOT
    assert names == set(vars(b)) - _NOT_SNAPSHOT
    for name in sorted(names):
        value, other = getattr(a, name), getattr(b, name)
        if isinstance(value, np.ndarray) and value.ndim == 1:
            same_column(value, other, name)
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, other), name
        elif name == "qc_limits":
            for col in ("lo", "hi", "max_rate", "max_persist_ms", "role", "group"):
                same_column(getattr(value, col), getattr(other, col), col)
        else:
            assert plain(value) == plain(other), name


async def populate(engine: Engine) -> None:
    md = engine.metadata
    await md.create_projects(ADMIN, [ProjectIn(id="p"), ProjectIn(id="q")])
    p = md.project(ADMIN, "p", Action.READ)
    await md.create_sites(p, [SiteIn(id="s1", lat=40.0, lon=-111.0, state="UT")])
    await md.create_devices(
        p,
        [
            DeviceIn(
                id=f"d{i}",
                site="s1" if i % 2 else None,
                type="ws",
                labels={"k": str(i)},
                variables=[
                    VariableIn(name="air_temp"),
                    VariableIn(name="pressure", unit="hPa", limits=QCLimits(min=500.0)),
                ],
            )
            for i in range(4)
        ],
    )
    rows = [row(f"d{i}", v, 1000, 1.0) for i in range(4) for v in ("air_temp", "pressure")]
    await engine.ingest(p, nd(*rows, row("d0", "air_temp", 2000, 2.0, set_=2)), ndjson=True)
    await engine.accounts.create(p, id="a", role="manager")


async def stopped_network(data: Path) -> tuple[Engine, dict[str, Any]]:
    """A folder with ``populate``'s network, stopped cleanly (so its snapshot is kept): the
    stopped engine and what its registry held."""
    engine = await open_engine(data)
    try:
        await populate(engine)
        return engine, contents(engine.registry)
    finally:
        await engine.stop()


async def reopens_from_the_tables(data: Path, live: dict[str, Any]) -> None:
    """The next open does not take the snapshot, and its registry holds ``live``."""
    again = await open_engine(data)
    try:
        assert not again.store.registry_from_snapshot
        assert contents(again.registry) == live
    finally:
        await again.stop()


async def test_a_clean_stop_keeps_the_registry_and_the_next_open_takes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine, live = await stopped_network(data)
    path = data / snapshot.SNAPSHOT_NAME
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
    again = await open_engine(data)
    try:
        assert again.store.registry_from_snapshot
        assert contents(again.registry) == live == contents(tables_registry(data))
        same_attributes(again.registry, engine.registry)  # what it held, attribute by attribute
        # The latest times come from the log, as after reading the tables.
        p = again.metadata.project(ADMIN, "p", Action.READ)
        series = again.registry.series[(again.registry.variables[(1, "air_temp")].pk, 1)]
        assert int(again.registry.latest[series]) == 1000
        # It goes on as usual: new series, a new device, a duplicate still found as one.
        await again.ingest(p, nd(row("d1", "air_temp", 3000, 3.0, set_=7)), ndjson=True)
        await again.metadata.create_devices(p, [DeviceIn(id="d9", variables=[])])
        result = await again.ingest(p, nd(row("d0", "air_temp", 1000, 1.0)), ndjson=True)
        assert result.duplicates == 1
        live = contents(again.registry)
    finally:
        await again.stop()
    third = await open_engine(data)
    try:
        assert third.store.registry_from_snapshot
        assert contents(third.registry) == live
    finally:
        await third.stop()


async def test_a_snapshot_of_other_tables_is_not_used(tmp_path: Path) -> None:
    """A kill -9 after metadata changed leaves the previous stop's snapshot: not used."""
    data = tmp_path / "data"
    await stopped_network(data)
    kept = tmp_path / "kept.snapshot"
    shutil.copy(data / snapshot.SNAPSHOT_NAME, kept)
    engine = await open_engine(data)
    try:
        p = engine.metadata.project(ADMIN, "p", Action.READ)
        await engine.ingest(p, nd(row("d2", "air_temp", 5000, 1.0, set_=4)), ndjson=True)
        live = contents(engine.registry)
    finally:
        await engine.stop()
    shutil.copy(kept, data / snapshot.SNAPSHOT_NAME)  # as if the stop had been a kill
    await reopens_from_the_tables(data, live)


@pytest.mark.parametrize("damage", ["torn", "garbage", "other code", "empty"])
async def test_a_damaged_or_foreign_snapshot_is_not_used(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    _, live = await stopped_network(data)
    path = data / snapshot.SNAPSHOT_NAME
    whole = path.read_bytes()
    if damage == "torn":
        path.write_bytes(whole[: len(whole) * 2 // 3])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        monkeypatch.setattr(snapshot, "code_digest", lambda: "another version")
    await reopens_from_the_tables(data, live)


def test_a_state_of_other_attributes_is_refused() -> None:
    reg = Registry()
    state: dict[str, Any] = Registry().snapshot()
    state["renamed_column"] = state.pop("s_set")
    assert not reg.restore_snapshot(state)
    assert contents(reg) == contents(Registry())


async def test_a_cluster_node_keeps_no_snapshot(tmp_path: Path) -> None:
    from streamgauge.store.factory import SQLITE

    settings = Settings(data=tmp_path / "data", bus="nats://127.0.0.1:4222")
    store: Any = SQLITE.open_store(settings, lambda _: None, Registry())  # type: ignore[arg-type]
    assert store.snapshots is False


async def open_replica(data: Path, reg: Registry) -> Any:
    """A fan-out worker's read-only store of ``data``, open, loading ``reg``."""
    store: Any = SQLITE_REPLICA.open_store(
        Settings(data=data),
        lambda _: None,  # type: ignore[arg-type,return-value]
        reg,
    )
    await store.open(lambda batch: None)
    return store


async def test_a_fan_out_worker_takes_the_snapshot_without_qc_limits_or_documents(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    _, live = await stopped_network(data)
    opened: list[tuple[bool, dict[str, Any]]] = []
    for keep in (True, False):
        if not keep:
            (data / snapshot.SNAPSHOT_NAME).unlink()
        reg = Registry()
        reg.keeps_qc_limits = False
        store = await open_replica(data, reg)
        try:
            opened.append((store.registry_from_snapshot, contents(reg)))
            assert len(reg.qc_limits.lo) < 8  # none kept
            records = [*reg.sites.values(), *reg.devices_by_pk.values()]  # nor any document
            assert records and not any(isinstance(r._stored, str) for r in records)  # noqa: SLF001
        finally:
            await store.close()
    assert [o[0] for o in opened] == [True, False]
    assert opened[0][1] == opened[1][1]
    without_limits = {k: v for k, v in live.items() if k != "qc_limits"}
    assert {k: v for k, v in opened[0][1].items() if k != "qc_limits"} == without_limits


# -- the log state read while the app is imported (``prefetch_log_state``) ------------------------


async def _stopped_with_rows(data: Path) -> tuple[int, int]:
    """A folder with a network and rows, stopped cleanly; (a series pk, its latest time)."""
    engine, _ = await stopped_network(data)
    reg = engine.registry
    series = reg.series[(reg.variables[(1, "air_temp")].pk, 1)]
    return series, int(reg.latest[series])


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    real = sqlite_store.read_log_state

    def counted(path: Path, durability: str) -> Any:
        reads.append(path)
        return real(path, durability)

    monkeypatch.setattr(sqlite_store, "read_log_state", counted)
    return reads


async def test_a_log_state_read_before_the_open_is_taken_when_the_log_is_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    series, latest = await _stopped_with_rows(data)
    reads = _counting_reads(monkeypatch)
    sqlite_store.prefetch_log_state(data / DB_NAME, "normal")
    engine = await open_engine(data)
    try:
        assert len(reads) == 1  # the prefetch's, taken by the open
        assert int(engine.registry.latest[series]) == latest
        p = engine.metadata.project(ADMIN, "p", Action.READ)
        result = await engine.ingest(p, nd(row("d0", "air_temp", 1000, 1.0)), ndjson=True)
        assert result.duplicates == 1
    finally:
        await engine.stop()


async def test_a_log_state_read_before_the_log_changed_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows appended after the prefetch read (another process, say): the open sees the head
    moved, reads again, and each series' latest time includes them."""
    data = tmp_path / "data"
    series, latest = await _stopped_with_rows(data)
    reads = _counting_reads(monkeypatch)
    sqlite_store.prefetch_log_state(data / DB_NAME, "normal")
    sqlite_store._prefetched[(data / DB_NAME).resolve()].result()  # read before the change
    conn = sqlite3.connect(data / DB_NAME, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO obs (cursor, series, time, value, qc, received) "
            "SELECT max(cursor) + 1, ?, ?, 2.5, 0, 0 FROM obs",
            (series, latest + 60_000),
        )
    finally:
        conn.close()
    engine = await open_engine(data)
    try:
        assert len(reads) == 2
        assert int(engine.registry.latest[series]) == latest + 60_000
        p = engine.metadata.project(ADMIN, "p", Action.READ)
        again = nd(row("d0", "air_temp", latest + 60_000, 2.5))
        assert (await engine.ingest(p, again, ndjson=True)).duplicates == 1
    finally:
        await engine.stop()


async def test_a_failed_prefetch_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    series, latest = await _stopped_with_rows(data)
    real = sqlite_store.read_log_state
    calls: list[int] = []

    def failing_once(path: Path, durability: str) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(path, durability)

    monkeypatch.setattr(sqlite_store, "read_log_state", failing_once)
    sqlite_store.prefetch_log_state(data / DB_NAME, "normal")
    engine = await open_engine(data)
    try:
        assert len(calls) == 2
        assert int(engine.registry.latest[series]) == latest
    finally:
        await engine.stop()


@pytest.mark.parametrize("edit", ["a site's document", "a device row deleted and put back"])
async def test_a_snapshot_is_not_used_after_a_hand_edit_of_the_tables(
    tmp_path: Path, edit: str
) -> None:
    """An edit with the sqlite3 shell while the server is stopped (no event stored): the
    tables' triggers count it (schema 13), so the snapshot taken before is not used."""
    data = tmp_path / "data"
    await stopped_network(data)
    conn = sqlite3.connect(data / DB_NAME, isolation_level=None)
    try:
        if edit == "a site's document":
            (doc,) = conn.execute("SELECT doc FROM sites WHERE id = 's1'").fetchone()
            conn.execute(
                "UPDATE sites SET doc = ? WHERE id = 's1'",
                (doc.replace('"state":"UT"', '"state":"NV"'),),
            )
        else:  # the same count and highest pk, another document
            pk, project_pk, doc = conn.execute(
                "SELECT pk, project_pk, doc FROM devices ORDER BY pk DESC LIMIT 1"
            ).fetchone()
            conn.execute("DELETE FROM devices WHERE pk = ?", (pk,))
            conn.execute(
                "INSERT INTO devices (pk, project_pk, id, doc) VALUES (?, ?, ?, ?)",
                (pk, project_pk, "d3", doc.replace('"type":"ws"', '"type":"buoy"')),
            )
    finally:
        conn.close()
    again = await open_engine(data)
    try:
        assert not again.store.registry_from_snapshot
        assert contents(again.registry) == contents(tables_registry(data))
        if edit == "a site's document":
            assert again.registry.sites[(1, "s1")].doc.state == "NV"
        else:
            assert again.registry.devices[(1, "d3")].type == "buoy"
    finally:
        await again.stop()


async def test_a_worker_describes_a_record_the_database_no_longer_has(tmp_path: Path) -> None:
    """Dropped by the writer before this process applied the drop: the record's own fields
    make a valid document (never an error in the fan-out round that asked)."""
    from streamgauge.domain.model import Device, Site
    from streamgauge.domain.records import DeviceRec, SiteRec

    data = tmp_path / "data"
    await stopped_network(data)
    reg = Registry()
    store = await open_replica(data, reg)
    try:
        assert reg.docs is not None
        p = reg.projects["p"].pk
        site = Site.model_validate_json(reg.docs.site(SiteRec(10_000, p, stored='{"id":"x"}')))
        assert (site.id, site.project) == ("x", "p")
        gone = DeviceRec(10_000, p, stored='{"id":"y","site":"x","labels":{"k":"v"}}')
        device = Device.model_validate_json(reg.docs.device(gone))
        assert (device.id, device.project, device.site, device.labels) == (
            "y",
            "p",
            "x",
            {"k": "v"},
        )
        kept = reg.sites[(p, "s1")]
        assert Site.model_validate_json(kept.stored).state == "UT"  # read from the database
    finally:
        await store.close()
    with pytest.raises(Unavailable):  # closed with the store, not opened again
        reg.sites[(p, "s1")].stored  # noqa: B018


async def test_equal_keys_of_sites_devices_and_by_site_are_one_tuple(tmp_path: Path) -> None:
    """A station's site, its device of the same id and the device's ``by_site`` entry share
    one key tuple, whether the registry was read from the tables or from the snapshot."""
    data = tmp_path / "data"
    engine = await open_engine(data)
    try:
        await populate(engine)
        p = engine.metadata.project(ADMIN, "p", Action.READ)
        await engine.metadata.create_sites(p, [SiteIn(id="st")])
        await engine.metadata.create_devices(p, [DeviceIn(id="st", site="st")])
    finally:
        await engine.stop()
    for from_snapshot in (True, False):
        if not from_snapshot:
            (data / snapshot.SNAPSHOT_NAME).unlink()
        again = await open_engine(data)
        try:
            reg = again.registry
            assert again.store.registry_from_snapshot is from_snapshot
            site_keys = {k: k for k in reg.sites}
            for key in [k for k in reg.by_site if k in site_keys] + [(1, "st")]:
                assert key in site_keys
                found = [k for k in (*reg.by_site, *reg.devices) if k == key]
                assert found and all(k is site_keys[key] for k in found)
        finally:
            await again.stop()
