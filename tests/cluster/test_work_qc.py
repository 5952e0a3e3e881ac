"""QC checks that carry state from row to row (rate of change, persistence) judge the same
whichever node ingests: two PostgreSQL stores on one database (two nodes' stores, each with its
own registry and writer) take a series' rows alternately, and every row's flags equal those one
store gives the same batches."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from streamgauge.core import qc
from streamgauge.domain.model import DeviceIn, ProjectIn, QCLimits, VariableIn
from streamgauge.store.factory import backends
from tests.pg import fresh_database
from tests.store.conformance.harness import Harness, cols, settings_for

LIMITS = QCLimits(min=-50.0, max=60.0, max_rate=1.0, max_persist_s=30.0)
T0 = 1_700_000_000_000


def batches() -> list[list[tuple[int, float]]]:
    """(time, value) batches of one series: steps too fast for the rate limit at batch
    boundaries, runs of one value longer than the persistence limit across batches, a range
    failure (takes no part in the chain) and a backfilled row."""
    out: list[list[tuple[int, float]]] = []
    t = T0
    values = [10, 10, 10, 10, 10, 30, 31, 31, 31, 31, 31, 31, 5, 99, 6, 6, 6, 6, 6, 6, 20]
    for i, v in enumerate(values):
        out.append([(t, float(v))])
        if i % 4 == 3:  # now and then two rows in one batch
            out[-1].append((t + 5_000, float(v)))
        t += 10_000
    out.append([(T0 + 36_000, 12.0)])  # backfill: judged within its batch only
    return out


async def _seed(h: Harness) -> int:
    reg = h.store.registry
    await h.write(
        lambda tx: h.md.create_projects(
            tx, reg, [ProjectIn(id="p")], skip_existing=False, admin_account=None
        )
    )
    p = reg.projects["p"]
    dev = DeviceIn(id="d", variables=[VariableIn(name="t", limits=LIMITS)])
    await h.write(lambda tx: h.md.create_devices(tx, reg, p, [dev], skip_existing=False))
    (var,) = reg.variables_by_pk.values()
    return var.pk


async def _flags(
    nodes: int, restart_at: int | None = None, *, crash: bool = False
) -> list[tuple[int, int]]:
    """(time, flags) of every stored row, in cursor order, after the batches were appended
    round robin by ``nodes`` stores on one fresh database (every store closed and opened
    again before batch ``restart_at``: they start from the QC checkpoint and the log; with
    ``crash``, closed without writing a checkpoint, as after ``kill -9``)."""
    with fresh_database() as url, tempfile.TemporaryDirectory() as place:
        first = Harness(backends()["postgresql"], settings_for("postgresql", Path(place), url))
        await first.open()
        var = await _seed(first)
        project = next(iter(first.store.registry.projects.values())).pk
        stores = [first]
        for i in range(1, nodes):
            h = Harness(
                backends()["postgresql"], settings_for("postgresql", Path(place) / str(i), url)
            )
            await h.open()
            stores.append(h)
        try:
            for i, batch in enumerate(batches()):
                if i == restart_at:
                    for h in stores:
                        if crash:
                            h.store._checkpoint_qc = lambda: None  # type: ignore[attr-defined]
                        await h.reopen()
                times, values = zip(*batch, strict=True)
                h = stores[i % nodes]
                await h.store.append(cols(project, [var] * len(times), list(times), list(values)))
            log = await stores[0].store.read_log(0, 10**9, 10_000)
            return list(zip(log.times.tolist(), log.qc.tolist(), strict=True))
        finally:
            for h in stores:
                await h.close()


async def test_rate_and_persistence_verdicts_do_not_depend_on_the_node() -> None:
    one = await _flags(1)
    two = await _flags(2)
    assert two == one
    flags = np.array([f for _, f in one])
    # The checks did flag rows, each kind (else the comparison would prove little).
    assert (flags & qc.RATE).any() and (flags & qc.PERS).any() and (flags & qc.RANGE).any()
    assert not (flags[: len(flags) // 4] & qc.PERS).all()


async def test_verdicts_go_on_alike_after_every_node_restarted() -> None:
    """Nodes restarted in the middle of a persistence run and after a rate step load the QC
    checkpoint and replay the log after it with the stored flags: the verdicts do not
    change."""
    one = await _flags(1)
    assert await _flags(2, restart_at=9) == one
    assert await _flags(3, restart_at=5, crash=True) == one  # the whole log replayed


async def test_a_node_that_restarts_keeps_judging_from_the_shared_state() -> None:
    """A store opened later (a node joining) judges its first row against the other node's
    last one, and the other follows it from the log."""
    with fresh_database() as url, tempfile.TemporaryDirectory() as place:
        a = Harness(backends()["postgresql"], settings_for("postgresql", Path(place), url))
        await a.open()
        var = await _seed(a)
        project = next(iter(a.store.registry.projects.values())).pk
        await a.store.append(cols(project, [var], [T0], [10.0]))
        b = Harness(backends()["postgresql"], settings_for("postgresql", Path(place) / "b", url))
        await b.open()
        try:
            await a.store.append(cols(project, [var], [T0 + 10_000], [11.0]))
            await b.store.append(cols(project, [var], [T0 + 20_000], [40.0]))  # 2.9/s: RATE
            await a.store.append(cols(project, [var], [T0 + 30_000], [40.5]))  # A learns of B's
            log = await a.store.read_log(0, 10**9, 100)
            assert log.qc.tolist() == [0, 0, qc.RATE, 0]
        finally:
            await b.close()
            await a.close()
