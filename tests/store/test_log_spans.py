"""The SQLite log's per-project spans (migration 10): a project's catch-up reads only its own
rows, by index ranges; consecutive batches of one project share a span; the existing log of a
database made before the migration gets its spans when it is migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.log import IngestColumns
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn
from streamgauge.store.sqlite import metadata
from streamgauge.store.sqlite.schema import MIGRATIONS, migrate
from streamgauge.store.sqlite.store import _SPANS_SQL, SqliteStore
from tests.store.rules import log_rules


async def two_projects(store: SqliteStore) -> tuple[dict[str, int], dict[str, int]]:
    """Projects "a" and "b", one device each with one variable: (project pks, variable pks)."""
    reg = store.registry
    await store.write(
        lambda tx: metadata.create_projects(
            tx, reg, [ProjectIn(id="a"), ProjectIn(id="b")], skip_existing=False, admin_account=None
        )
    )
    for name in ("a", "b"):
        dev = DeviceIn(id=f"dev-{name}", variables=[VariableIn(name="t")])
        prec = reg.projects[name]
        await store.write(
            lambda tx, prec=prec, dev=dev: metadata.create_devices(
                tx, reg, prec, [dev], skip_existing=False
            )
        )
    projects = {name: reg.projects[name].pk for name in ("a", "b")}
    variables = {
        name: next(
            v.pk
            for v in reg.variables_by_pk.values()
            if reg.devices_by_pk[v.device_pk].project_pk == projects[name]
        )
        for name in ("a", "b")
    }
    return projects, variables


def batch(project_pk: int, var_pk: int, t0: int, n: int) -> IngestColumns:
    return IngestColumns(
        project_pk,
        np.full(n, var_pk, np.int64),
        np.ones(n, np.int64),
        np.arange(t0, t0 + n, dtype=np.int64),
        [float(i) for i in range(n)],
        np.zeros(n, np.int64),
    )


def spans(path: Path) -> list[tuple[int, int, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT project_pk, first, last FROM log_spans ORDER BY first"
        ).fetchall()


async def test_a_project_catch_up_reads_only_its_rows(tmp_path: Path) -> None:
    published: list[Batch] = []
    store = SqliteStore(tmp_path / "db", rules=log_rules(), registry=Registry())
    await store.open(published.append)
    try:
        p, v = await two_projects(store)
        t = 0
        for _ in range(3):  # a busy "b" between two small batches of "a"
            await store.append(batch(p["a"], v["a"], t, 2))
            for _ in range(5):
                await store.append(batch(p["b"], v["b"], t, 100))
                t += 100
        a_rows = await store.read_log(0, store.head, 1000, project_pk=p["a"])
        assert len(a_rows) == 6 and set(store.registry.s_project[a_rows.series]) == {p["a"]}
        # consecutive batches of "b" share one span: 3 of "a" and 3 of "b"
        got = spans(tmp_path / "db")
        assert [s[0] for s in got] == [p["a"], p["b"]] * 3
        assert got[1][2] - got[1][1] + 1 == 500
        # paging: a full page ends at its last row
        page = await store.read_log(0, store.head, 4, project_pk=p["a"])
        assert page.cursors.tolist() == a_rows.cursors.tolist()[:4]
    finally:
        await store.close()


def test_the_span_read_is_an_index_range_read_without_a_sort(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db")
    migrate(conn)
    plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _SPANS_SQL, (0, 9, 1, 9)))
    assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
    assert "SEARCH o USING INTEGER PRIMARY KEY" in plan, plan


def test_migration_gives_the_existing_log_its_spans(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrate(conn, MIGRATIONS[:7])
    conn.executescript(
        """
        INSERT INTO projects VALUES (1, 'a', '{}'), (2, 'b', '{}');
        INSERT INTO devices VALUES (1, 1, 'x', '{}'), (2, 2, 'y', '{}');
        INSERT INTO variables VALUES (1, 1, 't', '{}'), (2, 2, 't', '{}');
        INSERT INTO series VALUES (1, 1, 1, 1, 1), (2, 2, 2, 2, 1);
        """
    )
    owners = [1, 1, 2, 2, 2, 1, 9, 1, 2]  # 9: a deleted series (no row in ``series``)
    conn.executemany(
        "INSERT INTO obs VALUES (?, ?, ?, 1.0, 0, 0)",
        [(c, s, c) for c, s in enumerate(owners, start=1)],
    )
    migrate(conn)
    got = conn.execute("SELECT project_pk, first, last FROM log_spans ORDER BY first").fetchall()
    # the deleted series' row is in no span; runs around it join (its row is filtered anyway)
    assert got == [(1, 1, 2), (2, 3, 5), (1, 6, 8), (2, 9, 9)]
    conn.close()
