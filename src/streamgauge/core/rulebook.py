"""Alert rule evaluation over batches, as a pure core: the channels' compiled triggers, a
committed batch (or a clock tick) and the trigger states in; the states that changed and the
alert records fired out. No I/O, no clock of its own (``now`` is an argument: the time the batch
was received, or the tick's time), no store: the runtime (``core/alerting.py``) keeps the states
and writes what comes out.

``core/alerts.py`` is the rule engine of one trigger (thresholds, expressions, deadman clocks,
the OK/PENDING/FIRING/RESOLVED table); this module runs it over every trigger of every active
channel of a batch's project, each reading the rows of its own device and variables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from streamgauge.core import alerts as rules
from streamgauge.core.batch import per_series_affine
from streamgauge.core.channels import ChannelDoc
from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.wire.rows import format_time

StateKey = tuple[int, int]  # (channel pk, trigger index)


@dataclass
class Trigger:
    index: int
    rule: rules.Rule
    device_pk: int
    variable_pks: frozenset[int]
    slots: list[int]  # action slot of each of the trigger's actions
    any_variable: bool = False  # a deadman on the whole instrument: every variable it has now
    # or gets later counts as data


@dataclass
class Channel:
    pk: int
    project_pk: int
    doc: ChannelDoc
    triggers: list[Trigger] = field(default_factory=list)

    @property
    def project_id(self) -> str:
        return self.doc.project

    @property
    def active(self) -> bool:
        return self.doc.status == "ACTIVE"


@dataclass
class BatchSeries:
    """Which device and variable each row of a batch belongs to, looked up once per batch from
    the series records themselves (never from a list cached by registry version: a variable's
    first observation creates its series without bumping the version, and a trigger must see
    it whatever the order of metadata, data and load)."""

    inverse: npt.NDArray[np.intp]  # row -> index into the unique series of the batch
    device: npt.NDArray[np.int64]  # per unique series (-1: unknown, e.g. deleted meanwhile)
    variable: npt.NDArray[np.int64]

    @classmethod
    def of(cls, batch: Batch, reg: Registry) -> BatchSeries:
        uniq, inverse = np.unique(batch.series, return_inverse=True)
        recs = [reg.series_by_pk.get(s) for s in uniq.tolist()]
        device = np.array([-1 if r is None else r.device_pk for r in recs], np.int64)
        variable = np.array([-1 if r is None else r.variable_pk for r in recs], np.int64)
        return cls(inverse.reshape(-1), device, variable)

    def rows(self, t: Trigger) -> npt.NDArray[np.intp]:
        """The rows of the batch the trigger reads."""
        if t.any_variable:
            match = self.device == t.device_pk
        else:
            match = np.isin(self.variable, np.fromiter(t.variable_pks, np.int64))
        if not match.any():
            return np.empty(0, np.intp)
        return np.flatnonzero(match[self.inverse])


@dataclass
class Verdict:
    """What one judgement produced: the trigger states that changed, the alert records fired
    (with their channel), and how many firings cooldowns suppressed."""

    states: dict[StateKey, rules.TriggerState] = field(default_factory=dict)
    alerts: list[tuple[Channel, dict[str, Any]]] = field(default_factory=list)
    suppressed: int = 0

    def set(
        self, key: StateKey, old: rules.TriggerState, new: rules.TriggerState
    ) -> rules.TriggerState:
        if new != old:
            self.states[key] = new
        return new


def judge(
    channels: Iterable[Channel],
    states: Mapping[StateKey, rules.TriggerState],
    batch: Batch,
    reg: Registry,
    now: int,
) -> Verdict:
    """Run every active channel of the batch's project over it, ``now`` being the rules'
    clock (the time the batch was received)."""
    out = Verdict()
    active = [c for c in channels if c.project_pk == batch.project_pk and c.active]
    if not active or not len(batch):
        return out
    own = None
    where = BatchSeries.of(batch, reg)
    for ch in active:
        for t in ch.triggers:
            rows = where.rows(t)
            if not len(rows):
                continue
            key = (ch.pk, t.index)
            st = states.get(key, rules.TriggerState())
            cond = t.rule.condition
            if isinstance(cond, rules.Deadman):
                out.set(key, st, rules.seen(st, now))
                continue
            if own is None:
                own = own_units(batch, reg)
            numeric = own[rows]
            raw = [batch.values[i] for i in rows.tolist()]
            raw = [
                float(n) if type(v) is float else v
                for v, n in zip(raw, numeric.tolist(), strict=True)
            ]
            times = batch.times[rows]
            if isinstance(cond, rules.Threshold):
                ran = rules.run_threshold(t.rule, st, numeric, raw, times, now)
            else:
                names = [reg.series_by_pk[s].variable_id for s in batch.series[rows].tolist()]
                ran = rules.run_expression(t.rule, st, names, numeric, raw, times, now)
            out.set(key, st, ran.state)
            out.suppressed += ran.suppressed
            for f in ran.firings:
                s = int(batch.series[rows[f.index]])
                var_id = f.sensor or reg.series_by_pk[s].variable_id
                cursor = int(batch.cursors[rows[f.index]])
                out.alerts.append((ch, alert_record(reg, ch, t, var_id, f, cursor, now)))
    return out


def tick(
    channels: Iterable[Channel],
    states: Mapping[StateKey, rules.TriggerState],
    reg: Registry,
    now: int,
) -> Verdict:
    """Deadman triggers of the active channels on the clock."""
    out = Verdict()
    for ch in channels:
        if not ch.active:
            continue
        for t in ch.triggers:
            if not isinstance(t.rule.condition, rules.Deadman):
                continue
            key = (ch.pk, t.index)
            st = states.get(key, rules.TriggerState())
            ran = rules.tick_deadman(t.rule, st, now)
            out.set(key, st, ran.state)
            out.suppressed += ran.suppressed
            for f in ran.firings:
                var = ch.doc.triggers[t.index].variable
                out.alerts.append((ch, alert_record(reg, ch, t, var, f, None, now)))
    return out


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def alert_record(
    reg: Registry,
    ch: Channel,
    t: Trigger,
    var_id: str | None,
    f: rules.Firing,
    cursor: int | None,
    now: int,
) -> dict[str, Any]:
    """The alert log's record of one firing (what every action's payload is built from)."""
    dev = reg.devices_by_pk.get(t.device_pk)
    tdoc = ch.doc.triggers[t.index]
    return {
        "channel_id": ch.doc.id,
        "channel_name": ch.doc.name,
        "project_id": ch.doc.project,
        "site_id": dev.site if dev else None,
        "inst_id": tdoc.device,
        "var_id": var_id,
        "value": f.value,
        "time": format_time(f.time_ms),
        "time_ms": f.time_ms,
        "trigger": t.index,
        "type": tdoc.type,
        "condition": describe(tdoc),
        "state": "FIRING",
        "cursor": cursor,
        "created_at": iso(now),
        "_check_name": ch.doc.id,
        "_time": format_time(f.time_ms),
        "_level": "crit",
    }


def describe(t: Any) -> dict[str, Any]:
    if t.type == "threshold":
        return {"key": f"{t.device}.{t.variable}", "operator": t.operator, "val": t.value}
    if t.type == "expression":
        return {"expression": t.expression}
    return {"key": f"{t.device}.{t.variable or '*'}", "seconds": t.seconds}


def own_units(batch: Batch, reg: Registry) -> npt.NDArray[np.float64]:
    """The batch's numeric values in each variable's own unit (the unit its thresholds use)."""
    values = batch.numeric()
    scale, offset = per_series_affine(batch, reg, lambda e: (e[1], e[2]))
    out: npt.NDArray[np.float64] = np.round((values - offset) / scale, 9)
    return out
