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

import contextlib
import functools
import gc
import itertools
import sys
import threading
from abc import abstractmethod
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast, overload

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core import qc
from streamgauge.core.units import converter, entry_for, validate_unit
from streamgauge.domain import events as ev
from streamgauge.domain.catalog import Entry, lookup
from streamgauge.domain.model import Device, QCLimits, Variable
from streamgauge.domain.readmodel import Tables
from streamgauge.domain.records import AccountRec as AccountRec
from streamgauge.domain.records import DeviceRec as DeviceRec
from streamgauge.domain.records import DocSource as DocSource
from streamgauge.domain.records import ProjectRec as ProjectRec
from streamgauge.domain.records import SeriesRec as SeriesRec
from streamgauge.domain.records import Shed
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


_DEVICE = ',"device":'


def _stored_docs(
    stored: Sequence[str], heads: dict[str, dict[str, Any] | None]
) -> tuple[list[dict[str, Any]], list[int], list[str], list[int]]:
    """Stored variable documents parsed: the distinct ones, which of them each is, each one's
    device, and the rows parsed whole. A station's variable is stored as the other stations'
    variable of the same id but for its device, the last member (the way ``Variable`` dumps
    it): the rest (``head``) is parsed once per distinct text and shared. A document of another
    shape, or with limits, a retention or metadata (its record keeps them, its own), is parsed
    whole. ``heads``: the texts parsed so far (kept by the caller from one chunk to the next)."""
    distinct: list[dict[str, Any]] = []
    at: list[int] = []
    devices: list[str] = []
    whole: list[int] = []
    seen: dict[int, int] = {}  # id() of a shared head -> its place in distinct
    loads = orjson.loads
    for i, text in enumerate(stored):
        head, sep, tail = text.rpartition(_DEVICE)
        if sep and tail[:1] == '"' and tail[-2:] == '"}':
            base = heads.get(head, _UNSEEN)
            if base is _UNSEEN:
                base = heads[head] = _stored_head(head)
            device = tail[1:-2]
            if base is not None and '"' not in device and "\\" not in device:
                j = seen.get(id(base))
                if j is None:
                    j = seen[id(base)] = len(distinct)
                    distinct.append(base)
                at.append(j)
                devices.append(device)
                continue
        d = loads(text)
        at.append(len(distinct))
        distinct.append(d)
        devices.append(d["device"])
        whole.append(i)
    return distinct, at, devices, whole


_UNSEEN: Any = object()


def _stored_head(head: str) -> dict[str, Any] | None:
    """A stored document's members before its device, parsed, if they are a whole object (a
    top-level split) with nothing a record keeps as its own; else None."""
    try:
        d = orjson.loads(head + "}")
    except orjson.JSONDecodeError:
        return None
    if (
        not isinstance(d, dict)
        or "device" in d
        or d.get("limits") is not None
        or d.get("retention_days") is not None
        or d.get("metadata")
    ):
        return None
    return d


_S = TypeVar("_S")


def _coded(values: Sequence[_S], code: Callable[[_S], int]) -> list[int]:
    """``code`` of each value, called once per distinct value."""
    codes = {v: code(v) for v in dict.fromkeys(values)}  # in order: codes as one by one
    return [codes[v] for v in values]


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
    return _qc_limits(var.entry, var.limits)


def _qc_limits(e: Entry, limits: QCLimits | None) -> tuple[float, float, float, int, int]:
    lo, hi, rate, persist = e.min, e.max, e.max_rate, e.max_persist_s
    if limits is not None:
        given = limits.model_fields_set
        lo = limits.min if "min" in given else lo
        hi = limits.max if "max" in given else hi
        rate = limits.max_rate if "max_rate" in given else rate
        persist = limits.max_persist_s if "max_persist_s" in given else persist
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
    if unit is None or unit == entry.unit:  # the canonical unit (no units parsed: a start
        return entry, 1.0, 0.0  # loading a network of them needs no pint registry)
    scale, offset = converter(validate_unit(unit), entry.unit)
    return entry, scale, offset


_NEVER = int(np.iinfo(np.int64).min)


def _column(size: int, fill: int) -> npt.NDArray[np.int64]:
    return np.full(size, fill, np.int64)


_I32 = npt.NDArray[np.int32]


def _column32(size: int, fill: int) -> _I32:
    """A column of codes or pks below 2**31 (half the memory of int64)."""
    return np.full(size, fill, np.int32)


def _doubled(have: int, need: int) -> int:
    """``have`` doubled until it holds ``need``: a run of new series grows the columns as one
    series at a time did (to a run's end, the next doublings left up to twice the room)."""
    size = max(have, 1)
    while size < need:
        size *= 2
    return size


def _grow(col: npt.NDArray[Any], size: int, fill: int) -> npt.NDArray[Any]:
    grown = np.full(size, fill, col.dtype)
    grown[: len(col)] = col
    return grown


_T = TypeVar("_T")
LOAD_CHUNK = 16384  # rows a load turns into columns at a time
SERIES_RUN = 4  # new series applied a column at a time from this many in a row (``apply_all``)


_R = TypeVar("_R")


class _RecordsByPk(Mapping[int, _R]):
    """A read-only mapping pk -> record whose records are built on demand from the registry's
    columns (``_build``) for the pks ``_live`` says exist, the last ``CACHE`` built kept (a
    record per row, with its dict entries, would weigh about 400 bytes)."""

    __slots__ = ("_reg", "_cache")
    CACHE = 8192

    def __init__(self, reg: Registry) -> None:
        self._reg = reg
        self._cache: dict[int, _R] = {}

    @abstractmethod
    def _live(self, i: int) -> bool:
        """Whether pk ``i`` names a record."""

    @abstractmethod
    def _build(self, i: int) -> _R:
        """The record of pk ``i`` (one ``_live`` says exists), from the columns."""

    @abstractmethod
    def _pks(self) -> npt.NDArray[np.intp]:
        """Every pk that names a record, in order."""

    @overload
    def get(self, key: int, /) -> _R | None: ...
    @overload
    def get(self, key: int, default: _R | _T, /) -> _R | _T: ...
    def get(self, pk: Any, default: Any = None) -> Any:
        rec = self._cache.get(pk)
        if rec is not None:
            return rec
        try:
            i = int(pk)
        except (TypeError, ValueError):
            return default
        if not self._live(i):
            return default
        rec = self._build(i)
        if len(self._cache) >= self.CACHE:
            self._cache.clear()
        self._cache[i] = rec
        return rec

    def __getitem__(self, pk: int) -> _R:
        rec: _R | None = self.get(pk)
        if rec is None:
            raise KeyError(pk)
        return rec

    def __contains__(self, pk: object) -> bool:
        if pk in self._cache:
            return True
        try:
            i = int(pk)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False
        return self._live(i)

    def __iter__(self) -> Iterator[int]:
        return iter(self._pks().tolist())

    def forget(self, pk: int | None = None) -> None:
        if pk is None:
            self._cache.clear()
        else:
            self._cache.pop(pk, None)


class _SeriesByPk(_RecordsByPk[SeriesRec]):
    """``Registry.series_by_pk``: the series records, from the series columns."""

    __slots__ = ()

    def _live(self, i: int) -> bool:
        reg = self._reg
        return 0 <= i < reg.series_end and bool(reg.s_project[i] >= 0)

    def _pks(self) -> npt.NDArray[np.intp]:
        reg = self._reg
        return np.flatnonzero(reg.s_project[: reg.series_end] >= 0)

    def __len__(self) -> int:
        return self._reg.series_count

    def _build(self, i: int) -> SeriesRec:
        reg = self._reg
        dev_id = reg.strings[int(reg.s_devid[i])]
        var_id = reg.name_list[int(reg.s_name[i])]
        set_ = int(reg.s_set[i])
        return SeriesRec(
            i,
            int(reg.s_project[i]),
            int(reg.s_device[i]),
            int(reg.s_variable[i]),
            set_,
            dev_id,
            var_id,
            series_prefix(dev_id, var_id, set_),
        )


_K = TypeVar("_K")
_V = TypeVar("_V")


class _ByGet(Mapping[_K, _V]):
    """A mapping whose lookups all go through its ``get`` (None: absent)."""

    __slots__ = ()

    def __getitem__(self, key: _K) -> _V:
        found: _V | None = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.get(key) is not None  # type: ignore[arg-type]


class _SeriesByKey(_ByGet[tuple[int, int], int]):
    """``Registry.series``: series pk by (variable pk, set), from the column of each
    variable's first series (``v_series``) and a dict of the others (few: a variable has one
    set in the usual case)."""

    __slots__ = ("_reg",)

    def __init__(self, reg: Registry) -> None:
        self._reg = reg

    @overload
    def get(self, key: tuple[int, int], /) -> int | None: ...
    @overload
    def get(self, key: tuple[int, int], default: int | _T, /) -> int | _T: ...
    def get(self, key: Any, default: Any = None) -> Any:
        reg = self._reg
        try:
            var_pk, set_ = key
            var_pk, set_ = int(var_pk), int(set_)
        except (TypeError, ValueError):
            return default
        if 0 <= var_pk < len(reg.v_series):
            pk = int(reg.v_series[var_pk])
            if pk >= 0 and reg.s_set[pk] == set_:
                return pk
        return reg.series_extra.get((var_pk, set_), default)

    def __len__(self) -> int:
        return self._reg.series_count

    def __iter__(self) -> Iterator[tuple[int, int]]:
        reg = self._reg
        live = np.flatnonzero(reg.s_project[: reg.series_end] >= 0)
        return zip(reg.s_variable[live].tolist(), reg.s_set[live].tolist(), strict=True)

    def items(self) -> ItemsView[tuple[int, int], int]:
        return _SeriesItems(self)


class _SeriesItems(ItemsView[tuple[int, int], int]):
    """``Registry.series.items()`` straight from the columns (no lookup per key)."""

    _mapping: _SeriesByKey

    def __iter__(self) -> Iterator[tuple[tuple[int, int], int]]:
        reg = self._mapping._reg
        live = np.flatnonzero(reg.s_project[: reg.series_end] >= 0)
        keys = zip(reg.s_variable[live].tolist(), reg.s_set[live].tolist(), strict=True)
        return zip(keys, live.tolist(), strict=True)


class _VariablesByPk(_RecordsByPk[VariableRec]):
    """``Registry.variables_by_pk``: the variable records, from the variable columns."""

    __slots__ = ()

    def _live(self, i: int) -> bool:
        v_device = self._reg.v_device
        return 0 <= i < len(v_device) and bool(v_device[i] >= 0)

    def _pks(self) -> npt.NDArray[np.intp]:
        return np.flatnonzero(self._reg.v_device >= 0)

    def __len__(self) -> int:
        return self._reg.variable_count

    def _build(self, i: int) -> VariableRec:
        reg = self._reg
        strings = reg.strings
        unit = int(reg.v_unit[i])
        entry, scale, offset = reg.entries[int(reg.v_entry[i])]
        limits, retention_days, metadata = reg.v_extra.get(i, _NO_EXTRA)
        return VariableRec(
            i,
            int(reg.v_device[i]),
            reg.name_list[int(reg.v_id[i])],
            strings[int(reg.v_name[i])],
            None if unit < 0 else strings[unit],
            int(reg.v_set[i]),
            strings[int(reg.v_project[i])],
            strings[int(reg.v_devid[i])],
            entry,
            scale,
            offset,
            limits,
            retention_days,
            metadata,
        )

    def with_extra(self) -> list[VariableRec]:
        """The variables with QC limits, a retention or metadata of their own (few)."""
        return [v for v in map(self.get, list(self._reg.v_extra)) if v is not None]


class _VariablesByKey(_ByGet[tuple[int, str], VariableRec]):
    """``Registry.variables``: by (device pk, variable id), walking the device's variables."""

    __slots__ = ("_reg",)

    def __init__(self, reg: Registry) -> None:
        self._reg = reg

    @overload
    def get(self, key: tuple[int, str], /) -> VariableRec | None: ...
    @overload
    def get(self, key: tuple[int, str], default: VariableRec | _T, /) -> VariableRec | _T: ...
    def get(self, key: Any, default: Any = None) -> Any:
        reg = self._reg
        try:
            device_pk, id_ = key
        except (TypeError, ValueError):
            return default
        code = reg.names.get(id_) if isinstance(id_, str) else None
        if code is None:
            return default
        v_id = reg.v_id
        for pk in reg.variables_of(device_pk):
            if v_id[pk] == code:
                return reg.variables_by_pk.get(pk, default)
        return default

    def __len__(self) -> int:
        return self._reg.variable_count

    def __iter__(self) -> Iterator[tuple[int, str]]:
        reg = self._reg
        live = np.flatnonzero(reg.v_device >= 0)
        names = reg.name_list
        return iter(
            [
                (d, names[c])
                for d, c in zip(reg.v_device[live].tolist(), reg.v_id[live].tolist(), strict=True)
            ]
        )


class _DeviceVariables(Mapping[int, frozenset[int]]):
    """``Registry.device_variables``: variable pks by device pk (a list through a column)."""

    __slots__ = ("_reg",)

    def __init__(self, reg: Registry) -> None:
        self._reg = reg

    @overload
    def get(self, key: int, /) -> frozenset[int] | None: ...
    @overload
    def get(self, key: int, default: frozenset[int] | _T, /) -> frozenset[int] | _T: ...
    def get(self, device_pk: Any, default: Any = None) -> Any:
        pks = self._reg.variables_of(device_pk)
        return frozenset(pks) if pks else default

    def __getitem__(self, device_pk: int) -> frozenset[int]:
        found: frozenset[int] | None = self.get(device_pk)
        if found is None:
            raise KeyError(device_pk)
        return found

    def __len__(self) -> int:
        return int(np.count_nonzero(self._reg.d_first >= 0))

    def __iter__(self) -> Iterator[int]:
        return iter(np.flatnonzero(self._reg.d_first >= 0).tolist())


_NO_EXTRA: tuple[None, None, None] = (None, None, None)
# What a snapshot leaves out (``Registry.snapshot``).
_NOT_SNAPSHOT = frozenset(
    (
        "_applying",
        "_appliers",
        "variables",
        "variables_by_pk",
        "series",
        "series_by_pk",
        "device_variables",
        "derived",
        "version",
        "keeps_qc_limits",
        "docs",
        "_sheds",
        "latest",
        "qc_state",
    )
)
_SERIES_COLUMNS = ("latest", "s_project", "s_device", "s_name", "s_variable", "s_set", "s_devid")
_VARIABLE_COLUMNS = (
    "v_device",
    "v_id",
    "v_name",
    "v_unit",
    "v_project",
    "v_devid",
    "v_set",
    "v_entry",
    "v_next",
)


_RECORDS = "_records"  # the snapshot's entry for what ``_RecordColumns`` holds
# The registry's attributes a snapshot keeps as ``_RecordColumns``.
_RECORD_INDEXES = (
    "sites",
    "devices",
    "devices_by_pk",
    "project_devices",
    "by_type",
    "by_site",
    "by_label",
)


class _RecordColumns:
    """A registry's sites, devices and device indexes as columns and positions, for its
    snapshot (``Registry.snapshot``): unpickled without an object per record on the way, and
    restored with one int per device pk, shared by every index (as ``load`` makes them)."""

    def __init__(self) -> None:
        self.site_pk: list[int] = []
        self.site_project: list[int] = []
        self.site_id: list[str] = []
        self.site_stored: list[str] = []
        self.device_pk: list[int] = []  # in the order of ``devices_by_pk``
        self.device_project: list[int] = []
        self.device_id: list[str] = []
        self.device_site: list[str | None] = []
        self.device_type: list[str | None] = []
        self.device_stored: list[str] = []
        self.device_order: list[int] = []  # ``devices``' order, as positions in the above
        # The indexes: their keys with the positions of their devices (a lone device of a
        # site, ``by_site``'s int, as a position of its own).
        self.project_devices: list[tuple[int, npt.NDArray[np.int64]]] = []
        self.by_type: list[tuple[tuple[int, str | None], npt.NDArray[np.int64]]] = []
        self.by_site: list[tuple[tuple[int, str | None], int | npt.NDArray[np.int64]]] = []
        self.by_label: list[tuple[tuple[int, str], list[tuple[str, npt.NDArray[np.int64]]]]] = []

    @classmethod
    def of(cls, reg: Registry) -> _RecordColumns:
        out = cls()
        for site in reg.sites.values():
            out.site_pk.append(site.pk)
            out.site_project.append(site.project_pk)
            out.site_id.append(site.id)
            out.site_stored.append(site.stored)
        where: dict[int, int] = {}
        for dev in reg.devices_by_pk.values():
            where[dev.pk] = len(out.device_pk)
            out.device_pk.append(dev.pk)
            out.device_project.append(dev.project_pk)
            out.device_id.append(dev.id)
            out.device_site.append(dev.site)
            out.device_type.append(dev.type)
            out.device_stored.append(dev.stored)
        out.device_order = [where[dev.pk] for dev in reg.devices.values()]

        def at(pks: set[int]) -> npt.NDArray[np.int64]:
            return np.array([where[pk] for pk in pks], np.int64)

        out.project_devices = [(k, at(v)) for k, v in reg.project_devices.items()]
        out.by_type = [(k, at(v)) for k, v in reg.by_type.items()]
        out.by_site = [
            (k, where[v] if isinstance(v, int) else at(v)) for k, v in reg.by_site.items()
        ]
        out.by_label = [
            (k, [(value, at(pks)) for value, pks in values.items()])
            for k, values in reg.by_label.items()
        ]
        return out

    def restore(self, reg: Registry) -> None:
        # One tuple for equal keys of ``sites``, ``devices`` and ``by_site`` (a site's key is
        # its devices' ``by_site`` key, and a station's device often has the site's id): about
        # 100 bytes each, 6 MB of a 30,000-station network's process when each was its own.
        keys: dict[tuple[int, str | None], tuple[int, str | None]] = {}
        for pk, project_pk, id_, stored in zip(
            self.site_pk, self.site_project, self.site_id, self.site_stored, strict=True
        ):
            site = SiteRec.__new__(SiteRec)
            site.pk, site.project_pk, site.id, site.stored = pk, project_pk, id_, stored
            key = (project_pk, id_)
            keys[key] = key
            reg.sites[key] = site
        recs: list[DeviceRec] = []
        for pk, project_pk, id_, site_id, type_, stored in zip(
            self.device_pk,
            self.device_project,
            self.device_id,
            self.device_site,
            self.device_type,
            self.device_stored,
            strict=True,
        ):
            dev = DeviceRec.__new__(DeviceRec)
            dev.pk, dev.project_pk, dev.id = pk, project_pk, id_
            dev.site, dev.type, dev.stored = site_id, type_, stored
            reg.devices_by_pk[pk] = dev
            recs.append(dev)
        for i in self.device_order:
            dev = recs[i]
            key = (dev.project_pk, dev.id)
            reg.devices[keys.get(key, key)] = dev  # type: ignore[index]
        pks = [dev.pk for dev in recs]

        def of(at: npt.NDArray[np.int64]) -> set[int]:
            return {pks[i] for i in at.tolist()}

        reg.project_devices = {k: of(v) for k, v in self.project_devices}
        reg.by_type = {k: of(v) for k, v in self.by_type}
        reg.by_site = {
            keys.get(k, k): pks[v] if isinstance(v, int) else of(v) for k, v in self.by_site
        }
        reg.by_label = {k: {value: of(at) for value, at in values} for k, values in self.by_label}


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
        # Variables: columns indexed by variable pk, records built on demand.
        self.variables = _VariablesByKey(self)
        self.variables_by_pk = _VariablesByPk(self)
        self.variable_count = 0
        self.v_device: _I32 = _column32(1024, -1)  # device pk (-1: no such variable)
        self.v_id: _I32 = _column32(1024, -1)  # id, interned in ``names``
        self.v_name: _I32 = _column32(1024, -1)  # name, unit, project and device ids in ``strings``
        self.v_unit: _I32 = _column32(1024, -1)  # -1: none
        self.v_project: _I32 = _column32(1024, -1)
        self.v_devid: _I32 = _column32(1024, -1)
        self.v_set: _I32 = _column32(1024, -1)
        self.v_entry: _I32 = _column32(1024, -1)  # the (entry, scale, offset) in ``entries``
        self.v_next: _I32 = _column32(
            1024, -1
        )  # the device's next variable (its list: ``d_first``)
        self.v_extra: dict[int, tuple[QCLimits | None, float | None, dict[str, Any] | None]] = {}
        self.entries: list[tuple[Entry, float, float]] = []
        self._entry_table = np.zeros((0, 5), np.float64)  # ``_entry_limits``
        self.entry_codes: dict[tuple[str, str | None], int] = {}
        self.d_first: _I32 = _column32(1024, -1)  # by device pk: its first variable (-1: none)
        # Series: columns indexed by series pk (below), records built on demand.
        self.series = _SeriesByKey(self)  # (variable pk, set) -> series pk
        self.series_by_pk = _SeriesByPk(self)
        self.series_count = 0
        self.series_extra: dict[tuple[int, int], int] = {}  # a variable's second, third ... set
        self.accounts: dict[str, AccountRec] = {}
        self.accounts_by_pk: dict[int, AccountRec] = {}
        self.key_owner: dict[str, int] = {}  # key id -> account pk
        # Columns indexed by series pk, for filters compiled with numpy:
        self.latest = _column(1024, _NEVER)  # latest stored time (ms): the cheap duplicate check
        self.s_project = _column(1024, -1)  # project pk (-1: no such series)
        self.s_device = _column(1024, -1)  # device pk
        self.s_name = _column(1024, -1)  # variable id, interned in ``names``
        self.s_variable: _I32 = _column32(1024, -1)  # variable pk
        self.s_set: _I32 = _column32(1024, -1)
        self.s_devid: _I32 = _column32(1024, -1)  # the device's id, interned in ``strings``
        self.names: dict[str, int] = {}
        self.name_list: list[str] = []  # ``names`` the other way
        self.strings: list[str] = []  # other interned strings, by code (``string_codes``)
        self.string_codes: dict[str, int] = {}
        # The first series of each variable, by variable pk (-1: none).
        self.v_series: _I32 = _column32(1024, -1)
        # Quality control: limits per series (set with the series) and the per-series state
        # the checks carry from batch to batch (writer thread only).
        self.qc_limits = qc.Limits()
        self.qc_state = qc.QCState()
        # False: nothing checks this registry's series (a fan-out worker's: the writer runs
        # QC), so no limits are kept (41 bytes a series). Set before the registry is loaded.
        self.keeps_qc_limits = True
        # None: each site's and device's document is kept (its JSON); a source: none is, and
        # each is read from the source when asked (a fan-out worker's registry: 10 MB of its
        # process with a 30,000-station network). Set before the registry is loaded.
        self.docs: DocSource | None = None
        self._sheds: dict[tuple[tuple[str, str], ...], Shed] = {}  # by labels (``_shed_device``)
        self.series_end = 1  # one past the highest series pk ever registered
        # Device indexes, so filters by type and label never walk every device:
        self.project_devices: dict[int, set[int]] = {}
        self.device_variables = _DeviceVariables(self)
        self.by_type: dict[tuple[int, str | None], set[int]] = {}
        self.by_label: dict[tuple[int, str], dict[str, set[int]]] = {}
        # By site: a device pk while it is the site's only device (a set each weighed 200 B).
        self.by_site: dict[tuple[int, str | None], int | set[int]] = {}
        # Structures computed from metadata by readers (e.g. site columns), dropped on a change.
        self.derived: dict[object, object] = {}
        self._appliers: dict[type, Callable[[Any], None]] = {
            ev.ProjectPut: self._project_put,
            ev.ProjectDropped: self._project_dropped,
            ev.SitePut: self._site_put,
            ev.SiteStored: self._site_stored,
            ev.SiteDropped: self._site_dropped,
            ev.DevicePut: self._device_put,
            ev.DeviceStored: self._device_stored,
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
        """``apply`` each of ``events`` in order. A run of ``SeriesAdded`` that are all new (pks
        past ``series_end`` and (variable, set) keys not known, each once: what an append that
        meets a network's series for the first time creates, hundreds per batch) is applied a
        column at a time, with the same outcome as one by one (``_add_series``)."""
        i, n = 0, len(events)
        while i < n:
            if type(events[i]) is not ev.SeriesAdded:
                self.apply(events[i])
                i += 1
                continue
            j = i + 1
            while j < n and type(events[j]) is ev.SeriesAdded:
                j += 1
            run = cast("Sequence[ev.SeriesAdded]", events[i:j])
            with self._applying:
                if j - i < SERIES_RUN or not self._add_new_series(run):
                    for event in run:
                        self._series_added(event)
            i = j

    def load(self, tables: Tables) -> None:
        """What a store's tables hold, on open (``domain.readmodel.ReadModel.load``): the
        registry their rows' events would build, variables and series a column at a time.
        Python's cyclic garbage collector is off meanwhile (a load makes hundreds of thousands
        of objects, none of them garbage in a cycle: a collection every few hundred found
        nothing and cost a quarter of the load)."""
        with self._applying, _collector_off():
            for event in tables.projects:
                self._appliers[type(event)](event)
            for pk, project_pk, doc in tables.sites:
                rec = SiteRec(pk, project_pk, stored=doc)
                self.sites[(project_pk, rec.id)] = rec
                self._shed_site(rec)
            for pk, project_pk, doc in tables.devices:
                old = self.devices_by_pk.get(pk)
                if old is not None:
                    self._drop_device_rec(old)
                self._put_device(DeviceRec(pk, project_pk, stored=doc))
            self._load_variables(tables.variables)
            self._load_series(tables.series)
            for event in tables.accounts:
                self._appliers[type(event)](event)
            self._share_keys()
            self._fit()
            self._bump()

    def snapshot(self) -> dict[str, Any]:
        """The metadata this registry holds, as plain attributes (columns, records, indexes):
        what ``restore_snapshot`` takes into an empty registry of the same code, instead of
        ``load`` (``store/sqlite/snapshot.py`` keeps it in a file beside the database). Not
        in it: the lock, the appliers and the views over the columns (each registry makes its
        own), derived structures, and the log's state (latest times, QC state), which the
        store reads from the log either way.

        Sites, devices and the device indexes are kept as columns (``_RecordColumns``): pickled
        as objects, each record left a tuple and a dict behind while unpickling and each index
        its own copy of every device pk, 12 MB of a 30,000-station network's process."""
        with self._applying:
            state = {k: v for k, v in vars(self).items() if k not in _NOT_SNAPSHOT}
            for name in _RECORD_INDEXES:
                del state[name]
            state[_RECORDS] = _RecordColumns.of(self)
            return state

    def restore_snapshot(self, state: dict[str, Any]) -> bool:
        """Take ``state`` (a ``snapshot``) into this registry, which must be empty: the same
        registry as the ``load`` of the tables the snapshot was taken of. False, with nothing
        changed, when its attributes are not the ones this code's registry has."""
        expected = (set(vars(self)) - _NOT_SNAPSHOT - set(_RECORD_INDEXES)) | {_RECORDS}
        records = state.get(_RECORDS)
        if set(state) != expected or not isinstance(records, _RecordColumns):
            return False
        with self._applying:
            vars(self).update({k: v for k, v in state.items() if k != _RECORDS})
            records.restore(self)
            if self.docs is not None:  # a fan-out worker's: documents read when asked
                for site in self.sites.values():
                    self._shed_site(site)
                for dev in self.devices_by_pk.values():
                    self._shed_device(dev, _indexed(dev)[2])
            if not self.keeps_qc_limits:  # a fan-out worker's: the writer runs QC
                self.qc_limits = qc.Limits()
            self.latest = _column(len(self.s_project), _NEVER)
            self._fit()  # a live registry's columns had room to grow: trimmed as ``load`` does
            self._bump()
        return True

    def _share_keys(self) -> None:
        """One tuple for equal keys of ``sites``, ``devices`` and ``by_site`` (as
        ``_RecordColumns.restore`` makes them)."""
        keys: dict[tuple[int, str | None], tuple[int, str | None]] = {k: k for k in self.sites}
        self.devices = {keys.get(k, k): v for k, v in self.devices.items()}  # type: ignore[misc]
        self.by_site = {keys.get(k, k): v for k, v in self.by_site.items()}

    def _fit(self) -> None:
        """Cut the columns grown by doubling while loading to what they hold (a network that
        grows after a start pays one doubling then)."""
        size = self.series_end + 1
        for name in _SERIES_COLUMNS:
            col = getattr(self, name)
            if len(col) > size:
                setattr(self, name, col[:size].copy())
        q = self.qc_limits
        for name in ("lo", "hi", "max_rate", "max_persist_ms", "role", "group"):
            col = getattr(q, name)
            if len(col) > size:
                setattr(q, name, col[:size].copy())
        size = int(np.max(np.flatnonzero(self.v_device >= 0), initial=0)) + 2
        for name in (*_VARIABLE_COLUMNS, "v_series"):
            col = getattr(self, name)
            if len(col) > size:
                setattr(self, name, col[:size].copy())

    def _load_variables(self, rows: Iterable[tuple[int, int, str]]) -> None:
        if self.variable_count:  # not empty: one at a time
            for pk_, device_pk, doc in rows:
                rec = stored_variable_rec(pk_, device_pk, doc)
                known = pk_ in self.variables_by_pk
                self._put_variable(rec)
                if known:
                    self._refresh_limits(rec)
            return
        it = iter(rows)
        heads: dict[str, dict[str, Any] | None] = {}
        while chunk := list(itertools.islice(it, LOAD_CHUNK)):  # no peak of objects per row
            self._load_variable_chunk(chunk, heads)

    def _load_variable_chunk(
        self, rows: list[tuple[int, int, str]], heads: dict[str, dict[str, Any] | None]
    ) -> None:
        pks, devs, stored = zip(*rows, strict=True)
        docs, which, devices, whole = _stored_docs(stored, heads)
        at = np.array(which, np.intp)
        pk = np.array(pks, np.int64)
        dev = np.array(devs, np.int64)
        top = int(pk.max())
        if top >= len(self.v_device):
            for name in _VARIABLE_COLUMNS:
                setattr(self, name, _grow(getattr(self, name), top + 1, -1))
        self._variable_capacity(top)
        if int(dev.max()) >= len(self.d_first):
            self.d_first = _grow(self.d_first, int(dev.max()) + 1, -1)
        code = self.string_code

        def column(values: list[Any], coding: Callable[[Any], int]) -> npt.NDArray[np.int64]:
            """The code of each row's value, from its distinct document's."""
            return np.array(_coded(values, coding), np.int64)[at]

        # A column holds few distinct strings (but the device ids): a code per distinct one.
        self.v_device[pk] = dev
        self.v_id[pk] = column([d["id"] for d in docs], self.name_code)
        self.v_name[pk] = column([d["name"] for d in docs], code)
        self.v_unit[pk] = column(
            [d.get("unit") for d in docs], lambda u: -1 if u is None else code(u)
        )
        self.v_project[pk] = column([d["project"] for d in docs], code)
        self.v_devid[pk] = _coded(devices, code)
        self.v_set[pk] = np.array([d.get("set", 1) for d in docs], np.int64)[at]
        # The catalog entry of each distinct (name, unit) pair, found by their codes (hashing
        # a tuple of two strings per variable cost more than the rest of the chunk).
        strings = self.strings
        base = len(strings) + 1
        pair = self.v_name[pk].astype(np.int64) * base + self.v_unit[pk] + 1
        distinct, inverse = np.unique(pair, return_inverse=True)
        entries = [
            self._entry_code(strings[p // base], None if p % base == 0 else strings[p % base - 1])
            for p in distinct.tolist()
        ]
        self.v_entry[pk] = np.array(entries, np.int64)[inverse]
        for i in whole:  # a shared document has none of these
            d = docs[which[i]]
            limits, keep, meta = d.get("limits"), d.get("retention_days"), d.get("metadata")
            if limits is not None or keep is not None or meta:
                own = None if limits is None else QCLimits.model_validate(limits)
                self.v_extra[pks[i]] = (own, keep, meta or None)
        # Each device's list: its variables in pk order, then those it had.
        order = np.lexsort((pk, dev))
        pk_s, dev_s = pk[order], dev[order]
        same = dev_s[1:] == dev_s[:-1]
        first = np.ones(len(pk_s), np.bool_)
        first[1:] = ~same
        last = np.ones(len(pk_s), np.bool_)
        last[:-1] = ~same
        nxt = np.full(len(pk_s), -1, np.int64)
        nxt[:-1][same] = pk_s[1:][same]
        nxt[last] = self.d_first[dev_s[last]]
        self.v_next[pk_s] = nxt
        self.d_first[dev_s[first]] = pk_s[first]
        self.variable_count += len(pk)

    def _entry_code(self, name: str, unit: str | None) -> int:
        code = self.entry_codes.get((name, unit))
        if code is None:
            code = self.entry_codes[(name, unit)] = len(self.entries)
            self.entries.append(variable_entry(name, unit))
        return code

    def _load_series(self, rows: Iterable[tuple[int, int, int, int, int]]) -> None:
        # The device ids, by device pk: those of the series.
        dev_code = np.full(max(self.devices_by_pk, default=0) + 1, -1, np.int64)
        for dev in self.devices_by_pk.values():
            dev_code[dev.pk] = self.string_code(dev.id)
        bulk = not self.series_count
        it = iter(rows)
        while chunk := list(itertools.islice(it, LOAD_CHUNK)):
            self._load_series_chunk(np.array(chunk, np.int64).reshape(-1, 5), dev_code, bulk)

    def _load_series_chunk(
        self, cols: npt.NDArray[np.int64], dev_code: npt.NDArray[np.int64], bulk: bool
    ) -> None:
        # Those of a known device and variable (what a join of the tables gives).
        var, devs = cols[:, 3], cols[:, 2]
        known = (var < len(self.v_device)) & (devs < len(dev_code))
        known[known] &= (self.v_device[var[known]] >= 0) & (dev_code[devs[known]] >= 0)
        cols = cols[known]
        if not bulk:  # not empty: one at a time
            for series_pk, project_pk, device_pk, variable_pk, set_no in cols.tolist():
                self._add_series(
                    series_pk,
                    project_pk,
                    device_pk,
                    variable_pk,
                    set_no,
                    self.strings[int(dev_code[device_pk])],
                    self.name_list[int(self.v_id[variable_pk])],
                )
            return
        pk, project, devs, var, set_ = cols.T
        if len(pk):
            self._put_new_series(pk, project, devs, var, set_, self.v_id[var], dev_code[devs])

    # -- what the store reads and keeps (``domain.readmodel.ReadModel``) -------------------------

    def variable_entry(self, name: str, unit: str | None) -> tuple[Entry, float, float]:
        return variable_entry(name, unit)

    def restore_latest(self, series: Sequence[int], times: Sequence[int]) -> None:
        """The log's latest time per series, on open; ``series_end`` goes past every pk the log
        has rows of, deleted series' included, so such a pk is never given again."""
        pks = np.asarray(series, np.int64)
        if not len(pks):
            return
        top = int(pks.max())
        self._series_capacity(top)
        np.maximum.at(self.latest, pks, np.asarray(times, np.int64))
        self.series_end = max(self.series_end, top + 1)

    # -- reads ----------------------------------------------------------------------------------

    def site_documents(self, recs: Sequence[SiteRec]) -> list[str]:
        """The stored JSON of each of ``recs`` (read at once when this registry keeps none)."""
        if self.docs is None:
            return [site.stored for site in recs]
        return self.docs.sites(recs)

    def devices_at(self, project_pk: int, site: str) -> set[int]:
        found = self.by_site.get((project_pk, site))
        return {found} if isinstance(found, int) else set() if found is None else found

    def devices_of_type(self, project_pk: int, type_: str) -> set[int]:
        return self.by_type.get((project_pk, type_), set())

    def devices_with_label(self, project_pk: int, key: str, value: str | None) -> set[int]:
        values = self.by_label.get((project_pk, key), {})
        if value is not None:
            return values.get(value, set())
        return set().union(*values.values()) if values else set()

    def project(self, project_id: str) -> ProjectRec | None:
        return self.projects.get(project_id)

    def knows_series(self, pks: npt.NDArray[np.int64]) -> bool:
        """Whether every pk of ``pks`` is a series of this registry (``in series_by_pk`` for
        each, at once)."""
        if not len(pks):
            return True
        if int(pks.min()) < 0 or int(pks.max()) >= self.series_end:
            return False
        return bool((self.s_project[pks] >= 0).all())

    def project_series(self, project_pk: int) -> npt.NDArray[np.int64]:
        """The pks of a project's series, ascending."""
        return np.flatnonzero(self.s_project[: self.series_end] == project_pk)

    def series_stations(self, since: int = 0) -> tuple[list[int], list[int], list[str]]:
        """(series, station, sensor) of the series from pk ``since`` on: a station is a
        site's pk, or a device without one as ``-device pk - 1``; the sensor, the variable id."""
        end = self.series_end
        live = np.flatnonzero(self.s_project[since:end] >= 0) + since
        devs = self.s_device[live]
        sites = {(s.project_pk, s.id): s.pk for s in list(self.sites.values())}
        site_of = np.full(max(self.devices_by_pk, default=0) + 1, -1, np.int64)
        for dev in list(self.devices_by_pk.values()):
            site = sites.get((dev.project_pk, dev.site)) if dev.site else None
            if site is not None:
                site_of[dev.pk] = site
        known = (devs >= 0) & (devs < len(site_of))
        station = np.where(known, site_of[np.where(known, devs, 0)], -1)
        station = np.where(station >= 0, station, -devs - 1)
        names = self.name_list
        return (
            live.tolist(),
            station.tolist(),
            [names[c] for c in self.s_name[live].tolist()],
        )

    def variables_with_extra(self) -> list[VariableRec]:
        """The variables with QC limits, a retention or metadata of their own (few)."""
        return self.variables_by_pk.with_extra()

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
            rec = self.sites[key] = SiteRec(e.pk, e.project_pk, e.doc)
        self._shed_site(rec)
        self._bump()

    def _site_stored(self, e: ev.SiteStored) -> None:
        rec = SiteRec(e.pk, e.project_pk, stored=e.doc)
        self.sites[(e.project_pk, rec.id)] = rec
        self._shed_site(rec)
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

    def _device_stored(self, e: ev.DeviceStored) -> None:
        rec = self.devices_by_pk.get(e.pk)
        if rec is not None:
            self._drop_device_rec(rec)
        self._put_device(DeviceRec(e.pk, e.project_pk, stored=e.doc))
        self._bump()

    def _device_moved(self, e: ev.DeviceMoved) -> None:
        """The device's record is replaced (a new ``DeviceRec`` in the target project); its
        variables and series stay, its series now belong to the target project."""
        dev = self.devices_by_pk.get(e.pk)
        if dev is None:
            return
        self._unindex(dev)
        self.project_devices.get(dev.project_pk, set()).discard(dev.pk)
        self.devices.pop((dev.project_pk, dev.id), None)
        self._put_device(DeviceRec(e.pk, e.project_pk, e.doc))
        end = self.series_end
        moved = (self.s_device[:end] == e.pk) & (self.s_project[:end] >= 0)
        self.s_project[:end][moved] = e.project_pk
        self.series_by_pk.forget()
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
        pk = e.pk
        if (
            pk < self.series_end
            and self.s_project[pk] == e.project_pk
            and self.s_variable[pk] == e.variable_pk
            and self.s_set[pk] == e.set
        ):
            return  # applied already (the writer applies an append's series before commit)
        self._add_series(
            pk, e.project_pk, e.device_pk, e.variable_pk, e.set, e.device_id, e.variable_id
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

    def name_code(self, name: str) -> int:
        """The code of a variable id in ``names`` (given one if new)."""
        code = self.names.get(name)
        if code is None:
            code = self.names[name] = len(self.name_list)
            self.name_list.append(_intern(name))
        return code

    def string_code(self, text: str) -> int:
        """The code of ``text`` in ``strings`` (given one if new)."""
        code = self.string_codes.get(text)
        if code is None:
            code = self.string_codes[text] = len(self.strings)
            self.strings.append(_intern(text))
        return code

    def _series_capacity(self, pk: int) -> None:
        if pk >= len(self.latest):
            size = _doubled(len(self.latest), pk + 1)
            self.latest = _grow(self.latest, size, _NEVER)
            self.s_project = _grow(self.s_project, size, -1)
            self.s_device = _grow(self.s_device, size, -1)
            self.s_name = _grow(self.s_name, size, -1)
            self.s_variable = _grow(self.s_variable, size, -1)
            self.s_set = _grow(self.s_set, size, -1)
            self.s_devid = _grow(self.s_devid, size, -1)

    def _variable_capacity(self, pk: int) -> None:
        if pk >= len(self.v_series):
            self.v_series = _grow(self.v_series, _doubled(len(self.v_series), pk + 1), -1)

    def _add_series(
        self,
        pk: int,
        project_pk: int,
        device_pk: int,
        variable_pk: int,
        set_: int,
        device_id: str,
        variable_id: str,
    ) -> None:
        if pk < self.series_end and self.s_project[pk] >= 0:
            self._drop_series(pk)  # replaced
        self._series_capacity(pk)
        self._variable_capacity(variable_pk)
        self.series_by_pk.forget(pk)
        self.s_project[pk] = project_pk
        self.s_device[pk] = device_pk
        self.s_name[pk] = self.name_code(variable_id)
        self.s_variable[pk] = variable_pk
        self.s_set[pk] = set_
        self.s_devid[pk] = self.string_code(device_id)
        first = int(self.v_series[variable_pk])
        if first < 0 or first == pk:
            self.v_series[variable_pk] = pk
        elif self.s_set[first] == set_:  # the same key again: the new pk wins
            self.s_project[first] = -1
            self.s_device[first] = -1
            self.series_count -= 1
            self.v_series[variable_pk] = pk
        else:
            old = self.series_extra.get((variable_pk, set_))
            if old is not None and old != pk:
                self.s_project[old] = -1
                self.s_device[old] = -1
                self.series_count -= 1
            self.series_extra[(variable_pk, set_)] = pk
        self.series_count += 1
        self.series_end = max(self.series_end, pk + 1)
        var = self.variables_by_pk.get(variable_pk) if self.keeps_qc_limits else None
        if var is not None:
            self.qc_limits.set(pk, *qc_limits(var), group=device_pk)

    def series_added(
        self, first_pk: int, variable_pks: Sequence[int], sets: Sequence[int]
    ) -> list[ev.SeriesAdded] | None:
        """The events that add series ``first_pk``, ``first_pk + 1`` ... of these (variable
        pk, set) keys, read from the variable columns (no record built per variable); None
        if some variable does not exist."""
        var = np.asarray(variable_pks, np.int64)
        if len(var) and (int(var.min()) < 0 or int(var.max()) >= len(self.v_device)):
            return None
        devs = self.v_device[var]
        if len(devs) and int(devs.min()) < 0:
            return None
        by_pk, names = self.devices_by_pk, self.name_list
        out: list[ev.SeriesAdded] = []
        for k, (v, s_, d, code) in enumerate(
            zip(var.tolist(), sets, devs.tolist(), self.v_id[var].tolist(), strict=True)
        ):
            dev = by_pk[d]
            out.append(ev.SeriesAdded(first_pk + k, dev.project_pk, d, v, s_, dev.id, names[code]))
        return out

    def _add_new_series(self, run: Sequence[ev.SeriesAdded]) -> bool:
        """``_add_series`` for each of ``run``, a column at a time; False (nothing changed) when
        some event is not a new series (its pk taken or repeated, its key known or repeated):
        those are applied one by one."""
        cols = np.array(
            [(e.pk, e.project_pk, e.device_pk, e.variable_pk, e.set) for e in run], np.int64
        )
        pk, project, devs, var, set_ = cols.T
        m = len(pk)
        if int(pk.min()) < self.series_end or int(var.min()) < 0:
            return False
        if len(np.unique(pk)) != m or len(np.unique(var * 1024 + set_)) != m:
            return False
        first = np.full(m, -1, np.int64)
        inside = var < len(self.v_series)
        first[inside] = self.v_series[var[inside]]
        taken = first >= 0
        if np.any(self.s_set[first[taken]] == set_[taken]):
            return False  # the key is a variable's first series already
        extra = self.series_extra
        if extra and any(k in extra for k in zip(var.tolist(), set_.tolist(), strict=True)):
            return False
        for p in pk.tolist():
            self.series_by_pk.forget(p)
        names = np.array([self.name_code(e.variable_id) for e in run], np.int64)
        devids = np.array([self.string_code(e.device_id) for e in run], np.int64)
        self._put_new_series(pk, project, devs, var, set_, names, devids)
        return True

    def _put_new_series(
        self,
        pk: npt.NDArray[np.int64],
        project: npt.NDArray[np.int64],
        devs: npt.NDArray[np.int64],
        var: npt.NDArray[np.int64],
        set_: npt.NDArray[np.int64],
        names: npt.NDArray[np.int64],
        devids: npt.NDArray[np.int64],
    ) -> None:
        """Series known to be new (pks past ``series_end``, (variable, set) keys not known,
        each once) a column at a time, as ``_add_series`` one by one: a variable's first series
        is the first of them in order when it has none yet, the others go to
        ``series_extra``; the QC limits of those of a live variable are the catalog's per
        entry (``_entry_limits``), or the variable's own (``qc_limits``)."""
        m = len(pk)
        top = int(pk.max())
        self._series_capacity(top)
        self._variable_capacity(int(var.max()))
        self.s_project[pk] = project
        self.s_device[pk] = devs
        self.s_name[pk] = names
        self.s_variable[pk] = var
        self.s_set[pk] = set_
        self.s_devid[pk] = devids
        uniq, at = np.unique(var, return_index=True)
        free = self.v_series[uniq] < 0
        self.v_series[uniq[free]] = pk[at[free]]
        if int(np.count_nonzero(free)) < m:
            rest = np.ones(m, np.bool_)
            rest[at[free]] = False
            others = zip(pk[rest].tolist(), var[rest].tolist(), set_[rest].tolist(), strict=True)
            for p, v, s_ in others:
                self.series_extra[(v, s_)] = p
        self.series_count += m
        self.series_end = max(self.series_end, top + 1)
        if not self.keeps_qc_limits:
            return
        live = var < len(self.v_device)
        live[live] = self.v_device[var[live]] >= 0
        if not live.any():
            return
        lpk, lvar, ldev = pk[live], var[live], devs[live]
        table = self._entry_limits()
        ent = self.v_entry[lvar]
        q = self.qc_limits
        q.ensure(_doubled(len(q.lo), top + 1))
        q.lo[lpk] = table[ent, 0]
        q.hi[lpk] = table[ent, 1]
        q.max_rate[lpk] = table[ent, 2]
        q.max_persist_ms[lpk] = table[ent, 3].astype(np.int64)
        q.role[lpk] = table[ent, 4].astype(np.int8)
        q.group[lpk] = ldev
        if self.v_extra:
            for p, v, d in zip(lpk.tolist(), lvar.tolist(), ldev.tolist(), strict=True):
                own = self.v_extra.get(v, _NO_EXTRA)[0]
                if own is not None:
                    entry = self.entries[int(self.v_entry[v])][0]
                    q.set(p, *_qc_limits(entry, own), group=d)

    def _entry_limits(self) -> npt.NDArray[np.float64]:
        """Row ``e``: ``_qc_limits`` of catalog entry ``e`` without a variable's own limits
        (lo, hi, max_rate, max_persist_ms, role), kept until an entry is added."""
        table = self._entry_table
        if len(table) != len(self.entries):
            rows = [_qc_limits(e, None) for e, _, _ in self.entries]
            table = self._entry_table = np.array(rows, np.float64).reshape(-1, 5)
        return table

    def _series_of_variable(self, variable_pk: int) -> list[int]:
        """The variable's series: its first (``v_series``) and its other sets' (few)."""
        out = []
        if 0 <= variable_pk < len(self.v_series) and self.v_series[variable_pk] >= 0:
            out.append(int(self.v_series[variable_pk]))
        if self.series_extra:
            out += [pk for (v, _), pk in self.series_extra.items() if v == variable_pk]
        return out

    def _refresh_limits(self, var: VariableRec) -> None:
        if not self.keeps_qc_limits:
            return
        for pk in self._series_of_variable(var.pk):
            self.qc_limits.set(pk, *qc_limits(var), group=var.device_pk)

    def _drop_series(self, pk: int) -> None:
        if not 0 <= pk < self.series_end or self.s_project[pk] < 0:
            return
        self.series_by_pk.forget(pk)
        var_pk, set_ = int(self.s_variable[pk]), int(self.s_set[pk])
        if self.v_series[var_pk] == pk:
            self.v_series[var_pk] = -1
        elif self.series_extra.get((var_pk, set_)) == pk:
            del self.series_extra[(var_pk, set_)]
        self.s_project[pk] = -1
        self.s_device[pk] = -1
        self.series_count -= 1

    def _drop_series_of_variable(self, variable_pk: int) -> None:
        for pk in self._series_of_variable(variable_pk):
            self._drop_series(pk)

    def variables_of(self, device_pk: int) -> list[int]:
        """The pks of a device's variables (newest first)."""
        out: list[int] = []
        try:
            pk = int(self.d_first[device_pk]) if 0 <= device_pk < len(self.d_first) else -1
        except TypeError:
            return out
        nxt = self.v_next
        while pk >= 0:
            out.append(pk)
            pk = int(nxt[pk])
        return out

    def _put_variable(self, var: VariableRec) -> None:
        pk = var.pk
        if pk < len(self.v_device) and self.v_device[pk] >= 0:
            self._unlink_variable(pk)
        else:
            self.variable_count += 1
        if pk >= len(self.v_device):
            size = max(pk + 1, len(self.v_device) * 2)
            for name in _VARIABLE_COLUMNS:
                setattr(self, name, _grow(getattr(self, name), size, -1))
        self._variable_capacity(pk)
        if var.device_pk >= len(self.d_first):
            self.d_first = _grow(self.d_first, max(var.device_pk + 1, len(self.d_first) * 2), -1)
        self.variables_by_pk.forget(pk)
        key = (var.name, var.unit)
        entry = self.entry_codes.get(key)
        if entry is None:
            entry = self.entry_codes[key] = len(self.entries)
            self.entries.append((var.entry, var.scale, var.offset))
        self.v_device[pk] = var.device_pk
        self.v_id[pk] = self.name_code(var.id)
        self.v_name[pk] = self.string_code(var.name)
        self.v_unit[pk] = -1 if var.unit is None else self.string_code(var.unit)
        self.v_project[pk] = self.string_code(var.project)
        self.v_devid[pk] = self.string_code(var.device)
        self.v_set[pk] = var.set
        self.v_entry[pk] = entry
        self.v_next[pk] = self.d_first[var.device_pk]
        self.d_first[var.device_pk] = pk
        if var.limits is not None or var.retention_days is not None or var.metadata:
            self.v_extra[pk] = (var.limits, var.retention_days, var.metadata or None)
        else:
            self.v_extra.pop(pk, None)

    def _unlink_variable(self, pk: int) -> None:
        """Take variable ``pk`` out of its device's list."""
        device_pk = int(self.v_device[pk])
        at = int(self.d_first[device_pk])
        if at == pk:
            self.d_first[device_pk] = self.v_next[pk]
        else:
            while at >= 0:
                nxt = int(self.v_next[at])
                if nxt == pk:
                    self.v_next[at] = self.v_next[pk]
                    break
                at = nxt
        self.v_next[pk] = -1

    def _drop_variable(self, var: VariableRec) -> None:
        self._drop_series_of_variable(var.pk)
        if var.pk < len(self.v_device) and self.v_device[var.pk] >= 0:
            self._unlink_variable(var.pk)
            self.v_device[var.pk] = -1
            self.v_extra.pop(var.pk, None)
            self.variables_by_pk.forget(var.pk)
            self.variable_count -= 1

    def _put_device(self, dev: DeviceRec, doc: Device | None = None) -> None:
        """Add ``dev``, or replace its document with ``doc``, keeping the indexes right."""
        if doc is not None:
            self._unindex(dev)
            dev.doc = doc
        self.devices[(dev.project_pk, dev.id)] = dev
        self.devices_by_pk[dev.pk] = dev
        self.project_devices.setdefault(dev.project_pk, set()).add(dev.pk)
        type_, site, labels = _indexed(dev)
        self.by_type.setdefault((dev.project_pk, type_), set()).add(dev.pk)
        at = (dev.project_pk, site)
        had = self.by_site.get(at)
        if had is None or had == dev.pk:
            self.by_site[at] = dev.pk
        elif isinstance(had, int):
            self.by_site[at] = {had, dev.pk}
        else:
            had.add(dev.pk)
        for key, value in labels.items():
            self.by_label.setdefault((dev.project_pk, key), {}).setdefault(value, set()).add(dev.pk)
        self._shed_device(dev, labels)

    def _shed_site(self, site: SiteRec) -> None:
        """Drop ``site``'s document if this registry keeps none (``docs``)."""
        if self.docs is not None:
            site.shed(self.docs)

    def _shed_device(self, dev: DeviceRec, labels: dict[str, str]) -> None:
        """Drop ``dev``'s document if this registry keeps none (``docs``), keeping its labels
        (as the label index has them) in a ``Shed`` shared by the devices with the same."""
        if self.docs is None:
            return
        key = tuple(sorted(labels.items()))
        shed = self._sheds.get(key)
        if shed is None:
            shed = self._sheds[key] = Shed(self.docs, labels)
        dev.shed(shed)

    def _unindex(self, dev: DeviceRec) -> None:
        type_, site, labels = _indexed(dev)
        self.by_type.get((dev.project_pk, type_), set()).discard(dev.pk)
        at = (dev.project_pk, site)
        had = self.by_site.get(at)
        if had == dev.pk:
            del self.by_site[at]
        elif isinstance(had, set):
            had.discard(dev.pk)
        for key, value in labels.items():
            self.by_label.get((dev.project_pk, key), {}).get(value, set()).discard(dev.pk)

    def _drop_device(self, dev: DeviceRec) -> None:
        for var_pk in self.variables_of(dev.pk):
            var = self.variables_by_pk.get(var_pk)
            if var is not None:
                self._drop_variable(var)
        self._drop_device_rec(dev)

    def _drop_device_rec(self, dev: DeviceRec) -> None:
        self._unindex(dev)
        self.project_devices.get(dev.project_pk, set()).discard(dev.pk)
        self.devices.pop((dev.project_pk, dev.id), None)
        self.devices_by_pk.pop(dev.pk, None)


def _indexed(dev: DeviceRec) -> tuple[str | None, str | None, dict[str, str]]:
    """The (type, site, labels) of a device (its labels from its JSON, or kept without it)."""
    labels = dev.labels()
    return dev.type, dev.site, {_intern(k): _intern(v) for k, v in labels.items()}


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (as it was after it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _ignore(event: ev.MetaEvent) -> None:
    """An event that changes no metadata (``events.WORK_EVENTS``)."""
