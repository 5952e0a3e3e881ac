"""Core operations of the PostgreSQL store beside the log and the metadata CRUD (the twin of
``store/sqlite/ops.py``): moving a device to another project, and the health probe.
"""

from __future__ import annotations

from streamgauge.core.registry import (
    DeviceRec,
    ProjectRec,
    Registry,
    SeriesRec,
    VariableRec,
)
from streamgauge.store.api import Store
from streamgauge.store.postgres.conn import Conn, Tx


def move_device(tx: Tx, reg: Registry, dev: DeviceRec, target: ProjectRec) -> None:
    """Move ``dev`` to ``target`` in the write transaction ``tx``; the registry follows after the
    commit. The device keeps its pk, variables, series and stored observations; its series now
    belong to the target project (history and streams of the target see them, the source's no
    longer do). A site belongs to a project, so a moved device loses its site."""
    doc = dev.doc.model_copy(update={"project": target.doc.id, "site": None})
    tx.execute(
        "UPDATE devices SET project_pk = %s, doc = %s WHERE pk = %s",
        (target.pk, doc.model_dump_json(), dev.pk),
    )
    tx.execute("UPDATE series SET project_pk = %s WHERE device_pk = %s", (target.pk, dev.pk))
    variables: list[VariableRec] = [
        reg.variables_by_pk[v]
        for v in reg.device_variables.get(dev.pk, ())
        if v in reg.variables_by_pk
    ]
    series = [s for s in reg.series_by_pk.values() if s.device_pk == dev.pk]
    var_docs = {v.pk: v.doc.model_copy(update={"project": target.doc.id}) for v in variables}
    for pk, var_doc in var_docs.items():
        tx.execute("UPDATE variables SET doc = %s WHERE pk = %s", (var_doc.model_dump_json(), pk))

    def apply() -> None:
        reg.drop_device(dev)
        moved = DeviceRec(dev.pk, target.pk, doc)
        reg.put_device(moved)
        for var in variables:
            var.doc = var_docs[var.pk]
            reg.put_variable(var)
        for s in series:
            reg.add_series(
                SeriesRec(
                    s.pk,
                    target.pk,
                    s.device_pk,
                    s.variable_pk,
                    s.set,
                    s.device_id,
                    s.variable_id,
                    s.prefix,
                )
            )
        reg.bump()

    tx.after_commit.append(apply)


async def transfer_device(store: Store[Tx, Conn], dev: DeviceRec, target: ProjectRec) -> None:
    """``move_device`` in a write transaction of its own."""
    await store.write(lambda tx: move_device(tx, store.registry, dev, target))


async def probe(store: Store[Tx, Conn]) -> None:
    """A read that touches the database: raises if the store cannot answer."""
    await store.read(lambda conn: conn.execute("SELECT count(*) FROM state").fetchone())
