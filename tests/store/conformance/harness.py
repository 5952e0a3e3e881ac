"""What the conformance suite knows of a backend: its ``Backend`` bundle (``store.factory``) and
how to point it at fresh storage. A new backend is one more name in ``NAMES`` and one more
branch in ``settings_for``; the tests use the protocols of ``store.api`` only."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from streamgauge.config import Settings
from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.model import DeviceIn, ProjectIn, QCLimits, VariableIn
from streamgauge.store.api import (
    AlertTables,
    ConsumerPositions,
    DeliveryTables,
    FeedSessions,
    IngestColumns,
    MetadataTables,
    Store,
)
from streamgauge.store.factory import Backend, backends
from tests.pg import fresh_database
from tests.store.rules import log_rules

T = TypeVar("T")
NAMES = ["sqlite", "postgresql"]


def settings_for(name: str, place: Path, url: str | None = None) -> Settings:
    """Settings that give backend ``name`` fresh storage: under ``place`` (a temporary
    directory of the test), or the fresh PostgreSQL database ``url``."""
    if name == "sqlite":
        return Settings(data=place, qc=True)  # the QC removal test needs the checks on
    if name == "postgresql":
        assert url is not None, "the postgresql backend needs a fresh database"
        return Settings(data=place, store=url, qc=True)
    raise AssertionError(f"no storage for backend {name!r}")


@dataclass
class Harness:
    """One backend on fresh storage: open, reopen (close, then a new store on the same
    storage), close; each store's published batches in ``published``."""

    backend: Backend[Any, Any]
    settings: Settings
    published: list[Batch] = field(default_factory=list)
    _store: Store[Any, Any] | None = None

    @property
    def store(self) -> Store[Any, Any]:
        assert self._store is not None, "open the harness first"
        return self._store

    @property
    def md(self) -> MetadataTables[Any, Any]:
        return self.backend.metadata

    @property
    def alerts(self) -> AlertTables[Any, Any]:
        return self.backend.alerts

    @property
    def deliveries(self) -> DeliveryTables[Any, Any]:
        return self.backend.deliveries

    def positions(self) -> ConsumerPositions:
        return self.backend.consumer_positions(self.store)

    def feeds(self, retention_seconds: float = 3600.0, per_token: int = 100) -> FeedSessions:
        return self.backend.feed_sessions(self.store, retention_seconds, per_token)

    async def open(self) -> Store[Any, Any]:
        self.published = []
        store = self.backend.open_store(
            self.settings, log_rules(quality_control=self.settings.qc), Registry()
        )
        await store.open(self.published.append)
        self._store = store
        return store

    async def reopen(self) -> Store[Any, Any]:
        await self.close()
        return await self.open()

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def write(self, fn: Callable[[Any], T]) -> T:
        return await self.store.write(fn)

    async def read(self, fn: Callable[[Any], T]) -> T:
        return await self.store.read(fn)


def harness(name: str, place: Path, url: str | None = None) -> Harness:
    return Harness(backends()[name], settings_for(name, place, url))


@contextlib.contextmanager
def fresh(name: str) -> Iterator[Harness]:
    """A harness of backend ``name`` on fresh storage of its own (a temporary directory, and for
    PostgreSQL a fresh database), removed afterwards; not yet opened."""
    with tempfile.TemporaryDirectory() as place, contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_database()) if name == "postgresql" else None
        yield harness(name, Path(place), url)


@dataclass(frozen=True)
class Seeded:
    project_pk: int
    other_pk: int  # a second project, whose rows no read of the first may return
    var: dict[str, int]  # "device.variable" -> variable pk ("d0.t", "d0.w", "d1.t", "d1.w")
    other_var: int  # a variable of the second project


TEMP_LIMITS = QCLimits(min=-50.0, max=60.0, max_rate=None, max_persist_s=None)


async def seed(h: Harness) -> Seeded:
    """Projects "p" and "q"; "p" has devices d0 and d1 with variables t (range -50..60, no
    other check) and w (no QC limits given), "q" one device with one variable."""
    reg = h.store.registry
    await h.write(
        lambda tx: h.md.create_projects(
            tx, reg, [ProjectIn(id="p"), ProjectIn(id="q")], skip_existing=False, admin_account=None
        )
    )
    p, q = reg.projects["p"], reg.projects["q"]
    devs = [
        DeviceIn(
            id=f"d{i}", variables=[VariableIn(name="t", limits=TEMP_LIMITS), VariableIn(id="w")]
        )
        for i in range(2)
    ]
    await h.write(lambda tx: h.md.create_devices(tx, reg, p, devs, skip_existing=False))
    await h.write(
        lambda tx: h.md.create_devices(
            tx, reg, q, [DeviceIn(id="x", variables=[VariableIn(id="v")])], skip_existing=False
        )
    )
    var = {
        f"{reg.devices_by_pk[v.device_pk].doc.id}.{v.doc.id}": v.pk
        for v in reg.variables_by_pk.values()
        if reg.devices_by_pk[v.device_pk].project_pk == p.pk
    }
    [other] = [
        v.pk
        for v in reg.variables_by_pk.values()
        if v.device_pk in reg.devices_by_pk and reg.devices_by_pk[v.device_pk].project_pk == q.pk
    ]
    return Seeded(p.pk, q.pk, var, other)


def cols(
    project_pk: int,
    var_pks: list[int],
    times: list[int],
    values: list[float | str | None],
    sets: list[int] | None = None,
) -> IngestColumns:
    n = len(times)
    return IngestColumns(
        project_pk,
        np.array(var_pks, np.int64),
        np.array(sets if sets is not None else [1] * n, np.int64),
        np.array(times, np.int64),
        list(values),
        np.zeros(n, np.int64),
    )


def rows(batch: Batch) -> list[tuple[int, int, int, Any]]:
    """(cursor, series, time, value) of every row of ``batch``."""
    return list(
        zip(
            batch.cursors.tolist(),
            batch.series.tolist(),
            batch.times.tolist(),
            batch.values,
            strict=True,
        )
    )
