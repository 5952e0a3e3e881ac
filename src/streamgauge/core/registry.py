"""The in-memory registry: the metadata the hot path needs, kept warm by the store.

Only the store's writer thread mutates it, and only after the change committed; readers on the
event loop see each assignment whole (they never see a half-built record). ``version`` grows on
every change so compiled filters know when to recompile.

Series are the unit of the log: one (variable, set) pair gets a dense integer ``pk``, so filters
are lookup tables indexed by series pk and batches carry a series column instead of strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core import qc
from streamgauge.core.units import converter, entry_for, validate_unit
from streamgauge.domain.catalog import Entry, lookup
from streamgauge.domain.model import Device, Project, Role, Site, Variable


@dataclass(slots=True)
class ProjectRec:
    pk: int
    doc: Project


@dataclass(slots=True)
class SiteRec:
    pk: int
    project_pk: int
    doc: Site


@dataclass(slots=True)
class DeviceRec:
    pk: int
    project_pk: int
    doc: Device


@dataclass(slots=True)
class VariableRec:
    """A variable, with its catalog entry and the affine map from the unit it is sent in to the
    entry's canonical unit (the unit it is stored in)."""

    pk: int
    device_pk: int
    doc: Variable
    entry: Entry = field(init=False)
    scale: float = field(init=False)
    offset: float = field(init=False)

    def __post_init__(self) -> None:
        self.entry, self.scale, self.offset = variable_entry(self.doc.name, self.doc.unit)


def qc_limits(var: VariableRec) -> tuple[float, float, float, int, int]:
    """(lo, hi, max_rate, max_persist_ms, wind role) of a variable for ``qc.Limits.set``."""
    e = var.entry
    lo, hi, rate, persist = e.min, e.max, e.max_rate, e.max_persist_s
    if var.doc.limits is not None:
        given = var.doc.limits.model_fields_set
        lo = var.doc.limits.min if "min" in given else lo
        hi = var.doc.limits.max if "max" in given else hi
        rate = var.doc.limits.max_rate if "max_rate" in given else rate
        persist = var.doc.limits.max_persist_s if "max_persist_s" in given else persist
    role = {"wind_speed": qc.ROLE_WIND_SPEED, "wind_gust": qc.ROLE_WIND_GUST}.get(
        e.name, qc.ROLE_OTHER
    )
    return (
        np.nan if lo is None else lo,
        np.nan if hi is None else hi,
        np.nan if rate is None else rate,
        0 if persist is None else int(persist * 1000),
        role,
    )


def variable_entry(name: str, unit: str | None) -> tuple[Entry, float, float]:
    """The catalog entry of a variable and the (scale, offset) from ``unit`` to its canonical
    unit. Unknown names without a unit are dimensionless; bad units raise ``Invalid``."""
    if unit is None and lookup(name) is None:
        return Entry(name=name, long_name=name, unit="dimensionless", kind="other"), 1.0, 0.0
    entry = entry_for(name, unit)
    if unit is None:
        return entry, 1.0, 0.0
    scale, offset = converter(validate_unit(unit), entry.unit)
    return entry, scale, offset


@dataclass(slots=True)
class SeriesRec:
    pk: int
    project_pk: int
    device_pk: int
    variable_pk: int
    set: int
    device_id: str
    variable_id: str
    prefix: bytes  # '"device":"d","variable":"v","set":1' ready to splice into a JSON object


@dataclass(slots=True)
class AccountRec:
    pk: int
    id: str
    name: str
    home_project_pk: int
    roles: dict[int, Role] = field(default_factory=dict)  # project pk -> role
    keys: dict[str, str] = field(default_factory=dict)  # key id -> argon2 hash


_NEVER = int(np.iinfo(np.int64).min)


def _column(size: int, fill: int) -> npt.NDArray[np.int64]:
    return np.full(size, fill, np.int64)


def _grow(col: npt.NDArray[np.int64], size: int, fill: int) -> npt.NDArray[np.int64]:
    grown = _column(size, fill)
    grown[: len(col)] = col
    return grown


def series_prefix(device_id: str, variable_id: str, set_: int) -> bytes:
    return (
        b'"device":'
        + orjson.dumps(device_id)
        + b',"variable":'
        + orjson.dumps(variable_id)
        + b',"set":'
        + str(set_).encode()
    )


class Registry:
    def __init__(self) -> None:
        self.version = 0
        self.projects: dict[str, ProjectRec] = {}
        self.projects_by_pk: dict[int, ProjectRec] = {}
        self.sites: dict[tuple[int, str], SiteRec] = {}
        self.devices: dict[tuple[int, str], DeviceRec] = {}
        self.devices_by_pk: dict[int, DeviceRec] = {}
        self.variables: dict[tuple[int, str], VariableRec] = {}
        self.variables_by_pk: dict[int, VariableRec] = {}
        self.series: dict[tuple[int, int], int] = {}  # (variable pk, set) -> series pk
        self.series_by_pk: dict[int, SeriesRec] = {}
        self.accounts: dict[str, AccountRec] = {}
        self.accounts_by_pk: dict[int, AccountRec] = {}
        self.key_owner: dict[str, int] = {}  # key id -> account pk
        # Columns indexed by series pk, for filters compiled with numpy:
        self.latest = _column(1024, _NEVER)  # latest stored time (ms): the cheap duplicate check
        self.s_project = _column(1024, -1)  # project pk (-1: no such series)
        self.s_device = _column(1024, -1)  # device pk
        self.s_name = _column(1024, -1)  # variable id, interned in ``names``
        self.names: dict[str, int] = {}
        # Quality control: limits per series (set with the series) and the per-series state
        # the checks carry from batch to batch (writer thread only).
        self.qc_limits = qc.Limits()
        self.qc_state = qc.QCState()
        self.series_end = 1  # one past the highest series pk ever registered
        # Device indexes, so filters by type and label never walk every device:
        self.project_devices: dict[int, set[int]] = {}
        self.device_variables: dict[int, set[int]] = {}
        self.by_type: dict[tuple[int, str | None], set[int]] = {}
        self.by_label: dict[tuple[int, str], dict[str, set[int]]] = {}
        self.by_site: dict[tuple[int, str | None], set[int]] = {}
        # Structures computed from metadata by readers (e.g. site columns), dropped on bump().
        self.derived: dict[object, object] = {}

    def bump(self) -> None:
        """Metadata changed: compiled filters recompile (new series only extend them), and
        structures derived from metadata (``derived``) are dropped."""
        self.version += 1
        self.derived = {}

    def series_capacity(self, pk: int) -> None:
        if pk >= len(self.latest):
            size = max(pk + 1, len(self.latest) * 2)
            self.latest = _grow(self.latest, size, _NEVER)
            self.s_project = _grow(self.s_project, size, -1)
            self.s_device = _grow(self.s_device, size, -1)
            self.s_name = _grow(self.s_name, size, -1)

    def add_series(self, rec: SeriesRec) -> None:
        self.series_capacity(rec.pk)
        self.series_by_pk[rec.pk] = rec
        self.series[(rec.variable_pk, rec.set)] = rec.pk
        self.s_project[rec.pk] = rec.project_pk
        self.s_device[rec.pk] = rec.device_pk
        self.s_name[rec.pk] = self.names.setdefault(rec.variable_id, len(self.names))
        self.series_end = max(self.series_end, rec.pk + 1)
        var = self.variables_by_pk.get(rec.variable_pk)
        if var is not None:
            self.qc_limits.set(rec.pk, *qc_limits(var), group=rec.device_pk)

    def refresh_limits(self, var: VariableRec) -> None:
        for (var_pk, _), pk in self.series.items():
            if var_pk == var.pk:
                self.qc_limits.set(pk, *qc_limits(var), group=var.device_pk)

    def drop_series(self, pk: int) -> None:
        rec = self.series_by_pk.pop(pk, None)
        if rec is not None:
            self.series.pop((rec.variable_pk, rec.set), None)
            self.s_project[pk] = -1
            self.s_device[pk] = -1

    def drop_series_of_variable(self, variable_pk: int) -> None:
        for key in [k for k in self.series if k[0] == variable_pk]:
            self.drop_series(self.series[key])

    def put_variable(self, var: VariableRec) -> None:
        self.variables[(var.device_pk, var.doc.id)] = var
        self.variables_by_pk[var.pk] = var
        self.device_variables.setdefault(var.device_pk, set()).add(var.pk)
        self.names.setdefault(var.doc.id, len(self.names))

    def drop_variable(self, var: VariableRec) -> None:
        self.drop_series_of_variable(var.pk)
        self.variables.pop((var.device_pk, var.doc.id), None)
        self.variables_by_pk.pop(var.pk, None)
        self.device_variables.get(var.device_pk, set()).discard(var.pk)

    def put_device(self, dev: DeviceRec, doc: Device | None = None) -> None:
        """Add ``dev``, or replace its document with ``doc``, keeping the indexes right."""
        if doc is not None:
            self._unindex(dev)
            dev.doc = doc
        self.devices[(dev.project_pk, dev.doc.id)] = dev
        self.devices_by_pk[dev.pk] = dev
        self.project_devices.setdefault(dev.project_pk, set()).add(dev.pk)
        self.by_type.setdefault((dev.project_pk, dev.doc.type), set()).add(dev.pk)
        self.by_site.setdefault((dev.project_pk, dev.doc.site), set()).add(dev.pk)
        for key, value in dev.doc.labels.items():
            self.by_label.setdefault((dev.project_pk, key), {}).setdefault(value, set()).add(dev.pk)

    def _unindex(self, dev: DeviceRec) -> None:
        self.by_type.get((dev.project_pk, dev.doc.type), set()).discard(dev.pk)
        self.by_site.get((dev.project_pk, dev.doc.site), set()).discard(dev.pk)
        for key, value in dev.doc.labels.items():
            self.by_label.get((dev.project_pk, key), {}).get(value, set()).discard(dev.pk)

    def drop_device(self, dev: DeviceRec) -> None:
        for var_pk in list(self.device_variables.pop(dev.pk, ())):
            var = self.variables_by_pk.get(var_pk)
            if var is not None:
                self.drop_variable(var)
        self._unindex(dev)
        self.project_devices.get(dev.project_pk, set()).discard(dev.pk)
        self.devices.pop((dev.project_pk, dev.doc.id), None)
        self.devices_by_pk.pop(dev.pk, None)

    def devices_at(self, project_pk: int, site: str) -> set[int]:
        return self.by_site.get((project_pk, site), set())

    def devices_of_type(self, project_pk: int, type_: str) -> set[int]:
        return self.by_type.get((project_pk, type_), set())

    def devices_with_label(self, project_pk: int, key: str, value: str | None) -> set[int]:
        values = self.by_label.get((project_pk, key), {})
        if value is not None:
            return values.get(value, set())
        return set().union(*values.values()) if values else set()

    def drop_project(self, proj: ProjectRec) -> None:
        for pk in list(self.project_devices.pop(proj.pk, ())):
            self.drop_device(self.devices_by_pk[pk])
        for key in [k for k in self.sites if k[0] == proj.pk]:
            del self.sites[key]
        for acc in self.accounts_by_pk.values():
            acc.roles.pop(proj.pk, None)
        self.projects.pop(proj.doc.id, None)
        self.projects_by_pk.pop(proj.pk, None)

    def project(self, project_id: str) -> ProjectRec | None:
        return self.projects.get(project_id)
