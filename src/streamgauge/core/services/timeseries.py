"""Aggregates, latest values, retention and resume gaps: the time-series service.

``Engine.timeseries`` is the one API faces call for these:

* ``aggregate``: one page of buckets per series (``core/aggregate.py`` decides, the store's
  hour summaries and edge rows answer), ordered by (device, variable, set) and start;
* ``latest``: each selected series' newest row from memory (``core/latest.py``);
* ``run_retention``: one pass removing what is older than each series' ``retention_days``
  (the variable's, else the project's), planned once and run in bounded store steps until the
  store says the pass is done; ``start`` runs it every ``retention_interval_seconds``;
* ``resume_point``: whether a resume cursor is older than what retention kept (``Gone``, 410,
  with ``earliest``), or where ``on_gap=earliest`` continues.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from streamgauge.config import Settings
from streamgauge.core import aggregate
from streamgauge.core.filters import CompiledSelection, Selection
from streamgauge.core.ingest import MAX_TIME, MIN_TIME
from streamgauge.core.latest import LatestRows
from streamgauge.core.registry import ProjectRec, Registry, SeriesRec
from streamgauge.core.units import UnitSystem, converter, target_unit, unit_label
from streamgauge.domain.batch import Batch, concat
from streamgauge.domain.errors import Gone
from streamgauge.domain.timeseries import Summaries
from streamgauge.store.api import TimeSeriesLog

log = logging.getLogger("streamgauge.timeseries")

# The latest rows load this long after the start (a restart's own loads, and its workers',
# go first), or as soon as a read or retention needs them.
LATEST_LOAD_DELAY_S = 2.0
# Series the latest rows are loaded for at a time (``TimeSeriesLog.latest_rows``): the rows of
# a whole network at once, a Python object each on the way, left memory behind that was freed
# but not given back (with the readers' page caches the load filled, 20 MB of a 30,000-station
# writer's).
LATEST_CHUNK = 16_384
DAY_MS = 86_400_000

SeriesKey = tuple[str, str, int]  # (device id, variable id, set): the order of the buckets


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    project_pk: int
    series: Sequence[int]  # the selected series
    qc_remove: int
    start: int | None
    end: int | None
    every: int
    aggs: tuple[str, ...]
    tz: ZoneInfo | str | None  # None: UTC; "site": each station's zone
    units: UnitSystem
    limit: int
    after: tuple[str, str, int, int] | None = None  # (device, variable, set, time) to go on at


@dataclass(frozen=True, slots=True)
class AggregatePage:
    buckets: list[dict[str, Any]]
    units: dict[str, str]
    next: tuple[str, str, int, int] | None


class TimeSeries:
    """Owns the latest-row cache and the retention task; reads through ``TimeSeriesLog``."""

    def __init__(self, store: TimeSeriesLog, registry: Registry, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.latest_rows = LatestRows()
        self._task: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self._begin: asyncio.TimerHandle | None = None  # the load's start, if not asked before
        self.passes = 0  # retention passes run (tests, metrics)
        self._retaining_at = -1  # the registry version ``_retaining_set`` was computed at
        self._retaining_set: set[int] = set()

    async def start(self, retention: bool = True) -> None:
        """Load the latest rows in the background (``LATEST_LOAD_DELAY_S`` after the start, out
        of a restart's way, or at once when something waits for them: the server answers
        meanwhile, and ``latest`` waits for them); run the retention passes too unless
        ``retention`` is False (in the cluster mode they run on the node holding the work
        lease: ``start_retention``)."""
        self._begin = asyncio.get_running_loop().call_later(LATEST_LOAD_DELAY_S, self._load)
        if retention:
            self.start_retention()

    def _load(self) -> asyncio.Task[None]:
        if self._loading is None:
            if self._begin is not None:
                self._begin.cancel()
            self._loading = asyncio.create_task(self._load_latest())
        return self._loading

    async def _load_latest(self) -> None:
        # Batches committed meanwhile are in ``latest_rows`` already: the newest row wins. A
        # series made after the load began has only such rows, and the last range is open.
        end = self.registry.series_end
        self.latest_rows.reserve(end)
        for lo in range(0, end, LATEST_CHUNK):
            hi = lo + LATEST_CHUNK if lo + LATEST_CHUNK < end else None
            self.latest_rows.update(await self.store.latest_rows(lo, hi))

    async def loaded(self) -> None:
        """Once the latest rows are loaded (the load's error, if it failed); starts the load
        if it has not started yet."""
        if self._begin is not None:
            await asyncio.shield(self._load())

    def start_retention(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._retention_loop())

    async def stop(self) -> None:
        if self._begin is not None:
            self._begin.cancel()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def committed(self, batch: Batch) -> None:
        """The engine's commit listener."""
        self.latest_rows.update(batch)

    # -- aggregates -----------------------------------------------------------------------------

    def _zone_of(self, rec: SeriesRec, tz: ZoneInfo | str | None) -> ZoneInfo | None:
        if tz != aggregate.SITE:
            return tz if isinstance(tz, ZoneInfo) else None
        reg = self.registry
        dev = reg.devices_by_pk.get(rec.device_pk)
        if dev is None or not dev.site:
            return None
        site = reg.sites.get((dev.project_pk, dev.site))
        return aggregate.zone_named(site.doc.timezone) if site is not None else None

    def _affine(self, rec: SeriesRec, units: UnitSystem) -> tuple[float, float, str]:
        var = self.registry.variables_by_pk.get(rec.variable_pk)
        if var is None:
            return 1.0, 0.0, ""
        e = var.entry
        target = target_unit(units, e.kind, e.unit)
        scale, offset = converter(e.unit, target)
        return scale, offset, unit_label(target)

    def ordered(self, series: Sequence[int]) -> list[tuple[SeriesKey, int]]:
        """The series with their keys, in key order."""
        recs = self.registry.series_by_pk
        out = [
            ((rec.device_id, rec.variable_id, rec.set), pk)
            for pk in series
            if (rec := recs.get(pk)) is not None
        ]
        out.sort()
        return out

    async def aggregate(self, q: AggregateQuery) -> AggregatePage:
        lo_all = MIN_TIME if q.start is None else q.start
        hi = MAX_TIME + 1 if q.end is None else q.end
        keyed = self.ordered(q.series)
        begin = 0
        if q.after is not None:
            begin = bisect.bisect_left(keyed, (q.after[:3], -1))
        out: list[dict[str, Any]] = []
        units: dict[str, str] = {}
        calendars: dict[ZoneInfo | None, aggregate.Calendar] = {}
        for key, pk in keyed[begin:]:
            rec = self.registry.series_by_pk[pk]
            lo = lo_all
            if q.after is not None and key == q.after[:3]:
                lo = max(lo, q.after[3])
            zone = self._zone_of(rec, q.tz)
            cal = calendars.get(zone)
            if cal is None:
                cal = calendars[zone] = aggregate.Calendar(q.every, zone)
            scale, offset, label = self._affine(rec, q.units)
            head = {"device": rec.device_id, "variable": rec.variable_id, "set": rec.set}
            while lo < hi:
                room = q.limit - len(out)
                if room <= 0:
                    return AggregatePage(out, units, (*key, lo))
                decided: list[aggregate.Plan] = []

                def planner(
                    found: Summaries,
                    cal: aggregate.Calendar = cal,
                    lo: int = lo,
                    room: int = room,
                    pk: int = pk,
                    decided: list[aggregate.Plan] = decided,
                ) -> list[tuple[int, int, int]]:
                    p = aggregate.plan(cal, found, pk, lo, hi, room)
                    decided.append(p)
                    return p.ranges

                found, points = await self.store.aggregate_inputs(
                    q.project_pk, [pk], lo, hi, q.qc_remove, planner
                )
                p = decided[0]
                b = aggregate.combine(cal, found, p.whole, points)
                if len(b) and label:
                    units[rec.variable_id] = label
                for i in range(len(b)):
                    out.append(
                        {
                            **head,
                            "start": cal.label(int(b.start[i])),
                            "end": cal.label(int(b.end[i])),
                            **aggregate.render(b, i, q.aggs, scale, offset),
                        }
                    )
                if not p.more:
                    break
                lo = p.cut
        return AggregatePage(out, units, None)

    # -- latest values --------------------------------------------------------------------------

    async def latest(self, selection: Selection) -> Batch:
        """Each selected series' newest observation that passes the selection's QC removal
        (and filter expression), in (device, variable, set) order, from memory: the store is
        read only for a series whose newest row is removed by QC."""
        await self.loaded()
        compiled = CompiledSelection(selection, self.registry)
        allowed = np.flatnonzero(compiled.allowed())
        keyed = self.ordered(allowed.tolist())
        series = np.array([pk for _, pk in keyed], np.int64)
        batch = self.latest_rows.rows(selection.project_pk, series)
        remove = selection.qc_remove
        if remove and len(batch):
            failing = (batch.qc & remove) != 0
            if failing.any():
                replaced = await self.store.newest_passing(batch.series[failing].tolist(), remove)
                both = concat([batch.take(~failing), replaced])
                rank = {pk: i for i, pk in enumerate(series.tolist())}
                order = np.argsort([rank[pk] for pk in both.series.tolist()], kind="stable")
                batch = _reorder(both, order)
        if len(batch) and selection.expr is not None:
            batch = batch.take(compiled.mask(batch))
        batch.project_pk = selection.project_pk
        return batch

    # -- retention ------------------------------------------------------------------------------

    def _retaining(self) -> set[int]:
        """The pks of projects with a retention on the project or on one of its variables
        (recomputed when the metadata changes: a pass over a project without one costs
        nothing, where walking every series of a big network every pass held the loop)."""
        reg = self.registry
        if self._retaining_at != reg.version:
            pks = {p.pk for p in reg.projects_by_pk.values() if p.doc.retention_days is not None}
            for var in reg.variables_with_extra():
                if var.retention_days is not None:
                    dev = reg.devices_by_pk.get(var.device_pk)
                    if dev is not None:
                        pks.add(dev.project_pk)
            self._retaining_set, self._retaining_at = pks, reg.version
        return self._retaining_set

    def cutoffs(self, project: ProjectRec, now_ms: int) -> list[tuple[int, int]]:
        """(series, cutoff ms) of the project's series that have a retention."""
        if project.pk not in self._retaining():
            return []
        reg = self.registry
        days = project.doc.retention_days
        out: list[tuple[int, int]] = []
        pks = reg.project_series(project.pk)
        for pk, var_pk in zip(pks.tolist(), reg.s_variable[pks].tolist(), strict=True):
            var = reg.variables_by_pk.get(var_pk)
            keep = var.retention_days if var is not None else None
            keep = days if keep is None else keep
            if keep is not None:
                out.append((pk, now_ms - int(keep * DAY_MS)))
        return out

    async def run_retention(self, now_ms: int | None = None) -> int:
        """One retention pass over every project; returns the rows removed."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        await self.loaded()  # its rows first: the pass then forgets the expired ones
        started = time.perf_counter()
        removed = 0
        settled = False
        for project in list(self.registry.projects_by_pk.values()):
            cutoffs = self.cutoffs(project, now)
            if not cutoffs:
                continue
            expired = await self.store.expired(cutoffs)
            if not expired:
                continue
            keep = project.doc.rollup is not None
            if keep and not settled:  # the rollup must count every row this pass removes
                await self.store.settle_summaries()
                settled = True
            while True:
                n, done = await self.store.expire(
                    project.pk,
                    expired,
                    keep_summaries=keep,
                    max_rows=self.settings.retention_step_rows,
                )
                removed += n
                if done:
                    break
            self.latest_rows.forget_before(expired)
        self.passes += 1
        if removed:
            log.info(
                "retention pass: %d rows removed in %.1f s", removed, time.perf_counter() - started
            )
        return removed

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_interval_seconds)
            try:
                await self.run_retention()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged; the next pass retries
                log.exception("a retention pass failed; the next one retries")

    # -- resume gaps ----------------------------------------------------------------------------

    def earliest(self, project_pk: int) -> int | None:
        """The cursor of the earliest observation kept after retention removed some (None:
        retention never removed any of the project's)."""
        gone = self.store.gone.get(project_pk)
        return None if gone is None else gone + 1

    async def resume_point(
        self, project_pk: int, since: int, on_gap: str | None
    ) -> tuple[int, int | None]:
        """Where a resume after ``since`` starts: ``(since, None)`` when nothing after it was
        removed; ``(earliest - 1, earliest)`` with ``on_gap="earliest"``; else ``Gone``. What
        retention removed is read from the store first (in a cluster another node removes)."""
        await self.store.refresh_gone()
        earliest = self.earliest(project_pk)
        if earliest is None or since >= earliest - 1:
            return since, None
        if on_gap == "earliest":
            return earliest - 1, earliest
        raise Gone(
            f"observations after cursor {since} were removed by retention; the earliest kept "
            f"is cursor {earliest}: resume after {earliest - 1}, or pass on_gap=earliest",
            earliest,
            [{"field": "since", "reason": f"older than the earliest kept cursor {earliest}"}],
        )


def _reorder(batch: Batch, order: np.ndarray[Any, Any]) -> Batch:
    return Batch(
        batch.project_pk,
        batch.cursors[order],
        batch.series[order],
        batch.times[order],
        [batch.values[i] for i in order.tolist()],
        batch.qc[order],
    )
