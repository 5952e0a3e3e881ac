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
    EVENT_TYPES,
    event_type_of,
    event_variables,
    format_ts,
    render,
)

if TYPE_CHECKING:
    from streamgauge.core.engine import Engine

Latest = dict[str, tuple[int, int, object]]  # event type -> (time, cursor, value)
_NEVER = int(np.iinfo(np.int64).min)
REPORTED_TYPES = tuple(t for t in EVENT_TYPES if t != "labelsChanged")


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
        self._codes_for = -1
        self._codes: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)

    def _event_codes(self) -> npt.NDArray[np.bool_]:
        """Which interned variable names are DT event types (a lookup table)."""
        names = self._reg.names
        if self._codes_for != len(names):
            table = np.zeros(len(names) + 1, np.bool_)
            for t in event_variables(EVENT_TYPES):
                if t in names:
                    table[names[t]] = True
            self._codes, self._codes_for = table, len(names)
        return self._codes

    def live(self, batch: Batch) -> bool:
        self.on_batch(batch)
        return True

    async def handle(self, batch: Batch) -> None:
        self.on_batch(batch)

    def on_batch(self, batch: Batch) -> None:
        """Keep the latest event row of each type per device."""
        if not len(batch):
            return
        reg = self._reg
        names = reg.s_name[batch.series]
        table = self._event_codes()
        inside = (names >= 0) & (names < len(table))
        mask = np.zeros(len(batch), np.bool_)
        mask[inside] = table[names[inside]]
        if not mask.any():
            return
        for i in np.flatnonzero(mask).tolist():
            rec = reg.series_by_pk.get(int(batch.series[i]))
            event_type = event_type_of(reg, rec) if rec is not None else None
            if rec is None or event_type is None:
                continue
            self._merge(
                rec.device_pk,
                event_type,
                (int(batch.times[i]), int(batch.cursors[i]), batch.values[i]),
            )

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
