"""Core operations of the PostgreSQL store beside the log and the metadata CRUD (the twin of
``store/sqlite/ops.py``): moving a device to another project, and the health probe. The engine
calls them (``Engine.transfer_device``, ``Engine.check_store``); no face does.
"""

from __future__ import annotations

from streamgauge.domain import events as ev
from streamgauge.domain.readmodel import ReadModel
from streamgauge.domain.records import DeviceRec, ProjectRec
from streamgauge.store.api import Store
from streamgauge.store.postgres.conn import Conn, Tx


def move_device(tx: Tx, reg: ReadModel, dev: DeviceRec, target: ProjectRec) -> None:
    """Move ``dev`` to ``target`` in the write transaction ``tx`` (events ``DeviceMoved`` and a
    ``VariablePut`` per variable; the registry follows after the commit). The device keeps its
    pk, variables, series and stored observations; its series now belong to the target project.
    A site belongs to a project, so a moved device loses its site."""
    doc = dev.doc.model_copy(update={"project": target.doc.id, "site": None})
    tx.execute(
        "UPDATE devices SET project_pk = %s, doc = %s WHERE pk = %s",
        (target.pk, doc.model_dump_json(), dev.pk),
    )
    tx.execute("UPDATE series SET project_pk = %s WHERE device_pk = %s", (target.pk, dev.pk))
    tx.events.append(ev.DeviceMoved(dev.pk, target.pk, doc))
    for var_pk in sorted(reg.device_variables.get(dev.pk, ())):
        var = reg.variables_by_pk.get(var_pk)
        if var is None:
            continue
        var_doc = var.doc.model_copy(update={"project": target.doc.id})
        tx.execute(
            "UPDATE variables SET doc = %s WHERE pk = %s", (var_doc.model_dump_json(), var_pk)
        )
        tx.events.append(ev.VariablePut(var_pk, var.device_pk, var_doc))


async def transfer_device(store: Store[Tx, Conn], dev: DeviceRec, target: ProjectRec) -> None:
    """``move_device`` in a write transaction of its own."""
    await store.write(lambda tx: move_device(tx, store.registry, dev, target))


async def probe(store: Store[Tx, Conn]) -> None:
    """A read that touches the database: raises if the store cannot answer."""
    await store.read(lambda conn: conn.execute("SELECT count(*) FROM state").fetchone())
