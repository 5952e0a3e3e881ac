"""What the DT face keeps beside the core: each device's ``reported`` state (in memory, from
the log; the DT settings of service accounts and the data connectors are stored through the
engine's face-state stores, ``store/face_state.py``).

``reported`` (the latest event of each type per device, by the rows that render as events:
``events.event_type_of``) is kept by a durable consumer of the log (``core/consumers``) whose
position is the log's head at start (``MemoryPositions``: nothing before it is read from the
log; that part is rebuilt by history reads). Its live path judges every committed batch inside
the commit listener (``Consumer.offer`` -> ``live``), so it is current the moment ingest
returns; should it fall behind, its task reads the rest of the log. A device not yet seen since
start is read from the log once (``load_devices``: the row at each event series' latest time,
which the registry keeps in memory), so it is right after a restart too. Both paths merge by
(time, cursor): whichever comes first, the newest row wins.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streamgauge.core.consumers import Consumer, MemoryPositions
from streamgauge.core.registry import DeviceRec, Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.log import HistoryQuery
from streamgauge.faces.dt.events import (
    EVENT_ROWS,
    EVENT_TYPES,
    SPECS,
    TEMPERATURE_EVENT,
    event_type_of,
    format_ts,
    render,
)

if TYPE_CHECKING:
    from streamgauge.core.engine import Engine

Latest = dict[str, tuple[int, int, object]]  # event type -> (time, cursor, value)
_NEVER = int(np.iinfo(np.int64).min)
REPORTED_TYPES = tuple(t for t in EVENT_TYPES if t != "labelsChanged")
# The event types, by their index in ``Reported``'s lookup table.
_TYPES: tuple[str, ...] = tuple(dict.fromkeys((*EVENT_TYPES, *EVENT_ROWS.values())))
_TYPE_INDEX = {t: k for k, t in enumerate(_TYPES)}


class Reported(Consumer):
    """DT reported state: a consumer of the log starting at its head, judging live batches in
    the commit listener."""

    NAME = "dt-reported"
    synchronous = True  # merged inside the commit listener: current when ingest returns

    def __init__(self, engine: Engine) -> None:
        super().__init__(self.NAME, engine, MemoryPositions())
        self._engine = engine
        self._reg: Registry = engine.registry
        self._latest: dict[int, Latest] = {}  # device pk -> latest event rows
        self._loaded: set[int] = set()  # devices whose state was also read from the log
        # Devices whose state is kept: those a read asked about (``load_devices``), from the
        # moment their load starts. The others' rows are not merged: their state is read from
        # the log when first asked for (a network no DT client reads costs nothing here).
        self._watched: set[int] = set()
        self._watched_pks: npt.NDArray[np.int64] | None = None  # made again after a change
        self._codes_for = -1
        # By interned variable name: the index in ``_TYPES`` of the event type its rows are,
        # -1 for the names of no event type (a lookup table).
        self._codes: npt.NDArray[np.int64] = np.zeros(0, np.int64)

    def _event_codes(self) -> npt.NDArray[np.int64]:
        """The event type (index in ``_TYPES``) of each interned variable name, -1 if none."""
        names = self._reg.names
        if self._codes_for != len(names):
            table = np.full(len(names) + 1, -1, np.int64)
            for name, code in names.items():
                event_type = EVENT_ROWS.get(name, name if name in SPECS else None)
                if event_type is not None:
                    table[code] = _TYPE_INDEX[event_type]
            self._codes, self._codes_for = table, len(names)
        return self._codes

    def live(self, batch: Batch) -> bool:
        self.on_batch(batch)
        return True

    async def handle(self, batch: Batch) -> None:
        self.on_batch(batch)

    def on_batch(self, batch: Batch) -> None:
        """Keep the latest event row of each type per device: what ``_merge`` of every row
        of the batch in turn gives (``event_type_of`` of each row's series), by columns. Only
        the newest (time, cursor) row of each (device, event type) of the batch is merged (a
        Python step per row of an event series, and a series record built for it, were a
        tenth of the event loop's ingest time)."""
        if not len(batch) or not self._watched:
            return
        reg = self._reg
        series = batch.series
        # Series gone (or past the columns read here) are skipped, as a missing record was.
        live = series < min(reg.series_end, len(reg.s_name), len(reg.s_project))
        live[live] = reg.s_project[series[live]] >= 0
        names = np.full(len(batch), -1, np.int64)
        names[live] = reg.s_name[series[live]]
        table = self._event_codes()
        inside = (names >= 0) & (names < len(table))
        types = np.full(len(batch), -1, np.int64)
        types[inside] = table[names[inside]]
        rows = np.flatnonzero(types >= 0)
        if not len(rows):
            return
        devices = reg.s_device[series[rows]].astype(np.int64)
        if self._watched_pks is None:  # (not per watch: a DT list loads 10,000 devices)
            self._watched_pks = np.fromiter(self._watched, np.int64, len(self._watched))
        watched = np.isin(devices, self._watched_pks)
        if not watched.all():
            rows, devices = rows[watched], devices[watched]
            if not len(rows):
                return
        types = types[rows]
        temperature = types == _TYPE_INDEX["temperature"]
        if temperature.any():
            # A device's "temperature" rows are samples, not events, once it has temperature
            # event rows (``event_type_of``); a "temperature.event" row stays an event.
            plain = temperature & (names[rows] != self._reg.names.get(TEMPERATURE_EVENT, -2))
            variables = reg.variables
            samples = {
                d for d in set(devices[plain].tolist()) if (d, TEMPERATURE_EVENT) in variables
            }
            if samples:
                drop = plain & np.isin(devices, np.fromiter(samples, np.int64, len(samples)))
                rows, types, devices = rows[~drop], types[~drop], devices[~drop]
                if not len(rows):
                    return
        times, cursors = batch.times[rows], batch.cursors[rows]
        # The newest (time, cursor) row of each (device, type): the last of its run.
        order = np.lexsort((cursors, times, types, devices))
        d_sorted, t_sorted = devices[order], types[order]
        last = np.r_[(d_sorted[1:] != d_sorted[:-1]) | (t_sorted[1:] != t_sorted[:-1]), True]
        pick = order[last]
        values = batch.values
        held = self._latest
        # ``_merge`` of each, inline (a call per (device, type) was half of this listener).
        for d, k, t, c, i in zip(
            devices[pick].tolist(),
            types[pick].tolist(),
            times[pick].tolist(),
            cursors[pick].tolist(),
            rows[pick].tolist(),
            strict=True,
        ):
            latest = held.get(d)
            if latest is None:
                latest = held[d] = {}
            event_type = _TYPES[k]
            have = latest.get(event_type)
            if have is None or (t, c) > (have[0], have[1]):
                latest[event_type] = (t, c, values[i])

    def _merge(self, device_pk: int, event_type: str, row: tuple[int, int, object]) -> None:
        latest = self._latest.setdefault(device_pk, {})
        have = latest.get(event_type)
        if have is None or (row[0], row[1]) > (have[0], have[1]):
            latest[event_type] = row

    async def load_devices(self, devices: list[DeviceRec]) -> None:
        """Read from the log the latest rows of devices not seen since start."""
        todo = [d for d in devices if d.pk not in self._loaded]
        if todo:
            await asyncio.gather(*(self._load(d) for d in todo))

    async def _load(self, dev: DeviceRec) -> None:
        reg = self._reg
        self.watch(dev.pk)  # before the read: a row committed meanwhile is merged live
        want: dict[int, str] = {}
        for var_pk in reg.device_variables.get(dev.pk, ()):
            var = reg.variables_by_pk.get(var_pk)
            spk = reg.series.get((var_pk, var.set)) if var is not None else None
            rec = reg.series_by_pk.get(spk) if spk is not None else None  # the default set
            event_type = event_type_of(reg, rec) if rec is not None else None
            if spk is None or event_type not in REPORTED_TYPES:
                continue
            if spk < len(reg.latest) and int(reg.latest[spk]) != _NEVER:
                want[spk] = event_type
        if want:
            times = tuple(sorted({int(reg.latest[s]) for s in want}))
            batch = await self._engine.history(
                HistoryQuery(dev.project_pk, series=tuple(want), times=times, limit=100_000)
            )
            for s, t, c, v in zip(
                batch.series.tolist(),
                batch.times.tolist(),
                batch.cursors.tolist(),
                batch.values,
                strict=True,
            ):
                if s in want:
                    self._merge(dev.pk, want[s], (t, c, v))
        self._loaded.add(dev.pk)

    def watch(self, device_pk: int) -> None:
        """Merge the device's live rows from now on (``_load`` calls it before its read)."""
        if device_pk not in self._watched:
            self._watched.add(device_pk)
            self._watched_pks = None

    def reported(self, dev: DeviceRec) -> dict[str, Any]:
        """The device's ``reported`` object: each event type's latest payload."""
        out: dict[str, Any] = {}
        for event_type, (t, _, v) in sorted(self._latest.get(dev.pk, {}).items()):
            if event_type not in REPORTED_TYPES:
                continue
            data = render(event_type, v, format_ts(t))
            if data is not None:
                out[event_type] = data[event_type]
        return out

    def latest(self, device_pk: int) -> Latest:
        """The latest (time, cursor, value) of each event type of a device (after ``load``)."""
        return dict(self._latest.get(device_pk, {}))

    def forget(self, device_pk: int) -> None:
        self._latest.pop(device_pk, None)
        self._loaded.discard(device_pk)
        if device_pk in self._watched:
            self._watched.discard(device_pk)
            self._watched_pks = None
