"""The in-memory registry: the metadata the hot path needs, kept warm from metadata events.

``Registry.apply`` is the only thing that changes its metadata. The store hands it the events
(``domain/events.py``) of every committed write, in commit order, on its writer thread: on open
those that rebuild what the tables hold, then each transaction's after it committed (the series
an append creates are applied before it commits, so the batch's QC sees their limits, and
undone by ``SeriesDropped`` if it fails). Readers on the event loop see each assignment whole
(they never see a half-built record). ``version`` grows on every change of metadata so compiled
filters know when to recompile; new series only extend them.

Series are the unit of the log: one (variable, set) pair gets a dense integer ``pk``, so filters
are lookup tables indexed by series pk and batches carry a series column instead of strings.

The records (``ProjectRec`` ...) live in ``domain/records.py`` and are re-exported here; the
store sees a registry as the protocol ``domain.readmodel.ReadModel``.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core import qc
from streamgauge.core.units import converter, entry_for, validate_unit
from streamgauge.domain import events as ev
from streamgauge.domain.catalog import Entry, lookup
from streamgauge.domain.model import Device, QCLimits, Variable
from streamgauge.domain.records import AccountRec as AccountRec
from streamgauge.domain.records import DeviceRec as DeviceRec
from streamgauge.domain.records import ProjectRec as ProjectRec
from streamgauge.domain.records import SeriesRec as SeriesRec
from streamgauge.domain.records import SiteRec as SiteRec
from streamgauge.domain.records import VariableRec as VariableRec
from streamgauge.domain.records import series_prefix as series_prefix


def variable_rec(pk: int, device_pk: int, doc: Variable) -> VariableRec:
    """The record of variable ``doc``, with its catalog entry and unit map (``Invalid`` if its
    unit is bad or does not suit the entry)."""
    return _record(
        pk,
        device_pk,
        doc.id,
        doc.name,
        doc.unit,
        doc.set,
        doc.project,
        doc.device,
        doc.limits,
        doc.retention_days,
        doc.metadata or None,
    )


_intern = sys.intern


def stored_variable_rec(pk: int, device_pk: int, doc: str) -> VariableRec:
    """The record of a variable from its stored document (JSON of a valid ``Variable``), without
    validating a model: its limits, if any, are."""
    d = orjson.loads(doc)
    limits = d.get("limits")
    return _record(
        pk,
        device_pk,
        d["id"],
        d["name"],
        d.get("unit"),
        d.get("set", 1),
        d["project"],
        d["device"],
        None if limits is None else QCLimits.model_validate(limits),
        d.get("retention_days"),
        d.get("metadata") or None,
    )


def _record(
    pk: int,
    device_pk: int,
    id_: str,
    name: str,
    unit: str | None,
    set_: int,
    project: str,
    device: str,
    limits: QCLimits | None,
    retention_days: float | None,
    metadata: dict[str, Any] | None,
) -> VariableRec:
    entry, scale, offset = variable_entry(name, unit)
    return VariableRec(
        pk,
        device_pk,
        _intern(id_),
        _intern(name),
        None if unit is None else _intern(unit),
        set_,
        _intern(project),
        _intern(device),
        entry,
        scale,
        offset,
        limits,
        retention_days,
        metadata,
    )


def qc_limits(var: VariableRec) -> tuple[float, float, float, int, int]:
    """(lo, hi, max_rate, max_persist_ms, wind role) of a variable for ``qc.Limits.set``."""
    e = var.entry
    lo, hi, rate, persist = e.min, e.max, e.max_rate, e.max_persist_s
    if var.limits is not None:
        given = var.limits.model_fields_set
        lo = var.limits.min if "min" in given else lo
        hi = var.limits.max if "max" in given else hi
        rate = var.limits.max_rate if "max_rate" in given else rate
        persist = var.limits.max_persist_s if "max_persist_s" in given else persist
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


@functools.lru_cache(maxsize=4096)
def variable_entry(name: str, unit: str | None) -> tuple[Entry, float, float]:
    """The catalog entry of a variable and the (scale, offset) from ``unit`` to its canonical
    unit. Unknown names without a unit are dimensionless; bad units raise ``Invalid``. Cached
    (the store checks a new variable's unit, the registry resolves it again on apply; errors
    are not cached)."""
    if unit is None and lookup(name) is None:
        return Entry(name=name, long_name=name, unit="dimensionless", kind="other"), 1.0, 0.0
    entry = entry_for(name, unit)
    if unit is None:
        return entry, 1.0, 0.0
    scale, offset = converter(validate_unit(unit), entry.unit)
    return entry, scale, offset


_NEVER = int(np.iinfo(np.int64).min)


def _column(size: int, fill: int) -> npt.NDArray[np.int64]:
    return np.full(size, fill, np.int64)


def _grow(col: npt.NDArray[np.int64], size: int, fill: int) -> npt.NDArray[np.int64]:
    grown = _column(size, fill)
    grown[: len(col)] = col
    return grown


class Registry:
    """The read model of the metadata (see the module's docstring). Satisfies
    ``domain.readmodel.ReadModel``; its mutators are private: ``apply`` is the way in."""

    def __init__(self) -> None:
        # ``apply`` runs on the store's writer thread (this node's commits) and, in the cluster
        # mode, on the event loop (other nodes' commits): one at a time.
        self._applying = threading.Lock()
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
        # Structures computed from metadata by readers (e.g. site columns), dropped on a change.
        self.derived: dict[object, object] = {}
        self._appliers: dict[type, Callable[[Any], None]] = {
            ev.ProjectPut: self._project_put,
            ev.ProjectDropped: self._project_dropped,
            ev.SitePut: self._site_put,
            ev.SiteDropped: self._site_dropped,
            ev.DevicePut: self._device_put,
            ev.DeviceMoved: self._device_moved,
            ev.DeviceDropped: self._device_dropped,
            ev.VariablePut: self._variable_put,
            ev.VariableStored: self._variable_stored,
            ev.VariableDropped: self._variable_dropped,
            ev.SeriesAdded: self._series_added,
            ev.SeriesDropped: self._series_dropped,
            ev.AccountPut: self._account_put,
            ev.AccountDropped: self._account_dropped,
            ev.RolePut: self._role_put,
            ev.RoleDropped: self._role_dropped,
            ev.KeyPut: self._key_put,
            ev.KeyDropped: self._key_dropped,
        }
        for work in ev.WORK_EVENTS:  # not metadata: the services of that work follow them
            self._appliers[work] = _ignore

    # -- the one way in -------------------------------------------------------------------------

    def apply(self, event: ev.MetaEvent) -> None:
        """Change the metadata as ``event`` says. Events come in commit order; one naming a
        record that is gone (a cascade already dropped it) changes nothing."""
        with self._applying:
            self._appliers[type(event)](event)

    def apply_all(self, events: Sequence[ev.MetaEvent]) -> None:
        for event in events:
            self.apply(event)

    # -- what the store reads and keeps (``domain.readmodel.ReadModel``) -------------------------

    def variable_entry(self, name: str, unit: str | None) -> tuple[Entry, float, float]:
        return variable_entry(name, unit)

    def restore_latest(self, series: Sequence[int], times: Sequence[int]) -> None:
        """The log's latest time per series, on open; ``series_end`` goes past every pk the log
        has rows of, deleted series' included, so such a pk is never given again."""
        for pk, time in zip(series, times, strict=True):
            self._series_capacity(pk)
            self.latest[pk] = max(int(self.latest[pk]), int(time))
            self.series_end = max(self.series_end, pk + 1)

    # -- reads ----------------------------------------------------------------------------------

    def devices_at(self, project_pk: int, site: str) -> set[int]:
        return self.by_site.get((project_pk, site), set())

    def devices_of_type(self, project_pk: int, type_: str) -> set[int]:
        return self.by_type.get((project_pk, type_), set())

    def devices_with_label(self, project_pk: int, key: str, value: str | None) -> set[int]:
        values = self.by_label.get((project_pk, key), {})
        if value is not None:
            return values.get(value, set())
        return set().union(*values.values()) if values else set()

    def project(self, project_id: str) -> ProjectRec | None:
        return self.projects.get(project_id)

    # -- appliers -------------------------------------------------------------------------------

    def _bump(self) -> None:
        """Metadata changed: compiled filters recompile (new series only extend them), and
        structures derived from metadata (``derived``) are dropped."""
        self.version += 1
        self.derived = {}

    def _project_put(self, e: ev.ProjectPut) -> None:
        rec = self.projects_by_pk.get(e.pk)
        if rec is None:
            rec = ProjectRec(e.pk, e.doc)
            self.projects_by_pk[e.pk] = rec
        else:
            rec.doc = e.doc
        self.projects[e.doc.id] = rec
        self._bump()

    def _project_dropped(self, e: ev.ProjectDropped) -> None:
        proj = self.projects_by_pk.get(e.pk)
        if proj is None:
            return
        for pk in list(self.project_devices.pop(proj.pk, ())):
            self._drop_device(self.devices_by_pk[pk])
        for key in [k for k in self.sites if k[0] == proj.pk]:
            del self.sites[key]
        for acc in list(self.accounts_by_pk.values()):
            acc.roles.pop(proj.pk, None)
            if acc.home_project_pk == proj.pk:  # the database cascades: it goes with its home
                self._forget_account(acc)
        self.projects.pop(proj.doc.id, None)
        self.projects_by_pk.pop(proj.pk, None)
        self._bump()

    def _site_put(self, e: ev.SitePut) -> None:
        key = (e.project_pk, e.doc.id)
        rec = self.sites.get(key)
        if rec is not None and rec.pk == e.pk:
            rec.doc = e.doc
        else:
            self.sites[key] = SiteRec(e.pk, e.project_pk, e.doc)
        self._bump()

    def _site_dropped(self, e: ev.SiteDropped) -> None:
        key = (e.project_pk, e.id)
        rec = self.sites.get(key)
        if rec is not None and rec.pk == e.pk:
            del self.sites[key]
        self._bump()

    def _device_put(self, e: ev.DevicePut) -> None:
        rec = self.devices_by_pk.get(e.pk)
        if rec is None:
            self._put_device(DeviceRec(e.pk, e.project_pk, e.doc))
        else:
            self._put_device(rec, e.doc)
        self._bump()

    def _device_moved(self, e: ev.DeviceMoved) -> None:
        """The device's record is replaced (a new ``DeviceRec`` in the target project); its
        variables and series stay, its series now belong to the target project."""
        dev = self.devices_by_pk.get(e.pk)
        if dev is None:
            return
        self._unindex(dev)
        self.project_devices.get(dev.project_pk, set()).discard(dev.pk)
        self.devices.pop((dev.project_pk, dev.doc.id), None)
        self._put_device(DeviceRec(e.pk, e.project_pk, e.doc))
        for s in [s for s in self.series_by_pk.values() if s.device_pk == e.pk]:
            self._add_series(
                SeriesRec(
                    s.pk,
                    e.project_pk,
                    s.device_pk,
                    s.variable_pk,
                    s.set,
                    s.device_id,
                    s.variable_id,
                    s.prefix,
                )
            )
        self._bump()

    def _device_dropped(self, e: ev.DeviceDropped) -> None:
        dev = self.devices_by_pk.get(e.pk)
        if dev is not None:
            self._drop_device(dev)
        self._bump()

    def _variable_put(self, e: ev.VariablePut) -> None:
        rec = variable_rec(e.pk, e.device_pk, e.doc)
        known = e.pk in self.variables_by_pk
        self._put_variable(rec)
        if known:
            self._refresh_limits(rec)
        self._bump()

    def _variable_stored(self, e: ev.VariableStored) -> None:
        rec = stored_variable_rec(e.pk, e.device_pk, e.doc)
        known = e.pk in self.variables_by_pk
        self._put_variable(rec)
        if known:
            self._refresh_limits(rec)
        self._bump()

    def _variable_dropped(self, e: ev.VariableDropped) -> None:
        var = self.variables_by_pk.get(e.pk)
        if var is not None:
            self._drop_variable(var)
        self._bump()

    def _series_added(self, e: ev.SeriesAdded) -> None:
        """No version bump: new series only extend compiled filters."""
        had = self.series_by_pk.get(e.pk)
        if (
            had is not None
            and had.project_pk == e.project_pk
            and had.variable_pk == e.variable_pk
            and had.set == e.set
        ):
            return  # applied already (the writer applies an append's series before commit)
        self._add_series(
            SeriesRec(
                e.pk,
                e.project_pk,
                e.device_pk,
                e.variable_pk,
                e.set,
                _intern(e.device_id),  # one string of each id, not one per series
                _intern(e.variable_id),
                series_prefix(e.device_id, e.variable_id, e.set),
            )
        )

    def _series_dropped(self, e: ev.SeriesDropped) -> None:
        self._drop_series(e.pk)
        self._bump()

    def _account_put(self, e: ev.AccountPut) -> None:
        rec = self.accounts_by_pk.get(e.pk)
        if rec is not None:  # a rename: roles and keys stay, no version change
            rec.name = e.name
            return
        rec = AccountRec(e.pk, e.id, e.name, e.home_project_pk)
        self.accounts[e.id] = rec
        self.accounts_by_pk[e.pk] = rec
        self._bump()

    def _account_dropped(self, e: ev.AccountDropped) -> None:
        rec = self.accounts_by_pk.get(e.pk)
        if rec is not None:
            self._forget_account(rec)
        self._bump()

    def _role_put(self, e: ev.RolePut) -> None:
        rec = self.accounts_by_pk.get(e.account_pk)
        if rec is not None:
            rec.roles[e.project_pk] = e.role

    def _role_dropped(self, e: ev.RoleDropped) -> None:
        rec = self.accounts_by_pk.get(e.account_pk)
        if rec is not None:
            rec.roles.pop(e.project_pk, None)

    def _key_put(self, e: ev.KeyPut) -> None:
        rec = self.accounts_by_pk.get(e.account_pk)
        if rec is not None:
            rec.keys[e.key_id] = e.hash
            self.key_owner[e.key_id] = rec.pk

    def _key_dropped(self, e: ev.KeyDropped) -> None:
        rec = self.accounts_by_pk.get(e.account_pk)
        if rec is not None:
            rec.keys.pop(e.key_id, None)
        if self.key_owner.get(e.key_id) == e.account_pk:
            del self.key_owner[e.key_id]

    # -- the mutators the appliers share ----------------------------------------------------------

    def _forget_account(self, rec: AccountRec) -> None:
        self.accounts.pop(rec.id, None)
        self.accounts_by_pk.pop(rec.pk, None)
        for key_id in rec.keys:
            self.key_owner.pop(key_id, None)

    def _series_capacity(self, pk: int) -> None:
        if pk >= len(self.latest):
            size = max(pk + 1, len(self.latest) * 2)
            self.latest = _grow(self.latest, size, _NEVER)
            self.s_project = _grow(self.s_project, size, -1)
            self.s_device = _grow(self.s_device, size, -1)
            self.s_name = _grow(self.s_name, size, -1)

    def _add_series(self, rec: SeriesRec) -> None:
        self._series_capacity(rec.pk)
        self.series_by_pk[rec.pk] = rec
        self.series[(rec.variable_pk, rec.set)] = rec.pk
        self.s_project[rec.pk] = rec.project_pk
        self.s_device[rec.pk] = rec.device_pk
        self.s_name[rec.pk] = self.names.setdefault(rec.variable_id, len(self.names))
        self.series_end = max(self.series_end, rec.pk + 1)
        var = self.variables_by_pk.get(rec.variable_pk)
        if var is not None:
            self.qc_limits.set(rec.pk, *qc_limits(var), group=rec.device_pk)

    def _refresh_limits(self, var: VariableRec) -> None:
        for (var_pk, _), pk in self.series.items():
            if var_pk == var.pk:
                self.qc_limits.set(pk, *qc_limits(var), group=var.device_pk)

    def _drop_series(self, pk: int) -> None:
        rec = self.series_by_pk.pop(pk, None)
        if rec is not None:
            self.series.pop((rec.variable_pk, rec.set), None)
            self.s_project[pk] = -1
            self.s_device[pk] = -1

    def _drop_series_of_variable(self, variable_pk: int) -> None:
        for key in [k for k in self.series if k[0] == variable_pk]:
            self._drop_series(self.series[key])

    def _put_variable(self, var: VariableRec) -> None:
        self.variables[(var.device_pk, var.id)] = var
        self.variables_by_pk[var.pk] = var
        self.device_variables.setdefault(var.device_pk, set()).add(var.pk)
        self.names.setdefault(var.id, len(self.names))

    def _drop_variable(self, var: VariableRec) -> None:
        self._drop_series_of_variable(var.pk)
        self.variables.pop((var.device_pk, var.id), None)
        self.variables_by_pk.pop(var.pk, None)
        self.device_variables.get(var.device_pk, set()).discard(var.pk)

    def _put_device(self, dev: DeviceRec, doc: Device | None = None) -> None:
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

    def _drop_device(self, dev: DeviceRec) -> None:
        for var_pk in list(self.device_variables.pop(dev.pk, ())):
            var = self.variables_by_pk.get(var_pk)
            if var is not None:
                self._drop_variable(var)
        self._unindex(dev)
        self.project_devices.get(dev.project_pk, set()).discard(dev.pk)
        self.devices.pop((dev.project_pk, dev.doc.id), None)
        self.devices_by_pk.pop(dev.pk, None)


def _ignore(event: ev.MetaEvent) -> None:
    """An event that changes no metadata (``events.WORK_EVENTS``)."""
