"""One log for several processes: stores of a backend that nodes share (PostgreSQL), opened on
the same database, append concurrently; cursors stay unique, gapless and in commit order, and
the duplicate/conflict rule holds across them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from streamgauge.config import Settings
from streamgauge.domain.errors import Conflict
from streamgauge.store.factory import backends
from tests.pg import fresh_database
from tests.store.conformance.harness import Harness, cols, rows, seed

SHARED = ["postgresql"]  # backends whose storage several processes may open at once
BATCHES = 40  # per writer
ROWS = 25  # per batch


def _open_in_thread(h: Harness, results: dict[str, object], go: threading.Barrier) -> None:
    """Run one store in its own thread and event loop (as another node would)."""

    async def run() -> None:
        store = await h.open()
        s = h.store.registry
        var = [v.pk for v in s.variables_by_pk.values()]
        project = next(iter(s.projects.values())).pk
        go.wait()
        got = []
        for b in range(BATCHES):
            times = [1_000_000 + (b * ROWS + i) * 10 + int(h.settings.readers) for i in range(ROWS)]
            r = await store.append(cols(project, [var[0]] * ROWS, times, [float(b)] * ROWS))
            got.append((r.first_cursor, r.last_cursor))
        results["ranges"] = got
        await h.close()

    asyncio.run(run())


@pytest.mark.parametrize("name", SHARED)
async def test_concurrent_appends_from_two_stores_get_one_gapless_log(
    name: str, tmp_path: Path
) -> None:
    with fresh_database() as url:
        first = Harness(backends()[name], _settings(tmp_path / "a", url, readers=1))
        await first.open()
        await seed(first)
        await first.close()
        # Two stores on the same database, each in its own thread and loop, appending at once
        # (their times differ, so every row is new).
        nodes = [
            Harness(backends()[name], _settings(tmp_path / "a", url, readers=1)),
            Harness(backends()[name], _settings(tmp_path / "b", url, readers=2)),
        ]
        results: list[dict[str, object]] = [{}, {}]
        go = threading.Barrier(2)
        threads = [
            threading.Thread(target=_open_in_thread, args=(h, r, go))
            for h, r in zip(nodes, results, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.to_thread(t.join)
        ranges = [rg for r in results for rg in r["ranges"]]  # type: ignore[attr-defined]
        total = 2 * BATCHES * ROWS
        # Each batch got ROWS consecutive cursors; together they cover 1..total exactly once.
        covered = sorted(c for lo, hi in ranges for c in range(lo, hi + 1))
        assert covered == list(range(1, total + 1))
        assert all(hi - lo + 1 == ROWS for lo, hi in ranges)
        # Commit order is cursor order: receive times (taken under the lock) never go back, and
        # no batch interleaves another.
        reader = Harness(backends()[name], _settings(tmp_path / "c", url, readers=1))
        store = await reader.open()
        try:
            assert store.head == total  # a store opened later starts at the shared head
            log = rows(await store.read_log(0, total, total + 1))
            assert [c for c, _, _, _ in log] == list(range(1, total + 1))
            with psycopg.connect(url) as conn:
                received = [r[0] for r in conn.execute("SELECT received FROM obs ORDER BY cursor")]
                head = conn.execute("SELECT value FROM state WHERE key = 'head'").fetchone()
            assert received == sorted(received)  # committed one after another, in cursor order
            assert head is not None and head[0] == total
            # every batch's rows are contiguous: a batch is one value, written by one node
            values = [v for _, _, _, v in log]
            blocks = [values[i : i + ROWS] for i in range(0, total, ROWS)]
            assert all(len(set(b)) == 1 for b in blocks)
        finally:
            await reader.close()


@pytest.mark.parametrize("name", SHARED)
async def test_duplicates_and_conflicts_are_judged_against_what_other_stores_wrote(
    name: str, tmp_path: Path
) -> None:
    with fresh_database() as url:
        a = Harness(backends()[name], _settings(tmp_path / "a", url))
        await a.open()
        s = await seed(a)
        b = Harness(backends()[name], _settings(tmp_path / "b", url))
        await b.open()
        try:
            var = s.var["d0.t"]
            batch = cols(s.project_pk, [var] * 3, [10, 20, 30], [1.0, 2.0, 3.0])
            r = await a.store.append(batch)
            assert (r.accepted, r.first_cursor, r.last_cursor) == (3, 1, 3)
            # The same batch sent to the other node: all duplicates, nothing written.
            again = await b.store.append(batch)
            assert (again.accepted, again.duplicates) == (0, 3)
            # A different value for a stored key, on the other node: a conflict naming the row.
            with pytest.raises(Conflict) as info:
                await b.store.append(cols(s.project_pk, [var, var], [40, 20], [4.0, 9.0]))
            assert [d["index"] for d in info.value.details] == [1]
            # New rows on the other node continue the one log.
            more = await b.store.append(cols(s.project_pk, [var], [50], [5.0]))
            assert (more.first_cursor, more.last_cursor) == (4, 4)
            back = await a.store.append(cols(s.project_pk, [var], [60], [6.0]))
            assert (back.first_cursor, back.last_cursor) == (5, 5)
            got = rows(await a.store.read_log(0, 10, 10))
            assert [(c, t, v) for c, _, t, v in got] == [
                (1, 10, 1.0),
                (2, 20, 2.0),
                (3, 30, 3.0),
                (4, 50, 5.0),
                (5, 60, 6.0),
            ]
            assert np.all(np.diff([c for c, _, _, _ in got]) == 1)
        finally:
            await b.close()
            await a.close()


async def _queued_together(store: Any, batches: list[Any]) -> list[Any]:
    """Append ``batches`` while the writer is busy with another write, so they wait in its
    queue together and it takes them as one group; each one's result or error."""
    gate = threading.Event()
    busy = asyncio.ensure_future(store.write(lambda tx: gate.wait(30)))
    await asyncio.sleep(0.05)  # the writer has taken the blocking write
    appends = [asyncio.ensure_future(store.append(b)) for b in batches]
    await asyncio.sleep(0.05)  # every append is queued behind it
    gate.set()
    await busy
    return list(await asyncio.gather(*appends, return_exceptions=True))


@pytest.mark.parametrize("name", SHARED)
async def test_appends_queued_together_are_each_accepted_or_refused_alone(
    name: str, tmp_path: Path
) -> None:
    with fresh_database() as url:
        h = Harness(backends()[name], _settings(tmp_path / "a", url))
        store = await h.open()
        s = await seed(h)
        try:
            p, t, w = s.project_pk, s.var["d0.t"], s.var["d1.w"]
            await store.append(cols(p, [t, t], [10, 20], [1.0, 2.0]))
            # One transaction for the group: a conflict is refused alone, the others commit
            # with contiguous cursors in queue order, text and missing values included.
            got = await _queued_together(
                store,
                [
                    cols(p, [t, t], [30, 40], [3.0, 4.0]),
                    cols(p, [t, t], [50, 20], [5.0, 9.0]),  # 20 is stored as 2.0
                    cols(p, [w, w, w], [1, 2, 3], ["x", 1.5, None]),
                ],
            )
            assert [(r.accepted, r.first_cursor, r.last_cursor) for r in got[::2]] == [
                (2, 3, 4),
                (3, 5, 7),
            ]
            assert isinstance(got[1], Conflict)
            assert [d["index"] for d in got[1].details] == [1]
            with psycopg.connect(url) as conn:
                xids = conn.execute("SELECT DISTINCT xmin::text FROM obs WHERE cursor > 2")
                assert len(xids.fetchall()) == 1  # one commit for the group
            # A batch queued twice in one group: the group rolls back and each runs alone,
            # so the second is all duplicates and the cursors stay gapless.
            same = cols(p, [t], [60], [6.0])
            got = await _queued_together(store, [same, same, cols(p, [t], [70], [7.0])])
            assert [(r.accepted, r.duplicates, r.first_cursor) for r in got] == [
                (1, 0, 8),
                (0, 1, None),
                (1, 0, 9),
            ]
            log = rows(await store.read_log(0, 100, 100))
            assert [c for c, _, _, _ in log] == list(range(1, 10))
            assert [v for _, _, _, v in log] == [1.0, 2.0, 3.0, 4.0, "x", 1.5, None, 6.0, 7.0]
            assert [b.first for b in h.published if len(b.cursors)] == [1, 3, 5, 8, 9]
            assert store.head == 9
        finally:
            await h.close()


def _settings(place: Path, url: str, readers: int = 4) -> Settings:
    return Settings(data=place, store=url, qc=True, readers=readers)
