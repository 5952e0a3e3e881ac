"""``meta_events`` stays bounded, and a node whose position is older than what it keeps
reloads the metadata from the tables instead of replaying (``core/metafeed.py``): two
PostgreSQL stores on one database, each with its own registry (two nodes' stores)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamgauge.core import metafeed
from streamgauge.domain.model import DeviceIn, ProjectIn, SiteIn, VariableIn
from streamgauge.store.factory import backends
from streamgauge.store.postgres import metadata as pg_metadata
from tests.core.test_registry_events import snapshot
from tests.pg import fresh_database
from tests.store.conformance.harness import Harness, settings_for


@pytest.fixture
def place() -> Iterator[tuple[str, Path]]:
    with fresh_database() as url, tempfile.TemporaryDirectory() as tmp:
        yield url, Path(tmp)


def node(place: tuple[str, Path], name: str) -> Harness:
    url, tmp = place
    return Harness(backends()["postgresql"], settings_for("postgresql", tmp / name, url))


async def projects(h: Harness, *ids: str) -> None:
    reg = h.store.registry
    await h.write(
        lambda tx: h.md.create_projects(
            tx, reg, [ProjectIn(id=i) for i in ids], skip_existing=False, admin_account=None
        )
    )


async def kept(h: Harness) -> list[int]:
    return await h.read(
        lambda c: [s for (s,) in c.execute("SELECT seq FROM meta_events ORDER BY seq")]
    )


async def test_the_feed_keeps_at_most_its_count_and_its_hour(
    place: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_metadata, "EVENT_KEEP_MAX", 5)
    a = node(place, "a")
    await a.open()
    try:
        for i in range(12):
            await projects(a, f"p{i}")
        assert await kept(a) == [8, 9, 10, 11, 12]  # one event a project
        # Older than the hour: gone with the next write.
        await a.write(lambda tx: tx.execute("UPDATE meta_events SET time = 0 WHERE seq < 12"))
        await projects(a, "last")
        assert await kept(a) == [12, 13]
    finally:
        await a.close()


async def test_a_node_behind_what_the_feed_keeps_reloads_the_metadata(
    place: tuple[str, Path],
) -> None:
    a, b = node(place, "a"), node(place, "b")
    await a.open()
    await projects(a, "p1", "p2")
    ra = a.store.registry
    p1 = ra.projects["p1"]
    await a.write(lambda tx: a.md.create_sites(tx, ra, p1, [SiteIn(id="s1")], skip_existing=False))
    dev = DeviceIn(id="d1", site="s1", variables=[VariableIn(name="air_temp")])
    await a.write(lambda tx: a.md.create_devices(tx, ra, p1, [dev], skip_existing=False))
    await b.open()  # B starts here, then hears nothing for a long time
    rb = b.store.registry
    behind = await b.store.events_head()
    try:
        # Meanwhile on A: a project dropped (with its site and device), one made, one changed.
        await a.write(lambda tx: a.md.delete_project(tx, ra, ra.projects["p1"]))
        await projects(a, "p3")
        p2 = ra.projects["p2"]
        await a.write(lambda tx: a.md.update_project(tx, ra, p2, {"name": "Two"}))
        await a.write(
            lambda tx: a.md.create_devices(
                tx, ra, p2, [dev.model_copy(update={"site": None})], skip_existing=False
            )
        )
        # While the feed keeps them, B replays the events.
        runs = await metafeed.read_meta(b.store, behind, None, 1000)
        assert runs and not any(run.reload for _, _, run in runs)
        # Pruned: B gets one reload run in their place, up to the head.
        await a.write(lambda tx: tx.execute("DELETE FROM meta_events"))
        head = await a.store.events_head()
        [(first, last, run)] = await metafeed.read_meta(b.store, behind, None, 1000)
        assert (first, last, run.reload) == (behind + 1, head, True)
        assert "p1" in rb.projects and snapshot(rb) != snapshot(ra)
        metafeed.apply_reload(rb, run)
        assert snapshot(rb) == snapshot(ra)
        assert set(rb.projects) == {"p2", "p3"} and rb.projects["p2"].doc.name == "Two"
        # Up to date: nothing to read.
        assert await metafeed.read_meta(b.store, head, None, 1000) == []
    finally:
        await b.close()
        await a.close()
