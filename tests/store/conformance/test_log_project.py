"""``read_log`` with ``project_pk`` (a project's catch-up): every row of the project, in cursor
order, paged by the contract (a full page covers up to its last row, a short one up to
``upto``), after a reopen, and after a device moved in from another project."""

from __future__ import annotations

import random
from typing import Any

from streamgauge.domain.batch import Batch
from tests.store.conformance.harness import Harness, Seeded, cols, seed


async def project_rows(h: Harness, project_pk: int, after: int, limit: int) -> list[int]:
    """The cursors of ``project_pk``'s rows after ``after`` (by the registry's series), read
    page by page as a catch-up does."""
    store = h.store
    reg = store.registry
    upto = store.head
    got: list[int] = []
    while True:
        batch: Batch = await store.read_log(after, upto, limit, project_pk=project_pk)
        assert batch.project_pk == project_pk
        cursors = batch.cursors.tolist()
        assert cursors == sorted(cursors) and all(after < c <= upto for c in cursors)
        mine = reg.s_project[batch.series] == project_pk
        got += batch.cursors[mine].tolist()
        if len(batch) < limit:
            return got
        after = cursors[-1]


async def all_rows(h: Harness) -> list[tuple[int, int]]:
    """(cursor, project) of every row of the log, by the registry's series."""
    batch = await h.store.read_log(0, h.store.head, 10_000)
    reg = h.store.registry
    return list(zip(batch.cursors.tolist(), reg.s_project[batch.series].tolist(), strict=True))


async def interleave(h: Harness, s: Seeded, batches: int, rng: random.Random, t0: int = 0) -> None:
    t = {"p": t0, "q": t0}
    for _ in range(batches):
        n = rng.randint(1, 5)
        if rng.random() < 0.6:
            var = [s.var[rng.choice(["d0.t", "d0.w", "d1.t", "d1.w"])] for _ in range(n)]
            project, key = s.project_pk, "p"
        else:
            var, project, key = [s.other_var] * n, s.other_pk, "q"
        times = [t[key] + i for i in range(n)]  # distinct times: no duplicates
        t[key] += n
        values: list[Any] = [float(i) for i in range(n)]
        await h.store.append(cols(project, var, times, values))


async def test_a_project_read_has_every_row_of_the_project(backend: Harness) -> None:
    s = await seed(backend)
    await interleave(backend, s, 60, random.Random(7))
    log = await all_rows(backend)
    for project in (s.project_pk, s.other_pk):
        want = [c for c, p in log if p == project]
        for after in (0, 1, len(log) // 2, len(log)):
            for limit in (1, 3, 1000):
                assert await project_rows(backend, project, after, limit) == [
                    c for c in want if c > after
                ]
    await backend.reopen()
    await interleave(backend, s, 10, random.Random(8), 10_000)  # after a reopen, spans go on
    log = await all_rows(backend)
    want = [c for c, p in log if p == s.project_pk]
    assert await project_rows(backend, s.project_pk, 0, 4) == want


async def test_rows_of_a_device_moved_in_are_read_with_the_project(backend: Harness) -> None:
    s = await seed(backend)
    await interleave(backend, s, 30, random.Random(9))
    store = backend.store
    reg = store.registry
    d0 = reg.devices[(s.project_pk, "d0")]
    head = store.head
    q_before = [c for c, p in await all_rows(backend) if p == s.other_pk]
    await backend.backend.ops.transfer_device(store, d0, reg.projects_by_pk[s.other_pk])
    await interleave(backend, s, 10, random.Random(10), 10_000)
    log = await all_rows(backend)
    moved = [c for c, p in log if p == s.other_pk]
    assert await project_rows(backend, s.other_pk, 0, 5) == moved
    # the moved rows (committed under the first project) are among them
    assert len([c for c in moved if c <= head]) > len(q_before)
    assert await project_rows(backend, s.project_pk, 0, 5) == [
        c for c, p in log if p == s.project_pk
    ]
