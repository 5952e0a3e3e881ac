"""Metadata changes as data (issue 12 item 4): every metadata write of the engine's services
writes its events in its own transaction (``meta_events``), a failed one writes none and leaves
the registry as it was, a registry built only from the stored events equals the live one, and
nothing but ``Registry.apply`` changes the registry's metadata."""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamgauge
from streamgauge.auth import Action, Principal
from streamgauge.config import Settings
from streamgauge.core.domain import site_columns
from streamgauge.core.engine import Engine
from streamgauge.core.registry import DeviceRec, ProjectRec, Registry, SiteRec
from streamgauge.domain import events as ev
from streamgauge.domain.channels import ChannelDoc
from streamgauge.domain.errors import Conflict, Invalid
from streamgauge.domain.model import (
    Device,
    DeviceIn,
    Project,
    ProjectIn,
    QCLimits,
    Site,
    SiteIn,
    Variable,
    VariableIn,
)
from streamgauge.store.sqlite import metadata as sqlite_metadata
from streamgauge.store.sqlite.schema import migrate

ADMIN = Principal(None)
SRC = Path(streamgauge.__file__).parent


async def open_engine(data: Path) -> Engine:
    e = Engine(Settings(data=data, delivery_poll_seconds=3600), "token")
    await e.start()
    return e


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    e = await open_engine(tmp_path / "data")
    try:
        yield e
    finally:
        await e.stop()


async def stored(engine: Engine, after: int = 0) -> list[tuple[int, ev.MetaEvent]]:
    return await engine.store.read(lambda conn: sqlite_metadata.read_events(conn, after))


async def last_seq(engine: Engine) -> int:
    got = await stored(engine)
    return got[-1][0] if got else 0


def rebuilt(events: list[tuple[int, ev.MetaEvent]]) -> Registry:
    """A registry built from nothing by applying ``events`` only."""
    reg = Registry()
    reg.apply_all([e for _, e in events])
    return reg


def snapshot(reg: Registry) -> dict[str, Any]:
    """Everything the registry holds of metadata, as plain comparable values (the log state
    it also keeps, latest times and QC state, is not metadata)."""

    def sets(index: Mapping[Any, Any]) -> dict[Any, list[int]]:
        """An index's sets as sorted lists (``by_site`` holds a lone device as its pk)."""
        return {
            k: [v] if isinstance(v, int) else sorted(v)
            for k, v in index.items()
            if isinstance(v, int) or v
        }

    def at(col: np.ndarray[Any, Any], pk: int, fill: Any) -> Any:
        return col[pk].item() if pk < len(col) else fill

    end = max(reg.series_end, 1)
    lim = reg.qc_limits
    return {
        "projects": {pk: (r.doc.id, r.doc.model_dump()) for pk, r in reg.projects_by_pk.items()},
        "project_ids": {k: r.pk for k, r in reg.projects.items()},
        "sites": {k: (r.pk, r.project_pk, r.doc.model_dump()) for k, r in reg.sites.items()},
        "devices": {pk: (r.project_pk, r.doc.model_dump()) for pk, r in reg.devices_by_pk.items()},
        "device_keys": {k: r.pk for k, r in reg.devices.items()},
        "variables": {
            pk: (r.device_pk, r.doc.model_dump(), r.entry, r.scale, r.offset)
            for pk, r in reg.variables_by_pk.items()
        },
        "variable_keys": {k: r.pk for k, r in reg.variables.items()},
        "series": {
            pk: (r.project_pk, r.device_pk, r.variable_pk, r.set, r.device_id, r.variable_id)
            for pk, r in reg.series_by_pk.items()
        },
        "series_prefix": {pk: r.prefix for pk, r in reg.series_by_pk.items()},
        "series_keys": dict(reg.series),
        "columns": {
            pk: (at(reg.s_project, pk, -1), at(reg.s_device, pk, -1))
            for pk in range(end)
            if at(reg.s_project, pk, -1) != -1 or at(reg.s_device, pk, -1) != -1
        },
        "names": {
            pk: [n for n, code in reg.names.items() if code == reg.s_name[pk]]
            for pk in reg.series_by_pk
        },
        "qc_limits": {
            pk: repr(
                [
                    at(lim.lo, pk, math.nan),
                    at(lim.hi, pk, math.nan),
                    at(lim.max_rate, pk, math.nan),
                    at(lim.max_persist_ms, pk, 0),
                    at(lim.role, pk, 0),
                    at(lim.group, pk, -1),
                ]
            )
            for pk in reg.series_by_pk
        },
        "accounts": {
            pk: (a.id, a.name, a.home_project_pk, dict(a.roles), dict(a.keys))
            for pk, a in reg.accounts_by_pk.items()
        },
        "account_ids": {k: a.pk for k, a in reg.accounts.items()},
        "key_owner": dict(reg.key_owner),
        "project_devices": sets(reg.project_devices),
        "device_variables": sets(reg.device_variables),
        "by_type": sets(reg.by_type),
        "by_site": sets(reg.by_site),
        "by_label": {
            k: {v: sorted(s) for v, s in vals.items() if s}
            for k, vals in reg.by_label.items()
            if any(vals.values())
        },
    }


def nd(*rows: str) -> bytes:
    return "\n".join(rows).encode() + b"\n"


def row(device: str, variable: str, time: int, value: float, set_: int = 1) -> str:
    return (
        f'{{"device":"{device}","variable":"{variable}","time":{time},'
        f'"value":{value},"set":{set_}}}'
    )


# -- every operation: its events, in its transaction ----------------------------------------------


async def test_every_metadata_operation_writes_its_events_and_the_feed_rebuilds_the_registry(
    engine: Engine,
) -> None:
    """Each operation of the services stores exactly its events, and after each one a registry
    rebuilt from the stored events alone equals the live one."""
    md, acc = engine.metadata, engine.accounts

    async def step(op: Callable[[], Awaitable[object]], kinds: list[str]) -> None:
        before = await last_seq(engine)
        await op()
        new = await stored(engine, before)
        assert [ev.kind(e) for _, e in new] == kinds
        assert snapshot(rebuilt(await stored(engine))) == snapshot(engine.registry)

    def proj(id_: str) -> ProjectRec:
        return md.project(ADMIN, id_, Action.READ)

    await step(
        lambda: md.create_projects(ADMIN, [ProjectIn(id="p"), ProjectIn(id="q")]),
        [
            "project_put",
            "project_put",
        ],
    )
    await step(lambda: md.update_project(proj("p"), {"description": "d"}), ["project_put"])
    await step(
        lambda: md.create_sites(proj("p"), [SiteIn(id="s1"), SiteIn(id="s2")]),
        ["site_put", "site_put"],
    )
    site = engine.registry.sites[(proj("p").pk, "s2")]
    await step(lambda: md.update_site(site, {"name": "Two"}), ["site_put"])
    await step(
        lambda: md.create_devices(
            proj("p"),
            [
                DeviceIn(
                    id="d1",
                    site="s1",
                    type="ws",
                    labels={"net": "a"},
                    variables=[VariableIn(name="air_temp", unit="degF"), VariableIn(id="x")],
                ),
                DeviceIn(id="d2", type="buoy"),
            ],
        ),
        ["device_put", "variable_put", "variable_put", "device_put"],
    )
    d1 = engine.registry.devices[(proj("p").pk, "d1")]
    d2 = engine.registry.devices[(proj("p").pk, "d2")]
    await step(
        lambda: md.update_devices(
            proj("p"), [(d2, {"labels": {"net": "b"}, "site": "s2"}), (d1, {"type": "agro"})]
        ),
        ["device_put", "device_put"],
    )
    await step(
        lambda: md.create_variables(proj("p"), d2, [VariableIn(id="w", name="wind_speed")]),
        ["variable_put"],
    )
    w = engine.registry.variables[(d2.pk, "w")]
    await step(
        lambda: md.update_variable(w, {"unit": "km/h", "limits": QCLimits(max=30.0)}),
        ["variable_put"],
    )
    body = nd(
        row("d1", "air_temp", 1000, 50.0),
        row("d1", "air_temp", 1000, 51.0, set_=2),
        row("d2", "w", 1000, 3.0),
    )
    await step(
        lambda: engine.ingest(proj("p"), body, ndjson=True),
        ["series_added", "series_added", "series_added"],
    )
    await step(  # known series: no event
        lambda: engine.ingest(proj("p"), nd(row("d1", "air_temp", 2000, 52.0)), ndjson=True), []
    )
    await step(lambda: md.delete_variable(w), ["variable_dropped"])
    await step(
        lambda: engine.transfer_device(d1, proj("q")),
        ["device_moved", "variable_put", "variable_put"],
    )
    await step(
        lambda: md.delete_site(engine.registry.sites[(proj("p").pk, "s1")]), ["site_dropped"]
    )
    await step(
        lambda: md.delete_device(engine.registry.devices[(proj("p").pk, "d2")]), ["device_dropped"]
    )
    a1 = await acc.create(proj("p"), id="a1")
    assert [ev.kind(e) for _, e in (await stored(engine))[-2:]] == ["account_put", "role_put"]
    await step(
        lambda: acc.update(ADMIN, proj("p"), a1, name="One", role="manager"),
        ["account_put", "role_put"],
    )
    await step(lambda: acc.set_role(ADMIN, proj("q"), a1, "user"), ["role_put"])
    await step(lambda: acc.set_role(ADMIN, proj("q"), a1, None), ["role_dropped"])
    key = await acc.create_key(a1)
    assert ev.kind((await stored(engine))[-1][1]) == "key_put"
    assert engine.registry.key_owner[key.key_id] == a1.pk
    await step(lambda: acc.create_key(a1), ["key_put"])
    await step(lambda: acc.delete_key(a1, key.key_id), ["key_dropped"])
    await step(lambda: acc.delete(a1), ["account_dropped"])
    # a project created by a service account makes it the project's admin: both events
    await md.create_projects(ADMIN, [ProjectIn(id="home")])
    owner = await acc.create(proj("home"), id="owner", role="admin")
    await step(
        lambda: md.create_projects(Principal(owner), [ProjectIn(id="r")]),
        ["project_put", "role_put"],
    )
    assert engine.registry.accounts["owner"].roles[proj("r").pk] == "admin"
    # deleting a project cascades in the registry as it does in the tables
    await step(lambda: md.delete_project(proj("home")), ["project_dropped"])
    assert "owner" not in engine.registry.accounts
    await step(lambda: md.delete_project(proj("q")), ["project_dropped"])


async def test_a_mixed_history_rebuilds_from_the_events_and_reopens_the_same(
    tmp_path: Path,
) -> None:
    """Creates, updates, deletes, a device transfer and ingest: the registry built from the
    stored events alone, and the one a restart loads from the tables, equal the live one."""
    engine = await open_engine(tmp_path / "data")
    try:
        md = engine.metadata
        await md.create_projects(ADMIN, [ProjectIn(id=i) for i in ("p", "q", "r")])
        p, q, r = (md.project(ADMIN, i, Action.READ) for i in ("p", "q", "r"))
        await md.create_sites(p, [SiteIn(id="s1", lat=40.0, lon=-111.0)])
        devices = [
            DeviceIn(
                id=f"d{i}",
                site="s1" if i % 2 else None,
                type=("ws", "buoy")[i % 2],
                labels={"k": str(i % 3)},
                variables=[VariableIn(name="air_temp"), VariableIn(name="wind_speed")],
            )
            for i in range(6)
        ]
        await md.create_devices(p, devices)
        await md.create_devices(r, [DeviceIn(id="rd", variables=[VariableIn(id="v")])])
        # Every field of a variable's document set (a restart rebuilds it from the stored JSON).
        full = VariableIn(
            name="pressure",
            unit="hPa",
            set=3,
            limits=QCLimits(min=500.0, max_rate=None),
            metadata={"k": "v"},
            retention_days=3.5,
        )
        await md.create_devices(p, [DeviceIn(id="dx", variables=[full])])
        rows = [row(f"d{i}", v, 1000, 1.0) for i in range(6) for v in ("air_temp", "wind_speed")]
        await engine.ingest(p, nd(*rows), ndjson=True)
        await engine.ingest(r, nd(row("rd", "v", 1000, 1.0)), ndjson=True)
        reg = engine.registry
        await md.update_devices(p, [(reg.devices[(p.pk, "d0")], {"labels": {"k": "z"}})])
        await md.delete_device(reg.devices[(p.pk, "d2")])
        await md.delete_variable(reg.variables[(reg.devices[(p.pk, "d3")].pk, "wind_speed")])
        await engine.transfer_device(reg.devices[(p.pk, "d1")], q)
        await engine.ingest(q, nd(row("d1", "air_temp", 2000, 2.0, set_=5)), ndjson=True)
        a = await engine.accounts.create(p, id="a", role="manager")
        await engine.accounts.set_role(ADMIN, r, a, "user")
        await engine.accounts.create_key(a)
        await engine.accounts.create(r, id="gone")
        await md.delete_project(r)
        await md.update_project(q, {"name": "Queue"})
        live = snapshot(engine.registry)
        assert live["series"] and live["accounts"] and live["sites"]
        assert snapshot(rebuilt(await stored(engine))) == live
    finally:
        await engine.stop()
    again = await open_engine(tmp_path / "data")
    try:
        assert snapshot(again.registry) == live
    finally:
        await again.stop()


# -- a failed transaction: no event, the registry as it was ---------------------------------------


async def test_a_failed_write_stores_no_event_and_leaves_the_registry_unchanged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = engine.metadata
    await md.create_projects(ADMIN, [ProjectIn(id="p")])
    p = md.project(ADMIN, "p", Action.READ)
    await md.create_devices(p, [DeviceIn(id="d", variables=[VariableIn(name="air_temp")])])
    await engine.ingest(p, nd(row("d", "air_temp", 1000, 1.0)), ndjson=True)
    seq, version, before = (
        await last_seq(engine),
        engine.registry.version,
        snapshot(engine.registry),
    )

    with pytest.raises(Conflict):  # the first item wrote its row and events, the second fails
        await md.create_projects(ADMIN, [ProjectIn(id="new"), ProjectIn(id="p")])
    bad_unit = [VariableIn(name="air_temp", unit="kg")]
    with pytest.raises(Invalid):
        await md.create_devices(p, [DeviceIn(id="ok"), DeviceIn(id="bad", variables=bad_unit)])
    assert (await last_seq(engine), engine.registry.version) == (seq, version)
    assert snapshot(engine.registry) == before

    # an append whose new series were applied before the commit, then refused: undone
    series_end = engine.registry.series_end
    conflicting = nd(row("d", "air_temp", 1000, 9.0, set_=7), row("d", "air_temp", 1000, 2.0))
    with pytest.raises(Conflict):
        await engine.ingest(p, conflicting, ndjson=True)
    assert await last_seq(engine) == seq
    assert snapshot(engine.registry) == before
    assert engine.registry.series_end > series_end  # its pk is never given again

    # the events are written in the change's transaction: if they cannot be, neither is it
    def fail(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_metadata, "write_events", fail)
    with pytest.raises(sqlite3.OperationalError):
        await md.create_projects(ADMIN, [ProjectIn(id="lost")])
    monkeypatch.undo()
    assert "lost" not in engine.registry.projects
    names = await engine.store.read(lambda conn: conn.execute("SELECT id FROM projects").fetchall())
    assert names == [("p",)]
    await md.create_projects(ADMIN, [ProjectIn(id="later")])  # the store goes on
    assert [ev.kind(e) for _, e in await stored(engine, seq)] == ["project_put"]


# -- the events themselves ------------------------------------------------------------------------

SAMPLES: list[ev.MetaEvent] = [
    ev.ProjectPut(
        1, Project(id="p", name="P", created_at="2026-01-01T00:00:00Z", metadata={"a": 1})
    ),
    ev.ProjectDropped(1),
    ev.SitePut(2, 1, Site(id="s", name="s", project="p", lat=40.5, lon=-111.25)),
    ev.SiteStored(2, 1, '{"id":"s","name":"s","project":"p","lat":40.5,"lon":-111.25}'),
    ev.SiteDropped(2, 1, "s"),
    ev.DevicePut(
        3,
        1,
        Device(id="d", project="p", site=None, type="ws", name="d", labels={"k": "v"}, metadata={}),
    ),
    ev.DeviceStored(
        3,
        1,
        '{"id":"d","project":"p","site":null,"type":"ws","name":"d","labels":{"k":"v"},'
        '"metadata":{}}',
    ),
    ev.DeviceMoved(
        3, 4, Device(id="d", project="q", site=None, type=None, name="d", labels={}, metadata={})
    ),
    ev.DeviceDropped(3),
    ev.VariablePut(
        5,
        3,
        Variable(
            id="t", name="air_temp", unit="degF", project="p", device="d", limits=QCLimits(min=-1)
        ),
    ),
    ev.VariableStored(
        5,
        3,
        '{"id":"t","name":"air_temp","unit":"degF","set":1,"limits":{"min":-1.0},'
        '"metadata":{},"retention_days":null,"project":"p","device":"d"}',
    ),
    ev.VariableDropped(5),
    ev.SeriesAdded(6, 1, 3, 5, 2, 'd"\u00e9', "t"),
    ev.SeriesDropped(6),
    ev.AccountPut(7, "a", "A \u2603", 1),
    ev.AccountDropped(7),
    ev.RolePut(7, 1, "manager"),
    ev.RoleDropped(7, 1),
    ev.KeyPut(7, "k1", "$argon2id$v=19$..."),
    ev.KeyDropped(7, "k1"),
    ev.ChannelPut(
        8,
        1,
        ChannelDoc.model_validate(
            {
                "id": "c",
                "project": "p",
                "name": "C",
                "created_at": "2026-01-01T00:00:00Z",
                "last_updated": "2026-01-01T00:00:00Z",
                "triggers": [
                    {
                        "device": "d",
                        "variable": "t",
                        "operator": ">",
                        "value": 1,
                        "actions": [{"method": "HTTP", "http_url": "http://127.0.0.1:9/x"}],
                    }
                ],
            }
        ),
    ),
    ev.ChannelDropped(8),
    ev.ConnectorChanged(9, "dc1"),
    ev.ConnectorDropped(9, "dc1"),
    ev.DTAccountSettingsPut(4, False, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
    ev.FeedTokenPut(3, "ft0a1b", 1, "kiosk", "ab" * 32, "2026-01-01T00:00:00Z"),
    ev.FeedTokenDropped(3),
]


def test_every_event_kind_round_trips_through_its_serialized_form() -> None:
    kinds = {type(e) for e in SAMPLES}
    assert kinds == set(ev.MetaEvent.__args__)  # type: ignore[attr-defined]
    for event in SAMPLES:
        data = ev.encode(event)
        assert ev.decode(data) == event
        assert msgspec.json.decode(data)["type"] == ev.kind(event)
    with pytest.raises(msgspec.ValidationError):
        ev.decode(b'{"type":"project_put","pk":"one"}')
    with pytest.raises(msgspec.ValidationError):
        ev.decode(b'{"type":"no_such_event"}')


def test_stored_events_keep_their_order_and_are_pruned_past_the_retention(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn)
    t0 = 1_700_000_000_000
    sqlite_metadata.write_events(conn, SAMPLES[:3], t0)
    sqlite_metadata.write_events(conn, SAMPLES[3:5], t0 + 1)
    got = sqlite_metadata.read_events(conn)
    assert [e for _, e in got] == SAMPLES[:5]
    assert [s for s, _ in got] == [1, 2, 3, 4, 5]
    kinds = conn.execute("SELECT kind FROM meta_events ORDER BY seq").fetchall()
    assert [k for (k,) in kinds] == [ev.kind(e) for e in SAMPLES[:5]]
    # a write one retention later drops what is older than the retention, never a newer one
    sqlite_metadata.write_events(conn, SAMPLES[5:6], t0 + sqlite_metadata.EVENT_RETENTION_MS + 1)
    got = sqlite_metadata.read_events(conn)
    assert [(s, e) for s, e in got] == [(4, SAMPLES[3]), (5, SAMPLES[4]), (6, SAMPLES[5])]
    # sequence numbers are never reused, even once every event was pruned
    sqlite_metadata.write_events(conn, SAMPLES[6:7], t0 + 10 * sqlite_metadata.EVENT_RETENTION_MS)
    assert [s for s, _ in sqlite_metadata.read_events(conn)] == [7]
    assert [s for s, _ in sqlite_metadata.read_events(conn, after=7)] == []


def test_applying_an_event_twice_or_out_of_date_changes_nothing_more() -> None:
    reg = Registry()
    for event in SAMPLES[:1] + [SAMPLES[4], SAMPLES[7], SAMPLES[9]]:
        reg.apply(event)
    once = snapshot(reg)
    reg.apply(SAMPLES[9])  # a series the writer applied before its commit, handed again
    assert snapshot(reg) == once
    for stale in (ev.DeviceDropped(99), ev.VariableDropped(99), ev.AccountDropped(99)):
        reg.apply(stale)
    reg.apply(ev.RolePut(99, 1, "user"))
    reg.apply(ev.KeyPut(99, "k", "h"))
    assert snapshot(reg) == once


# -- nothing but Registry.apply changes the registry's metadata ----------------------------------

# What names a registry in the code base (``self._reg``, ``engine.registry``, ``reg`` ...).
_REG = r"(?:\breg|\bregistry|\b_reg|\.registry|\._reg)"
_TABLES = (
    "projects|projects_by_pk|sites|devices|devices_by_pk|variables|variables_by_pk|series|"
    "series_by_pk|accounts|accounts_by_pk|key_owner|project_devices|device_variables|by_type|"
    "by_label|by_site|names|s_project|s_device|s_name|qc_limits|series_end|version"
)
MUTATIONS = [
    # a private mutator or applier of the registry called from outside (other classes' own
    # private methods, ``self._...``, are theirs)
    re.compile(
        r"(?<!\bself)\.(_put_\w+|_add_series|_drop_\w+|_bump|_refresh_limits|_series_capacity"
        r"|_forget_account|_unindex|_project_\w+|_site_\w+|_device_\w+|_variable_\w+"
        r"|_series_\w+|_account_\w+|_role_\w+|_key_\w+)\("
    ),
    # a registry table assigned, item-assigned, deleted from or changed in place
    re.compile(_REG + r"\.(" + _TABLES + r")\s*(\[[^\]]*\])?\s*(=|\+=|-=)(?!=)"),
    re.compile(r"\bdel\s+" + _REG + r"\.(" + _TABLES + r")\b"),
    re.compile(
        _REG + r"\.(" + _TABLES + r")(\[[^\]]*\])?\.(pop|popitem|setdefault|update|clear|add|"
        r"discard|remove|__setitem__|__delitem__|set)\("
    ),
    # a record changed in place: its document, an account's name, roles or keys
    re.compile(r"(?<!\bself)\.(roles|keys)\[[^\]]*\]\s*=(?!=)"),
    re.compile(r"(?<!\bself)\.(roles|keys)\.(pop|setdefault|update|clear|__setitem__)\("),
    re.compile(r"\b(?!self\b)(rec|dev|var|proj|site|account|acc|a|p|d|v|s)\.(doc|name)\s*=(?!=)"),
]


def test_nothing_outside_the_registry_changes_its_metadata() -> None:
    found = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "core" / "registry.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(p.search(line) for p in MUTATIONS)
    ]
    assert found == []


def test_the_patterns_catch_what_the_closures_did() -> None:
    """The old after-commit closures' statements, each caught by a pattern above."""
    old = [
        "reg._put_device(rec)",
        "reg.projects[rec.doc.id] = rec",
        "reg.accounts_by_pk[admin_account].roles[rec.pk] = 'admin'",
        "reg.sites.pop((rec.project_pk, rec.doc.id), None)",
        "rec.keys[key_id] = hash_",
        "rec.roles.pop(project_pk, None)",
        "rec.doc = doc",
        "self.registry.series_end = 5",
        "del reg.key_owner[key_id]",
        "engine.registry._bump()",
    ]
    caught = [line for line in old if any(p.search(line) for p in MUTATIONS)]
    assert caught == old
    for gone in ("put_device", "add_series", "drop_series", "bump", "put_variable", "drop_project"):
        assert not hasattr(Registry, gone)


def test_loading_the_tables_a_chunk_at_a_time_builds_what_their_events_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Registry.load`` (the stores' open) against the same rows applied as events, with
    chunks of 2 rows so that devices' variables and variables' sets straddle chunks."""
    from streamgauge.core import registry as registry_module
    from streamgauge.domain.readmodel import Tables

    monkeypatch.setattr(registry_module, "LOAD_CHUNK", 2)
    project = Project(id="p", name="P", created_at="2026-01-01T00:00:00Z")
    sites = [(1, 1, Site(id="s1", name="s1", project="p").model_dump_json())]
    devices = [
        (
            pk,
            1,
            Device(
                id=f"d{pk}",
                project="p",
                site="s1" if pk % 2 else None,
                type="ws" if pk < 3 else None,
                name=f"d{pk}",
                labels={"k": str(pk % 2)},
                metadata={},
            ).model_dump_json(),
        )
        for pk in (1, 2, 3)
    ]
    names = ["air_temp", "relative_humidity", "wind_speed"]
    variables = []
    for pk in range(1, 8):
        dev = (pk * 5) % 3 + 1  # a device's variables not in pk order, across chunks
        doc = Variable(
            id=f"{names[pk % 3]}_{pk}",
            name=names[pk % 3],
            project="p",
            device=f"d{dev}",
            limits=QCLimits(max=40) if pk == 4 else None,
            retention_days=30 if pk == 5 else None,
            metadata={"m": pk} if pk == 6 else {},
        )
        variables.append((pk, dev, doc.model_dump_json()))
    series = [
        (s, 1, variables[v - 1][1], v, set_)
        for s, (v, set_) in enumerate(
            [(1, 1), (2, 1), (1, 2), (3, 1), (4, 1), (1, 3), (5, 1), (6, 1), (7, 1), (4, 2)],
            start=1,
        )
    ]
    by_pk = {pk: doc for pk, _, doc in variables}
    events: list[ev.MetaEvent] = [
        ev.ProjectPut(1, project),
        *(ev.SiteStored(*row) for row in sites),
        *(ev.DeviceStored(*row) for row in devices),
        *(ev.VariableStored(*row) for row in variables),
        *(
            ev.SeriesAdded(s, p, d, v, set_, f"d{d}", orjson.loads(by_pk[v])["id"])
            for s, p, d, v, set_ in series
        ),
    ]
    applied = Registry()
    applied.apply_all(events)
    loaded = Registry()
    loaded.load(
        Tables(
            projects=[events[0]],
            sites=sites,
            devices=devices,
            variables=iter(variables),
            series=iter(series),
        )
    )
    assert snapshot(loaded) == snapshot(applied)
    assert loaded.series.get((1, 3)) == 6 and loaded.series.get((4, 2)) == 10
    assert sorted(loaded.device_variables[1]) == sorted(pk for pk, dev, _ in variables if dev == 1)
    assert loaded.variables_by_pk[4].limits == QCLimits(max=40)
    assert loaded.series_stations() == applied.series_stations()


def test_loading_shares_what_the_stations_variables_have_in_common() -> None:
    """The stored documents of the same variable on many stations differ in their device only:
    ``Registry.load`` parses the rest once, and builds what the events build; a document of
    another shape (members in another order, escapes in its device, a ``device`` key nested
    in its metadata, limits of its own) is parsed whole."""
    from streamgauge.core import registry as registry_module
    from streamgauge.domain.readmodel import Tables

    project = Project(id="p", name="P", created_at="2026-01-01T00:00:00Z")
    ids = ["d1", "d2", "d.3", "d:4", "d-5", "d6"]
    devices = [
        (
            pk,
            1,
            Device(
                id=id_, project="p", site=None, type=None, name=id_, labels={}, metadata={}
            ).model_dump_json(),
        )
        for pk, id_ in enumerate(ids, start=1)
    ]
    variables = []
    for dev, id_ in enumerate(ids, start=1):
        for j, name in enumerate(["air_temp", "relative_humidity"]):
            doc = Variable(
                id=name,
                name=name,
                project="p",
                device=id_,
                limits=QCLimits(max=40) if dev == 2 and j else None,
                metadata={"a": 1, "device": "x"} if dev == 6 and j else {},
            ).model_dump_json()
            variables.append((len(variables) + 1, dev, doc))
    reordered = orjson.loads(variables[0][2])
    reordered = {"device": reordered.pop("device"), **reordered}
    variables[0] = (1, 1, orjson.dumps(reordered).decode())
    events: list[ev.MetaEvent] = [
        ev.ProjectPut(1, project),
        *(ev.DeviceStored(*row) for row in devices),
        *(ev.VariableStored(*row) for row in variables),
    ]
    applied = Registry()
    applied.apply_all(events)
    loaded = Registry()
    loaded.load(
        Tables(projects=[events[0]], devices=devices, variables=iter(variables), series=iter([]))
    )
    assert snapshot(loaded) == snapshot(applied)
    assert loaded.variables_by_pk[4].limits == QCLimits(max=40)
    assert loaded.variables_by_pk[12].metadata == {"a": 1, "device": "x"}
    assert [loaded.variables_by_pk[pk].device for pk in range(1, 13, 2)] == ids
    stored = [doc for _, _, doc in variables]
    odd = variables[2][2].replace('"device":"d2"', '"device":"d\\"2"')  # not an id: a test
    stored += [odd, odd.replace('d\\"2', "d\\u00e92"), odd.replace('d\\"2', "d\u00e92")]
    heads: dict[str, Any] = {}
    docs, at, devs, whole = registry_module._stored_docs(stored, heads)
    assert [{**docs[j], "device": dev} for j, dev in zip(at, devs, strict=True)] == [
        orjson.loads(doc) for doc in stored
    ]
    assert whole == [0, 3, 11, 12, 13]  # another order, limits, metadata, escapes
    assert (
        sum(head is not None for head in heads.values()) == 2
    )  # parsed once per variable (but odd ones)


def _base_events() -> list[ev.MetaEvent]:
    """A project, two devices, eight variables (one with its own QC limits, wind among them),
    and two series: what ``test_a_run_of_new_series_*`` adds series to."""
    project = Project(id="p", name="P", created_at="2026-01-01T00:00:00Z")
    out: list[ev.MetaEvent] = [ev.ProjectPut(1, project)]
    for pk in (1, 2):
        doc = Device(
            id=f"d{pk}", project="p", site=None, type=None, name=f"d{pk}", labels={}, metadata={}
        )
        out.append(ev.DeviceStored(pk, 1, doc.model_dump_json()))
    names = ["air_temp", "wind_speed", "wind_gust", "relative_humidity"]
    for pk in range(1, 9):
        doc = Variable(
            id=f"v{pk}",
            name=names[pk % 4],
            project="p",
            device=f"d{pk % 2 + 1}",
            limits=QCLimits(min=-5, max=40) if pk == 3 else None,
        )
        out.append(ev.VariableStored(pk, pk % 2 + 1, doc.model_dump_json()))
    out += [ev.SeriesAdded(1, 1, 2, 1, 1, "d2", "v1"), ev.SeriesAdded(2, 1, 1, 2, 1, "d1", "v2")]
    return out


def _series_event(pk: int, var: int, set_: int) -> ev.SeriesAdded:
    dev = var % 2 + 1
    return ev.SeriesAdded(pk, 1, dev, var, set_, f"d{dev}", f"v{var}")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 14), st.integers(1, 10), st.integers(1, 3)),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_a_run_of_new_series_applied_at_once_is_what_one_by_one_gives(
    run: list[tuple[int, int, int]], dropped: bool
) -> None:
    """``Registry.apply_all`` takes a run of ``SeriesAdded`` a column at a time when all are
    new; any run (pks or keys taken or repeated, variables that do not exist, other sets of a
    variable, a dropped series' pk and key) leaves the registry as ``apply`` one by one does."""
    from streamgauge.core import registry as registry_module

    events = [_series_event(pk, var, set_) for pk, var, set_ in run]
    one_by_one, at_once = Registry(), Registry()
    for reg in (one_by_one, at_once):
        reg.apply_all(_base_events())
        if dropped:
            reg.apply(ev.SeriesDropped(2))
    for event in events:
        one_by_one.apply(event)
    before = registry_module.SERIES_RUN
    registry_module.SERIES_RUN = 1
    try:
        at_once.apply_all(events)
    finally:
        registry_module.SERIES_RUN = before
    assert snapshot(at_once) == snapshot(one_by_one)
    for name in ("series_count", "series_end"):
        assert getattr(at_once, name) == getattr(one_by_one, name)
    assert dict(at_once.series_extra) == dict(one_by_one.series_extra)
    n = one_by_one.series_end
    assert at_once.v_series[:9].tolist() == one_by_one.v_series[:9].tolist()
    for col in ("s_project", "s_device", "s_name", "s_variable", "s_set", "s_devid"):
        assert getattr(at_once, col)[:n].tolist() == getattr(one_by_one, col)[:n].tolist(), col


def test_new_series_applied_at_once_take_the_column_path() -> None:
    """A run of new series (pks past the end, keys unknown) is applied by ``_add_new_series``
    (not one by one), with the catalog's QC limits, a variable's own, and the wind roles."""
    reg = Registry()
    reg.apply_all(_base_events())
    seen: list[int] = []
    original = reg._series_added
    reg._series_added = lambda e: (seen.append(e.pk), original(e))  # type: ignore[method-assign]
    run = [_series_event(pk, var, set_) for pk, var, set_ in [(3, 3, 1), (4, 4, 1), (5, 3, 2)]]
    run += [_series_event(6, 5, 1), _series_event(7, 6, 1)]
    reg.apply_all(run)
    assert seen == []  # no event went the one-by-one way
    assert reg.series.get((3, 1)) == 3 and reg.series.get((3, 2)) == 5
    assert reg.series_extra == {(3, 2): 5}
    lim = reg.qc_limits
    assert (lim.lo[3], lim.hi[3]) == (-5, 40)  # v3's own limits
    assert (lim.lo[5], lim.hi[5]) == (-5, 40)
    assert lim.role[6] == 1 and lim.role[7] == 2  # wind_speed, wind_gust
    assert lim.group[4] == 1 and lim.group[3] == 2
    assert reg.series_by_pk[5].variable_id == "v3" and reg.series_by_pk[5].device_id == "d2"


def test_knows_series_answers_as_series_by_pk_does_for_each() -> None:
    """``Registry.knows_series`` (a worker's check that a relayed batch names no series it
    has not heard of yet) agrees with ``pk in series_by_pk`` over every pk of the batch."""
    reg = Registry()
    reg.apply_all(_base_events())
    reg.apply_all([_series_event(pk, var, 1) for pk, var in [(3, 3), (4, 4), (5, 5)]])
    reg.apply(ev.SeriesDropped(4))
    for pks in ([], [3], [3, 5, 3], [4], [3, 4], [6], [-1], [0], [5, reg.series_end]):
        batch = np.array(pks, np.int64)
        assert reg.knows_series(batch) == all(pk in reg.series_by_pk for pk in pks), pks
    assert reg.knows_series(np.array([3, 5], np.int64))
    assert not reg.knows_series(np.array([3, 4], np.int64))  # 4 was dropped


def test_the_events_of_series_first_seen_are_read_from_the_variable_columns() -> None:
    """``Registry.series_added``: the ``SeriesAdded`` of new keys, numbered on from a pk, with
    each variable's device, project and ids; None when a variable does not exist."""
    reg = Registry()
    reg.apply_all(_base_events())
    got = reg.series_added(3, [3, 4, 3], [1, 1, 2])
    assert got == [_series_event(3, 3, 1), _series_event(4, 4, 1), _series_event(5, 3, 2)]
    assert reg.series_added(3, [3, 99], [1, 1]) is None
    assert reg.series_added(3, [-1], [1]) is None
    reg.apply(ev.VariableDropped(4))
    assert reg.series_added(3, [4], [1]) is None
    assert reg.series_added(3, [], []) == []


def test_a_registry_that_keeps_no_qc_limits_holds_the_same_metadata() -> None:
    """A fan-out worker's registry (``keeps_qc_limits`` False: the writer runs QC) keeps no
    QC limits, whichever way its series come (one at a time, a run at once, a variable's new
    limits), and everything else as a writer's registry does."""
    variable = Variable(
        id="v4", name="air_temp", project="p", device="d1", limits=QCLimits(min=0, max=9)
    )
    events: list[ev.MetaEvent] = [
        *_base_events(),
        *(_series_event(pk, var, 1) for pk, var in [(3, 3), (4, 4), (5, 5), (6, 6), (7, 7)]),
        ev.VariableStored(4, 1, variable.model_dump_json()),  # new limits for its series
        _series_event(8, 3, 2),  # alone: one by one
    ]
    writer, worker = Registry(), Registry()
    worker.keeps_qc_limits = False
    for reg in (writer, worker):
        reg.apply_all(events)
    lim = worker.qc_limits
    assert all(len(col) == 0 for col in (lim.lo, lim.hi, lim.role, lim.group))
    assert (writer.qc_limits.lo[4], writer.qc_limits.hi[4]) == (0, 9)  # the writer's do change
    mine, theirs = snapshot(worker), snapshot(writer)
    assert mine.pop("qc_limits") != theirs.pop("qc_limits")
    assert mine == theirs


class _LiveDocs:
    """A ``DocSource`` reading each document from a live registry (as a fan-out worker's
    reads the database), counting the reads."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.reads = 0

    def site(self, rec: SiteRec) -> str:
        self.reads += 1
        return next(s.stored for s in self.reg.sites.values() if s.pk == rec.pk)

    def sites(self, recs: Sequence[SiteRec]) -> list[str]:
        self.reads += 1
        by_pk = {s.pk: s.stored for s in self.reg.sites.values()}
        return [by_pk[rec.pk] for rec in recs]

    def device(self, rec: DeviceRec) -> str:
        self.reads += 1
        return self.reg.devices_by_pk[rec.pk].stored


async def test_a_registry_that_keeps_no_documents_holds_the_same_metadata(
    engine: Engine,
) -> None:
    """A fan-out worker's registry (``docs`` set) keeps no site's or device's document (it
    reads each from its source when asked) and its device indexes follow label changes, moves
    and drops as a writer's do: it knows the labels a device had without its document."""
    md = engine.metadata
    await md.create_projects(ADMIN, [ProjectIn(id="p"), ProjectIn(id="q")])
    p, q = (md.project(ADMIN, i, Action.READ) for i in ("p", "q"))
    await md.create_sites(p, [SiteIn(id="s1", lat=40.0, state="UT"), SiteIn(id="s2")])
    await md.create_devices(
        p,
        [
            DeviceIn(id=f"d{i}", site="s1" if i % 2 else None, labels={"k": str(i % 2)})
            for i in range(5)
        ],
    )
    reg = engine.registry
    await md.update_devices(p, [(reg.devices[(p.pk, "d0")], {"labels": {"k": "z", "n": "1"}})])
    await md.update_devices(p, [(reg.devices[(p.pk, "d1")], {"labels": {}})])
    await md.update_site(reg.sites[(p.pk, "s2")], {"name": "Two"})
    await engine.transfer_device(reg.devices[(p.pk, "d3")], q)
    await md.delete_device(reg.devices[(p.pk, "d2")])
    await md.delete_site(reg.sites[(p.pk, "s2")])
    source = _LiveDocs(reg)
    docless = Registry()
    docless.docs = source
    docless.apply_all([e for _, e in await stored(engine)])
    assert source.reads == 0  # labels from the events, nothing read
    records = [*docless.sites.values(), *docless.devices_by_pk.values()]
    assert records and not any(isinstance(r._stored, str) for r in records)  # noqa: SLF001
    assert snapshot(docless) == snapshot(reg)  # documents read from the source
    assert source.reads > 0
    assert docless.devices_with_label(p.pk, "k", "z") == {reg.devices[(p.pk, "d0")].pk}
    assert docless.devices_with_label(p.pk, "k", "1") == set()  # d1 has none now, d3 moved
    # The place filters' site columns: every document in one read, the same columns.
    reads = source.reads
    mine, theirs = site_columns(docless, p.pk), site_columns(reg, p.pk)
    assert source.reads == reads + 1
    assert (mine.ids, mine.attrs["state"].tolist()) == (theirs.ids, theirs.attrs["state"].tolist())
    assert mine.ids == ["s1"] and mine.attrs["state"].tolist() == ["UT"]
    assert np.array_equal(mine.lat, theirs.lat) and np.isnan(mine.lon).all()
