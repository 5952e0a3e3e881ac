"""The DT face's reported state (``faces/dt/state.Reported``): its batch merge by columns gives
what merging every row in turn by ``event_type_of`` gives, for the devices a read asked about;
the others are loaded from the log when first asked for."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from streamgauge.auth import Action, Principal
from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.domain.batch import Batch
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn
from streamgauge.domain.records import ProjectRec
from streamgauge.faces.dt.events import (
    TEMPERATURE_EVENT,
    TEMPERATURE_EVENT_NAME,
    event_type_of,
)
from streamgauge.faces.dt.state import Reported


def reference(engine: Engine, batches: list[Batch]) -> dict[int, dict[str, Any]]:
    """The latest (time, cursor, value) per device and event type, a row at a time."""
    reg = engine.registry
    out: dict[int, dict[str, Any]] = {}
    for batch in batches:
        for i, s in enumerate(batch.series.tolist()):
            rec = reg.series_by_pk.get(s)
            event_type = event_type_of(reg, rec) if rec is not None else None
            if rec is None or event_type is None:
                continue
            row = (int(batch.times[i]), int(batch.cursors[i]), batch.values[i])
            have = out.setdefault(rec.device_pk, {}).get(event_type)
            if have is None or row[:2] > have[:2]:
                out[rec.device_pk][event_type] = row
    return out


@contextlib.asynccontextmanager
async def project_p(tmp_path: Path) -> AsyncIterator[tuple[Engine, ProjectRec]]:
    """A started engine with a project ``p``; stopped after."""
    engine = Engine(Settings(data=tmp_path / "data", delivery_poll_seconds=3600), "token")
    await engine.start()
    try:
        admin = Principal(None)
        await engine.metadata.create_projects(admin, [ProjectIn(id="p")])
        yield engine, engine.metadata.project(admin, "p", Action.READ)
    finally:
        await engine.stop()


async def test_the_batch_merge_by_columns_matches_the_row_by_row_one(tmp_path: Path) -> None:
    async with project_p(tmp_path) as (engine, project):
        plain = [
            VariableIn(id=v, name=n)
            for v, n in (
                ("temperature", "temperature"),
                ("pressure", "pressure"),
                ("air_temp", "air_temp"),
            )
        ]
        event = VariableIn(id=TEMPERATURE_EVENT, name=TEMPERATURE_EVENT_NAME)
        # d2's temperature rows are samples (it has temperature event rows): not events.
        await engine.metadata.create_devices(
            project,
            [
                DeviceIn(id="d1", variables=plain),
                DeviceIn(id="d2", variables=[*plain, event]),
                DeviceIn(id="d3", variables=plain[1:]),
            ],
        )
        reg = engine.registry
        keys = [
            (dev.pk, var)
            for dev in (reg.devices[(project.pk, d)] for d in ("d1", "d2", "d3"))
            for var in ("temperature", "pressure", "air_temp", TEMPERATURE_EVENT)
            if (dev.pk, var) in reg.variables
        ]
        rng = np.random.default_rng(7)
        for _ in range(3):  # every key's series exists, then rows in any order, times repeated
            # A key's value at a time is always the same: a repeated row is a duplicate.
            picks = zip(
                rng.integers(0, len(keys), 40).tolist(),
                rng.integers(1, 6, 40).tolist(),
                strict=True,
            )
            body = b"\n".join(
                b'{"device":"%s","variable":"%s","time":%d,"value":%s}'
                % (
                    reg.devices_by_pk[keys[k][0]].doc.id.encode(),
                    keys[k][1].encode(),
                    t * 1000,
                    b'"{}"' if keys[k][1] == TEMPERATURE_EVENT else b"%d.5" % (k * 10 + t),
                )
                for k, t in picks
            )
            await engine.ingest(project, body, ndjson=True)
        history = await engine.store.read_log(0, engine.store.head, 10_000)
        order = rng.permutation(len(history))  # batches of rows in any cursor order
        batches = [history.pick(order[k : k + 7]) for k in range(0, len(history), 7)]
        got = Reported(engine)
        d3 = reg.devices[(project.pk, "d3")].pk
        for dev in reg.devices_by_pk.values():
            if dev.pk != d3:  # a device no read asked about: its rows are not kept
                got.watch(dev.pk)
        for batch in batches:
            got.on_batch(batch)
        want = reference(engine, batches)
        assert want and any(want.values()) and want.get(d3)
        for dev in reg.devices_by_pk.values():
            expected = {} if dev.pk == d3 else want.get(dev.pk, {})
            assert got.latest(dev.pk) == expected, dev.doc.id
        d2 = reg.devices[(project.pk, "d2")].pk
        assert got.latest(d2)["temperature"][2] == "{}"  # the event row, not a sample


async def test_a_device_no_read_asked_about_is_loaded_from_the_log_and_then_kept_live(
    tmp_path: Path,
) -> None:
    """Rows of a device no DT read asked about are not merged as they commit; the first read
    loads its state from the log, and a row committed while that read is under way (after the
    log was read) is merged live, not missed."""
    async with project_p(tmp_path) as (engine, project):
        pressure = VariableIn(id="pressure", name="pressure")
        await engine.metadata.create_devices(project, [DeviceIn(id="d1", variables=[pressure])])
        dev = engine.registry.devices[(project.pk, "d1")]

        def row(t: int) -> bytes:
            return b'{"device":"d1","variable":"pressure","time":%d,"value":%d.5}' % (t, t)

        await engine.ingest(project, b"\n".join(row(t * 1000) for t in (1, 3, 2)), ndjson=True)
        got = Reported(engine)
        head = engine.store.head
        got.on_batch(await engine.store.read_log(0, head, 100))  # not watched: not kept
        assert got.latest(dev.pk) == {}

        history = engine.history

        async def history_then_a_commit(*args: Any, **kwargs: Any) -> Batch:
            found = await history(*args, **kwargs)  # the log as it was
            before = engine.store.head
            await engine.ingest(project, row(10_000), ndjson=True)
            got.on_batch(await engine.store.read_log(before, engine.store.head, 100))
            return found

        engine.history = history_then_a_commit  # type: ignore[method-assign]
        await got.load_devices([dev])
        engine.history = history  # type: ignore[method-assign]
        t, _, value = got.latest(dev.pk)["pressure"]
        assert (t, value) == (10_000, 10_000.5)
        for t, newest in ((20_000, 20_000), (15_000, 20_000)):  # live from now on
            before = engine.store.head
            await engine.ingest(project, row(t), ndjson=True)
            got.on_batch(await engine.store.read_log(before, engine.store.head, 100))
            assert got.latest(dev.pk)["pressure"][0] == newest
