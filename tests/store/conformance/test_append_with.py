"""``Store.append_with``: metadata writes and the batch that names what they created, in one
transaction; a refused batch leaves none of the metadata, in the registry or after a reopen
(issue 16: the line protocol's autocreate)."""

from __future__ import annotations

from typing import Any

import pytest

from streamgauge.core import qc
from streamgauge.domain.errors import Conflict, Invalid
from streamgauge.domain.log import IngestColumns
from streamgauge.domain.model import DeviceIn, VariableIn
from tests.store.conformance.harness import TEMP_LIMITS, Harness, cols, rows, seed
from tests.store.conformance.test_metadata import snapshot


def creating(h: Harness, project_id: str, device_id: str, label: str) -> Any:
    """Metadata writes: a new device ``device_id`` with variable t (range -50..60), a new
    variable ``n`` on d0, and d0's label ``k`` set to ``label``."""
    reg = h.store.registry
    md = h.md

    def run(tx: Any) -> None:
        p = reg.projects[project_id]
        new = DeviceIn(id=device_id, variables=[VariableIn(name="t", limits=TEMP_LIMITS)])
        md.create_devices(tx, reg, p, [new], skip_existing=True)
        d0 = reg.devices[(p.pk, "d0")]
        md.create_variables(tx, reg, p, d0, [VariableIn(id="n")], skip_existing=True)
        md.update_device(tx, reg, p, d0, {"labels": {"k": label}})

    return run


def named(h: Harness, project_pk: int, keys: list[tuple[str, str]], times: list[int],
          values: list[float | str | None]) -> IngestColumns:  # fmt: skip
    """Columns naming (device, variable) ids, resolved when called (in the transaction)."""
    reg = h.store.registry
    pks = []
    for device_id, variable_id in keys:
        dev = reg.devices.get((project_pk, device_id))
        var = reg.variables.get((dev.pk, variable_id)) if dev is not None else None
        if var is None:
            raise Invalid(f"no variable {device_id}.{variable_id}")
        pks.append(var.pk)
    return cols(project_pk, pks, times, values)


async def test_metadata_and_rows_commit_together(backend: Harness) -> None:
    s = await seed(backend)
    store = backend.store
    reg = store.registry
    r = await store.append_with(
        creating(backend, "p", "n1", "a"),
        lambda: named(backend, s.project_pk, [("n1", "t"), ("d0", "n")], [1000, 1000], [99.0, 1.0]),
    )
    assert (r.accepted, r.first_cursor) == (2, 1)
    dev = reg.devices[(s.project_pk, "n1")]
    assert (dev.pk, "t") in reg.variables
    assert reg.devices[(s.project_pk, "d0")].doc.labels == {"k": "a"}
    (batch,) = backend.published
    assert batch.qc.tolist()[0] & qc.RANGE  # the new variable's limits judged its first row
    made = snapshot(reg)
    assert len(rows(await store.read_log(0, 10, 10))) == 2
    store = await backend.reopen()
    assert snapshot(store.registry) == made


@pytest.mark.parametrize("refusal", ["conflict", "invalid"])
async def test_a_refused_batch_leaves_no_metadata(backend: Harness, refusal: str) -> None:
    s = await seed(backend)
    store = backend.store
    reg = store.registry
    await store.append(cols(s.project_pk, [s.var["d0.t"]], [1000], [1.0]))
    p = reg.projects["p"]
    d0 = reg.devices[(p.pk, "d0")]
    await store.write(lambda tx: backend.md.update_device(tx, reg, p, d0, {"labels": {"k": "b"}}))
    before = snapshot(reg)
    log = rows(await store.read_log(0, 10, 10))
    series = dict(reg.series)

    def columns() -> IngestColumns:
        keys = [("n1", "t"), ("d0", "n"), ("d0", "t")]
        if refusal == "invalid":
            keys.append(("n1", "nope"))
        return named(backend, s.project_pk, keys, [2000, 2000, 1000, 3000][: len(keys)],
                     [1.0, 2.0, 5.0, 0.0][: len(keys)])  # fmt: skip  # d0.t@1000 conflicts

    with pytest.raises(Conflict if refusal == "conflict" else Invalid):
        await store.append_with(creating(backend, "p", "n1", "after"), columns)
    assert (s.project_pk, "n1") not in reg.devices
    assert (d0.pk, "n") not in reg.variables
    assert snapshot(reg) == before  # d0's label and variables as they were
    assert dict(reg.series) == series
    assert rows(await store.read_log(0, 10, 10)) == log and store.head == 1
    store = await backend.reopen()
    assert snapshot(store.registry) == before
    # The pks the failed transaction used are free for the next one, whose rows are stored.
    r = await store.append_with(
        creating(backend, "p", "n1", "again"),
        lambda: named(backend, s.project_pk, [("n1", "t")], [2000], [3.0]),
    )
    assert r.accepted == 1
    assert store.registry.devices[(s.project_pk, "d0")].doc.labels == {"k": "again"}
