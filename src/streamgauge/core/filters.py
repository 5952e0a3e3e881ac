"""Stream selection compiled to lookup tables.

A ``Selection`` (devices, device types, variables, labels, a domain of sites; each a list where
any entry matches, all kinds must match; plus QC flags to leave out and a filter expression) is
resolved against the registry once per registry version into a bitset over device pks and a
table over variable-name codes. The mask of a batch is then a few numpy gathers over the rows'
project, device and name (looked up once per batch for every subscriber): the same code filters
live batches and catch-up reads, and lists the series of a history read, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamgauge.core.domain import Domain
from streamgauge.core.filterlang import Expr, ReportTable, map_values
from streamgauge.core.registry import Registry
from streamgauge.core.units import UnitSystem, convert_value, target_unit
from streamgauge.domain import catalog
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import BadRequest


@dataclass(frozen=True, slots=True)
class LabelMatch:
    key: str
    value: str | None  # None: the key with any value

    @classmethod
    def parse(cls, text: str) -> LabelMatch:
        key, sep, value = text.partition("=")
        if not key:
            raise BadRequest(
                f"bad label filter {text!r}",
                [{"field": "label", "reason": "expected key or key=value"}],
            )
        return cls(key, value if sep else None)

    def matches(self, labels: dict[str, str]) -> bool:
        if self.key not in labels:
            return False
        return self.value is None or labels[self.key] == self.value


@dataclass(frozen=True, slots=True)
class Selection:
    project_pk: int
    devices: frozenset[str] = frozenset()
    device_types: frozenset[str] = frozenset()
    variables: frozenset[str] = frozenset()
    labels: tuple[LabelMatch, ...] = ()
    domain: Domain = Domain()
    qc_remove: int = 0  # rows with any of these QC flag bits are left out
    expr: Expr | None = None  # filter_on, comparison values in canonical units

    def tables(self, reg: Registry) -> Tables:
        """Lookup tables over device pks and variable-name codes, for one registry version."""
        devices: npt.NDArray[np.uint8] | None = None
        kinds: list[set[int]] = []
        if self.devices:
            kinds.append(
                {d.pk for i in self.devices if (d := reg.devices.get((self.project_pk, i)))}
            )
        if self.device_types:
            kinds.append(
                set().union(*(reg.devices_of_type(self.project_pk, t) for t in self.device_types))
            )
        if self.labels:
            kinds.append(
                set().union(
                    *(reg.devices_with_label(self.project_pk, m.key, m.value) for m in self.labels)
                )
            )
        if self.domain:
            kinds.append(self.domain.devices(reg, self.project_pk))
        if kinds:
            wanted = set.intersection(*kinds)
            # bits at pk + 8, in whole bytes, with a zero byte at each end (see _gather_bits)
            size = (max(reg.devices_by_pk, default=0) + 8) // 8 * 8 + 16
            table = np.zeros(size, np.bool_)
            table[np.fromiter(wanted, np.int64, len(wanted)) + 8] = True
            devices = _shared_bits(np.packbits(table, bitorder="little"))  # 1/8 the memory
        names: npt.NDArray[np.bool_] | None = None
        if self.variables:
            names = np.zeros(len(reg.names) + 1, np.bool_)
            names[[reg.names[v] for v in self.variables if v in reg.names]] = True
        return Tables(devices, names)

    def compile(self, reg: Registry, tables: Tables, lo: int, hi: int) -> npt.NDArray[np.bool_]:
        """Which series pks in ``[lo, hi)`` this selection wants: gathers, no Python loop."""
        allowed: npt.NDArray[np.bool_] = reg.s_project[lo:hi] == self.project_pk
        if tables.devices is not None:
            allowed &= _gather_bits(tables.devices, reg.s_device[lo:hi])
        if tables.names is not None:
            allowed &= _gather(tables.names, reg.s_name[lo:hi])
        return allowed


# Device bitsets by content: the selections that want the same devices (the same state, say,
# with different variables or expressions) share one (4 KB for 30,000 devices) instead of
# keeping a copy each. Entries go with the last selection holding them; shared ones are
# read-only.
_BITSETS: weakref.WeakValueDictionary[bytes, npt.NDArray[np.uint8]] = weakref.WeakValueDictionary()


def _shared_bits(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    key = hashlib.blake2b(bits.tobytes(), digest_size=16).digest()
    found = _BITSETS.get(key)
    if found is not None and np.array_equal(found, bits):
        return found
    bits.flags.writeable = False
    _BITSETS[key] = bits
    return bits


@dataclass(frozen=True, slots=True)
class Tables:
    devices: npt.NDArray[np.uint8] | None  # bits by device pk (little-endian); None: every device
    names: npt.NDArray[np.bool_] | None  # by variable-name code; None: every variable


def _gather(table: npt.NDArray[np.bool_], keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """``table[keys]``, False for keys outside the table: ``clip`` sends them to the first or
    last entry, and both are False by construction (pk 0 is never used, and each table has a
    spare last entry). Rows of dropped series (-1) are excluded by the project test anyway."""
    out: npt.NDArray[np.bool_] = np.take(table, keys, mode="clip")
    return out


def _gather_bits(bits: npt.NDArray[np.uint8], keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Bit ``keys + 8`` of a little-endian bitset: False for keys outside the table, since its
    first and last bytes are zero and ``clip`` sends out-of-range bytes there (-1, a dropped
    series' device, lands in the first)."""
    at = keys + 8
    byte = np.take(bits, at >> 3, mode="clip")
    out: npt.NDArray[np.bool_] = ((byte >> (at & 7).astype(np.uint8)) & 1).astype(np.bool_)
    return out


class CompiledSelection:
    """A selection compiled to its device and variable-name tables (a bitset over device pks, 4
    KB for 30,000 devices, and a table over name codes), rebuilt when metadata changes (registry
    version). Series created by ingest need nothing: a row is judged by its series' project,
    device and name, looked up once per batch for every subscriber."""

    def __init__(self, selection: Selection, reg: Registry) -> None:
        self.selection = selection
        self._reg = reg
        self._version = -1
        self._tables = Tables(None, None)

    def compile(self) -> None:
        """Compile the tables now (they are otherwise compiled on first use), and build the
        registry's site table a filter expression's station reports need."""
        self._refresh()
        if self.selection.expr is not None:
            _device_sites(self._reg)

    def _refresh(self) -> Tables:
        reg = self._reg
        if self._version != reg.version:
            self._version = reg.version
            self._tables = self.selection.tables(reg)
        return self._tables

    def allowed(self) -> npt.NDArray[np.bool_]:
        """The table over series pks as booleans, current with the registry (for history reads,
        which list the selected series)."""
        return self.selection.compile(self._reg, self._refresh(), 0, self._reg.series_end)

    def mask(self, batch: Batch) -> npt.NDArray[np.bool_]:
        tables = self._refresh()
        sel = self.selection
        cols = _row_columns(batch, self._reg)
        mask: npt.NDArray[np.bool_]
        if tables.devices is not None:  # the project's devices only: no project test needed
            byte = tables.devices[cols.clipped("device_byte", len(tables.devices))]
            mask = ((byte >> cols.device_shift) & 1).view(np.bool_)
        else:
            mask = _in_project(batch, cols, sel.project_pk).copy()
        if tables.names is not None:
            mask &= tables.names[cols.clipped("name", len(tables.names))]
        if sel.qc_remove:
            mask &= qc_pass(batch, sel.qc_remove)
        if sel.expr is not None and mask.any():
            table = _shared_table(batch, self._reg, sel.project_pk, sel.qc_remove)
            rows = np.flatnonzero(mask)
            mask[rows] = table.satisfied(sel.expr, self._reg.names)[table.report[rows]]
        return mask


class SelectionStack:
    """The compiled selections of one project's subscribers stacked into tables, so that a
    fan-out round computes every subscriber's mask of a batch in a few numpy operations over
    a (subscribers x rows) matrix instead of a few per subscriber (a thousand sessions paid
    about 5 us each in numpy calls). Selections that agree on their device bitset (shared by
    content, see ``_shared_bits``), variable-name table and QC flags are computed once; a
    filter expression is applied per subscriber after, as ``CompiledSelection.mask`` does.

    A stack is for one registry version and one list of selections (``current``); the masks
    are the same, row for row, as each selection's ``mask``."""

    __slots__ = (
        "selections",
        "version",
        "_reg",
        "_project_pk",
        "_dev",
        "_names",
        "_combos",
        "_combo_of",
        "_qc",
        "_exprs",
    )

    def __init__(self, selections: Sequence[CompiledSelection], reg: Registry) -> None:
        self.selections = tuple(selections)
        self.version = reg.version
        self._reg = reg
        self._project_pk = selections[0].selection.project_pk if selections else 0
        devs: dict[int, int] = {}  # id of a device bitset -> its row (0: every device)
        dev_rows: list[npt.NDArray[np.uint8]] = []
        names: dict[bytes, int] = {}  # a name table's content -> its row (0: every name)
        name_rows: list[npt.NDArray[np.bool_]] = []
        combos: dict[tuple[int, int, int], int] = {}
        combo_of = np.empty(len(self.selections), np.int64)
        exprs: dict[tuple[int, int], tuple[list[int], dict[Expr, int], list[int]]] = {}
        for i, compiled in enumerate(self.selections):
            tables = compiled._refresh()
            d = 0
            if tables.devices is not None:
                found = devs.get(id(tables.devices))
                if found is None:
                    found = devs[id(tables.devices)] = len(dev_rows) + 1
                    dev_rows.append(tables.devices)
                d = found
            n = 0
            if tables.names is not None:
                content = tables.names.tobytes()
                found = names.get(content)
                if found is None:
                    found = names[content] = len(name_rows) + 1
                    name_rows.append(tables.names)
                n = found
            key = (d, n, compiled.selection.qc_remove)
            c = combos.get(key)
            if c is None:
                c = combos[key] = len(combos)
            combo_of[i] = c
            sel = compiled.selection
            if sel.expr is not None:
                members, distinct, which = exprs.setdefault(
                    (sel.project_pk, sel.qc_remove), ([], {}, [])
                )
                members.append(i)
                which.append(distinct.setdefault(sel.expr, len(distinct)))
        self._combo_of = combo_of
        # The selections with a filter expression, by the report table they read (project,
        # QC removal): their rows in the stack, their distinct expressions, and which one each
        # has. A round judges each distinct expression once and masks them all at once.
        self._exprs = [
            (project_pk, remove, np.array(members, np.int64), list(distinct), np.array(which))
            for (project_pk, remove), (members, distinct, which) in exprs.items()
        ]
        combo_keys = list(combos)
        self._combos = np.array([k[:2] for k in combo_keys], np.int64).reshape(-1, 2)
        qc: dict[int, list[int]] = {}
        for c, (_d, _n, remove) in enumerate(combo_keys):
            if remove:
                qc.setdefault(remove, []).append(c)
        self._qc = [(remove, np.array(rows, np.int64)) for remove, rows in qc.items()]
        # Row 0 of each table lets everything through; the others are padded with zeros to
        # the widest (a key past a table's end is clipped into its zero end, as in ``mask``).
        self._dev: npt.NDArray[np.uint8] | None = None
        if dev_rows:
            width = max(len(b) for b in dev_rows)
            dev = np.zeros((len(dev_rows) + 1, width), np.uint8)
            dev[0] = 0xFF
            for row, bits in enumerate(dev_rows, 1):
                dev[row, : len(bits)] = bits
            self._dev = dev
        self._names: npt.NDArray[np.bool_] | None = None
        if name_rows:
            width = max(len(t) for t in name_rows)
            table = np.zeros((len(name_rows) + 1, width), np.bool_)
            table[0] = True
            for row, t in enumerate(name_rows, 1):
                table[row, : len(t)] = t
            self._names = table

    def current(self, selections: Sequence[CompiledSelection], reg: Registry) -> bool:
        """Whether this stack is for these selections (in this order) and the registry as it
        is now."""
        return (
            reg is self._reg
            and self.version == reg.version
            and len(selections) == len(self.selections)
            and all(a is b for a, b in zip(selections, self.selections, strict=True))
        )

    def masks(self, batch: Batch) -> npt.NDArray[np.bool_]:
        """Row ``i``: the mask of ``batch`` for the ``i``-th selection."""
        reg = self._reg
        cols = _row_columns(batch, reg)
        in_project = _in_project(batch, cols, self._project_pk)
        ncombos = len(self._combos)
        combo: npt.NDArray[np.bool_]
        if self._dev is not None:
            byte = np.take(self._dev, cols.clipped("device_byte", self._dev.shape[1]), axis=1)
            per_dev = ((byte >> cols.device_shift) & 1).view(np.bool_)
            per_dev &= in_project
            combo = per_dev[self._combos[:, 0]]
        else:
            combo = np.repeat(in_project[None, :], ncombos, axis=0)
        if self._names is not None:
            per_name = np.take(self._names, cols.clipped("name", self._names.shape[1]), axis=1)
            combo &= per_name[self._combos[:, 1]]
        for remove, rows in self._qc:
            combo[rows] &= qc_pass(batch, remove)
        masks: npt.NDArray[np.bool_] = combo[self._combo_of]
        for project_pk, remove, members, distinct, which in self._exprs:
            live = masks[members].any(axis=1)  # (a selection with no row left: nothing to judge)
            if not live.any():
                continue
            members, which = members[live], which[live]
            table = _shared_table(batch, reg, project_pk, remove)
            used, position = np.unique(which, return_inverse=True)
            judged = np.stack([table.satisfied(distinct[e], reg.names) for e in used.tolist()])
            masks[members] &= judged[:, table.report][position.reshape(-1)]
        return masks


@dataclass(frozen=True, slots=True)
class RowColumns:
    """Per row of a batch, what every subscriber's mask looks up (computed once per batch)."""

    project: npt.NDArray[np.int64]
    device_byte: npt.NDArray[np.int64]  # (device pk + 8) >> 3, see _gather_bits
    device_shift: npt.NDArray[np.uint8]
    name: npt.NDArray[np.int64]
    _clipped: dict[tuple[str, int], npt.NDArray[np.int64]] = field(default_factory=dict)

    def clipped(self, column: str, size: int) -> npt.NDArray[np.int64]:
        """The column clipped into a table of ``size`` (both ends of every table are False):
        one clip per batch and table size, so each subscriber's lookup is a plain gather."""
        key = (column, size)
        found = self._clipped.get(key)
        if found is None:
            found = self._clipped[key] = np.clip(getattr(self, column), 0, size - 1)
        return found


def _row_columns(batch: Batch, reg: Registry) -> RowColumns:
    cols: RowColumns | None = batch.derived.get("row_columns")
    if cols is None:
        series = batch.series
        at = np.take(reg.s_device, series, mode="clip") + 8
        cols = batch.derived["row_columns"] = RowColumns(
            np.take(reg.s_project, series, mode="clip"),
            at >> 3,
            (at & 7).astype(np.uint8),
            np.take(reg.s_name, series, mode="clip"),
        )
    return cols


def _in_project(batch: Batch, cols: RowColumns, project_pk: int) -> npt.NDArray[np.bool_]:
    key = ("in_project", project_pk)
    found: npt.NDArray[np.bool_] | None = batch.derived.get(key)
    if found is None:
        found = batch.derived[key] = cols.project == project_pk
    return found


def qc_pass(batch: Batch, remove: int) -> npt.NDArray[np.bool_]:
    """Rows without any of the ``remove`` flags (computed once per batch and flag set)."""
    key = ("qc_pass", remove)
    found: npt.NDArray[np.bool_] | None = batch.derived.get(key)
    if found is None:
        found = batch.derived[key] = (batch.qc & remove) == 0
    return found


def canonical_expr(expr: Expr | None, units: UnitSystem) -> Expr | None:
    """``expr`` with each comparison value moved from the subscriber's units to the canonical
    unit of its sensor (catalog variables; others are compared as stored)."""
    if expr is None:
        return None

    def to_canonical(sensor: str, value: float) -> float:
        entry = catalog.lookup(sensor)
        if entry is None:
            return value
        return convert_value(value, target_unit(units, entry.kind, entry.unit), entry.unit)

    return map_values(expr, to_canonical)


def _report_table(batch: Batch, reg: Registry, population: npt.NDArray[np.bool_]) -> ReportTable:
    report, n_reports = _reports(batch, reg)
    values = np.where(population, batch.numeric(), np.nan)
    return ReportTable(report, reg.s_name[batch.series], values, n_reports)


def _shared_table(batch: Batch, reg: Registry, project_pk: int, qc_remove: int) -> ReportTable:
    """The report table over the project's rows that pass ``qc_remove``: built once per batch
    and shared by every subscriber with a filter expression and the same QC removal."""
    key = ("report_table", project_pk, qc_remove)
    cached = batch.derived.get(key)
    if cached is not None and cached[0] == reg.version:
        found: ReportTable = cached[1]
        return found
    population = reg.s_project[batch.series] == project_pk
    if qc_remove:
        population &= qc_pass(batch, qc_remove)
    table = _report_table(batch, reg, population)
    batch.derived[key] = (reg.version, table)
    return table


def _reports(batch: Batch, reg: Registry) -> tuple[npt.NDArray[np.int64], int]:
    """A station-report id per row (same site, same time), computed once per batch for every
    subscriber with a filter expression."""
    cached = batch.derived.get("reports")
    if cached is not None and cached[0] == reg.version:
        return cached[1], cached[2]
    n = len(batch)
    sites = _device_sites(reg)
    dev = reg.s_device[batch.series]
    site = np.where((dev >= 0) & (dev < len(sites)), sites[np.clip(dev, 0, len(sites) - 1)], -1)
    site = np.where(site >= 0, site, -(dev + 2))  # a device without a site is its own station
    commit = batch.derived.get("commit")  # a merged batch: reports never span two commits
    order = np.lexsort((batch.times, site) if commit is None else (batch.times, site, commit))
    s_sorted, t_sorted = site[order], batch.times[order]
    starts = np.ones(n, np.bool_)
    starts[1:] = (s_sorted[1:] != s_sorted[:-1]) | (t_sorted[1:] != t_sorted[:-1])
    if commit is not None:
        c_sorted = commit[order]
        starts[1:] |= c_sorted[1:] != c_sorted[:-1]
    report = np.empty(n, np.int64)
    report[order] = np.cumsum(starts) - 1
    n_reports = int(starts.sum())
    batch.derived["reports"] = (reg.version, report, n_reports)
    return report, n_reports


def _device_sites(reg: Registry) -> npt.NDArray[np.int64]:
    """Site pk of each device pk (-1: no site), kept in the registry until its next change."""
    key = "device_sites"
    table = reg.derived.get(key)
    if isinstance(table, np.ndarray):
        return table
    out = np.full(max(reg.devices_by_pk, default=0) + 1, -1, np.int64)
    for dev in reg.devices_by_pk.values():
        site = reg.sites.get((dev.project_pk, dev.site)) if dev.site else None
        if site is not None:
            out[dev.pk] = site.pk
    reg.derived[key] = out
    return out
