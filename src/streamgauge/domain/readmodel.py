"""What a store needs of the registry, as a protocol: the store is typed against it and never
imports the registry (``core/registry.py``, which satisfies it).

The store reads metadata to check a change before it writes it (does the id exist, is the site
known), hands the events of every committed write to ``apply`` (the one way metadata changes),
resolves rows to series on the ingest hot path, and keeps the log state it owns warm: each
series' latest stored time (the cheap duplicate check) and the QC state it checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from streamgauge.domain.catalog import Entry
from streamgauge.domain.events import MetaEvent, SeriesAdded
from streamgauge.domain.qcstate import QCState
from streamgauge.domain.records import (
    AccountRec,
    DeviceRec,
    DocSource,
    ProjectRec,
    SeriesRec,
    SiteRec,
    VariableRec,
)


@dataclass(slots=True)
class Tables:
    """The metadata tables as a store reads them on open (``ReadModel.load``): few big reads
    instead of an event per row. Documents are the stored JSON (valid when written)."""

    projects: list[MetaEvent] = field(default_factory=list)  # applied first
    sites: Iterable[tuple[int, int, str]] = ()  # pk, project pk, doc
    devices: Iterable[tuple[int, int, str]] = ()  # pk, project pk, doc
    # The big ones may be cursors, read as they are loaded (no list of them all at once).
    variables: Iterable[tuple[int, int, str]] = ()  # pk, device pk, doc
    series: Iterable[tuple[int, int, int, int, int]] = ()  # pk, project, device, variable, set
    accounts: list[MetaEvent] = field(default_factory=list)  # accounts, roles, keys: last


class ReadModel(Protocol):
    """The registry as its store sees it. Mappings are read-only here: only ``apply`` changes
    metadata. ``latest`` and ``qc_state`` are log state the store's writer moves itself."""

    @property
    def version(self) -> int:
        """Grows on every metadata change (derived tables rebuild)."""
        ...

    @property
    def series_end(self) -> int:
        """One past the highest series pk ever given: the next new series' pk."""
        ...

    @property
    def latest(self) -> npt.NDArray[np.int64]:
        """Latest stored time (ms) by series pk: the cheap duplicate check."""
        ...

    @property
    def s_project(self) -> npt.NDArray[np.int64]:
        """Project pk by series pk (-1: no such series): where a batch's rows belong."""
        ...

    @property
    def qc_state(self) -> QCState: ...

    # None: the sites' and devices' documents are kept; a source: none is, each is read from
    # it when asked (a read-only view's registry, ``store/sqlite/replica.py``). Set before
    # the registry is loaded.
    docs: DocSource | None

    @property
    def projects(self) -> Mapping[str, ProjectRec]: ...

    @property
    def projects_by_pk(self) -> Mapping[int, ProjectRec]: ...

    @property
    def sites(self) -> Mapping[tuple[int, str], SiteRec]:
        """By (project pk, site id)."""
        ...

    @property
    def devices(self) -> Mapping[tuple[int, str], DeviceRec]:
        """By (project pk, device id)."""
        ...

    @property
    def devices_by_pk(self) -> Mapping[int, DeviceRec]: ...

    @property
    def variables(self) -> Mapping[tuple[int, str], VariableRec]:
        """By (device pk, variable id)."""
        ...

    @property
    def variables_by_pk(self) -> Mapping[int, VariableRec]: ...

    @property
    def device_variables(self) -> Mapping[int, Set[int]]:
        """Variable pks by device pk."""
        ...

    @property
    def series(self) -> Mapping[tuple[int, int], int]:
        """Series pk by (variable pk, set)."""
        ...

    @property
    def series_by_pk(self) -> Mapping[int, SeriesRec]: ...

    @property
    def accounts(self) -> Mapping[str, AccountRec]: ...

    @property
    def accounts_by_pk(self) -> Mapping[int, AccountRec]: ...

    def apply(self, event: MetaEvent) -> None:
        """Change the metadata as ``event`` says (events of committed writes, in order)."""
        ...

    def series_added(
        self, first_pk: int, variable_pks: Sequence[int], sets: Sequence[int]
    ) -> list[SeriesAdded] | None:
        """The events that add series ``first_pk``, ``first_pk + 1`` ... of these (variable
        pk, set) keys; None if some variable does not exist."""
        ...

    def apply_all(self, events: Sequence[MetaEvent]) -> None:
        """``apply`` each of ``events``, in order (a run of new series at once)."""
        ...

    def load(self, tables: Tables) -> None:
        """On open: what the tables hold, into an empty read model (as if each row's event
        were applied, without a Python object per series or variable)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """What the read model holds of the metadata, as plain picklable values, for
        ``restore_snapshot`` in a later process (the store keeps it beside its tables)."""
        ...

    def restore_snapshot(self, state: dict[str, Any]) -> bool:
        """On open, instead of ``load``: ``state`` (a ``snapshot`` of the same tables, taken
        by the same code) into an empty read model; False, nothing changed, if it does not fit
        this code."""
        ...

    def variable_entry(self, name: str, unit: str | None) -> tuple[Entry, float, float]:
        """The catalog entry of a variable named ``name`` sent in ``unit`` and the (scale,
        offset) from ``unit`` to the entry's canonical unit; ``Invalid`` if the unit is bad or
        does not suit the entry."""
        ...

    def series_stations(self, since: int = 0) -> tuple[list[int], list[int], list[str]]:
        """(series, station, sensor) of every series from pk ``since`` on: a station is a
        site's pk, or a device without one as ``-device pk - 1``; the sensor, the variable
        id (what report queries group by)."""
        ...

    def restore_latest(self, series: Sequence[int], times: Sequence[int]) -> None:
        """On open: the latest stored time of each series the log has rows of (deleted series'
        too: their pks are never given again)."""
        ...
