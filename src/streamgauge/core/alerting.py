"""The alert runtime: channels held by the engine, rules run on every committed batch (an
``Engine.listeners`` hook) and on a clock tick (deadman), firings written to the alert log, and
each action of each alert handed on:

* ``WEBHOOK``/``HTTP``/``SLACK``/``DISCORD``: one durable delivery (``engine.deliveries``) per
  (channel, action slot), reading that slot's rows of ``alert_actions`` after its cursor (the
  alert id); each attempt's outcome is written back to the row.
* ``ACTOR``: run locally by one worker over the ``ACTOR`` rows not yet done, in alert order; a
  row is marked done after success or after ``ACTOR_ATTEMPTS`` failures, so a restart runs what
  was left.

The payload of every action is built when the alert is logged (same transaction), so edits to a
channel never change what an alert already fired sends, and nothing is lost across a restart.
Rule state (OK/PENDING/FIRING/RESOLVED per trigger) is kept in memory; after a restart every
trigger starts OK and a deadman's clock starts at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core import alerts as rules
from streamgauge.core.actors import ActorFailed, Actors
from streamgauge.core.batch import Batch, format_time
from streamgauge.core.channels import ChannelDoc, compile_trigger, payload
from streamgauge.core.deliveries import Item, Outcome, check_target
from streamgauge.errors import Conflict, Invalid
from streamgauge.store import alerts as table
from streamgauge.store.registry import ProjectRec, Registry
from streamgauge.store.sqlite import Tx

if TYPE_CHECKING:
    from streamgauge.core.engine import Engine

log = logging.getLogger("streamgauge.alerts")
ACTOR_ATTEMPTS = 3
ACTOR_RETRY_SECONDS = (1.0, 5.0)
FETCH = 100


@dataclass
class Trigger:
    index: int
    rule: rules.Rule
    device_pk: int
    variable_pks: frozenset[int]
    slots: list[int]  # action slot of each of the trigger's actions
    _series: npt.NDArray[np.int64] | None = None
    _version: int = -1

    def series(self, reg: Registry) -> npt.NDArray[np.int64]:
        if self._series is None or self._version != reg.version:
            self._series = np.array(
                sorted(pk for (v, _), pk in reg.series.items() if v in self.variable_pks),
                np.int64,
            )
            self._version = reg.version
        return self._series


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class SlotSource:
    """The alert log as a delivery ``Source``: one action slot of one channel."""

    def __init__(self, alerting: Alerting, channel_pk: int, slot: int) -> None:
        self._a = alerting
        self._channel = channel_pk
        self._slot = slot

    async def fetch(self, after: int, limit: int) -> Sequence[Item]:
        rows = await self._a.store.read(
            lambda c: table.slot_items(c, self._channel, self._slot, after, limit)
        )
        headers = {"Content-Type": "application/json"}
        return [Item(a, url, body, headers, created) for a, url, body, created in rows]


class Alerting:
    """``engine.alerting``: every channel of the deployment and its runtime."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        s = engine.settings
        self.actors = Actors(engine, s.actors, s.actor_timeout_seconds)
        self.channels: dict[str, Channel] = {}
        self.states: dict[tuple[int, int], rules.TriggerState] = {}
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._flush = asyncio.Event()
        self._actor_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.suppressed = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        loaded = await self.store.read(table.load_channels)
        reg = self.engine.registry
        for pk, project_pk, doc in loaded:
            project = reg.projects_by_pk.get(project_pk)
            if project is None:
                continue
            try:
                ch = self._compile(project, doc, pk)
            except Invalid as exc:  # an instrument was deleted since: keep it, inactive
                log.warning("channel %s no longer compiles: %s", doc.id, exc.message)
                ch = Channel(pk, project_pk, doc.model_copy(update={"status": "INACTIVE"}))
            self.channels[doc.id] = ch
            await self._register(ch)
        self.engine.listeners.append(self.on_batch)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._writer(), name="alert log"),
            loop.create_task(self._ticker(), name="deadman"),
            loop.create_task(self._actor_worker(), name="actors"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._pending:
            await self._write_pending()

    # -- channels -----------------------------------------------------------------------------

    def get(self, channel_id: str) -> Channel | None:
        return self.channels.get(channel_id)

    def of_project(self, project_pk: int) -> list[Channel]:
        return [c for c in self.channels.values() if c.project_pk == project_pk]

    def _compile(self, project: ProjectRec, doc: ChannelDoc, pk: int = 0) -> Channel:
        reg = self.engine.registry
        names = self.actors.names()
        triggers: list[Trigger] = []
        slot = 0
        for i, t in enumerate(doc.triggers):
            rule, dev, pks = compile_trigger(reg, project, t, i, names)
            for j, a in enumerate(t.actions):
                url = a.http_url if a.method == "HTTP" else a.webhook_url
                if url is not None:
                    try:
                        check_target(
                            url, allow_private=self.engine.deliveries.allow_private_targets
                        )
                    except Invalid as exc:
                        raise Invalid(
                            exc.message,
                            [{"index": i, "field": f"triggers.actions.{j}", "reason": exc.message}],
                        ) from exc
            triggers.append(Trigger(i, rule, dev.pk, pks, list(range(slot, slot + len(t.actions)))))
            slot += len(t.actions)
        if not triggers:
            raise Invalid("a channel needs at least one trigger", [{"field": "triggers"}])
        return Channel(pk, project.pk, doc, triggers)

    async def create(self, project: ProjectRec, doc: ChannelDoc) -> Channel:
        if doc.id in self.channels:
            raise Conflict(f"channel {doc.id!r} exists", [{"field": "channel_id"}])
        ch = self._compile(project, doc)
        ch.pk = await self.store.write(lambda tx: table.insert_channel(tx, project.pk, doc))
        self.channels[doc.id] = ch
        await self._register(ch)
        return ch

    async def update(self, ch: Channel, doc: ChannelDoc) -> Channel:
        """Replace the channel's document; the new rules apply to the next batch, every trigger
        starting OK."""
        project = self.engine.registry.projects_by_pk[ch.project_pk]
        new = self._compile(project, doc, ch.pk)
        await self.store.write(lambda tx: table.update_channel(tx, ch.pk, doc))
        self.channels[doc.id] = new
        for key in [k for k in self.states if k[0] == ch.pk]:
            del self.states[key]
        await self._register(new)
        return new

    async def delete(self, ch: Channel) -> None:
        await self.store.write(lambda tx: table.delete_channel(tx, ch.pk))
        self.channels.pop(ch.doc.id, None)
        for state_key in [k for k in self.states if k[0] == ch.pk]:
            del self.states[state_key]
        self._unregister(ch)

    def _unregister(self, ch: Channel) -> None:
        for key in self.engine.deliveries.keys():
            if key.startswith(f"alert:{ch.pk}:"):
                self.engine.deliveries.remove(key, forget=True)

    def forget_project(self, project_pk: int) -> None:
        """The project is gone (its channels and alerts went with it in the database)."""
        for ch in self.of_project(project_pk):
            self.channels.pop(ch.doc.id, None)
            self._unregister(ch)

    async def alerts(self, ch: Channel, skip: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        return await self.store.read(lambda c: table.list_alerts(c, ch.pk, skip, limit))

    def state_of(self, ch: Channel) -> list[str]:
        return [
            self.states.get((ch.pk, t.index), rules.TriggerState()).state.value for t in ch.triggers
        ]

    async def _register(self, ch: Channel) -> None:
        """One delivery per action slot (current ones, and old ones that still hold rows)."""
        stored = await self.store.read(lambda c: table.slots(c, ch.pk))
        current = {s for t in ch.triggers for s in t.slots}
        for slot in sorted(current | set(stored)):
            self.engine.deliveries.add(
                f"alert:{ch.pk}:{slot}",
                SlotSource(self, ch.pk, slot),
                start_after=0,
                on_outcome=self._outcome_hook(slot),
            )

    def _outcome_hook(self, slot: int) -> Any:
        async def record(item: Item, o: Outcome) -> None:
            outcome = {
                "attempt": o.attempt,
                "status": o.status,
                "error": o.error,
                "latency_ms": round(o.latency_ms, 3),
                "delivered": o.delivered,
                "dead_lettered": o.dead_lettered,
                "at": _iso(_now_ms()),
            }
            done = o.delivered or o.dead_lettered
            await self.store.write(
                lambda tx: table.record_outcome(tx, item.cursor, slot, outcome, done)
            )

        return record

    # -- rules --------------------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        """Listener: run every active channel of the batch's project over it."""
        channels = [c for c in self.channels.values() if c.project_pk == batch.project_pk]
        if not channels or not len(batch):
            return
        now = _now_ms()
        reg = self.engine.registry
        own = None
        for ch in channels:
            if not ch.active:
                continue
            for t in ch.triggers:
                rows = np.flatnonzero(np.isin(batch.series, t.series(reg)))
                key = (ch.pk, t.index)
                st = self.states.get(key, rules.TriggerState())
                cond = t.rule.condition
                if isinstance(cond, rules.Deadman):
                    if len(rows):
                        self.states[key] = rules.seen(st, now)
                    continue
                if not len(rows):
                    continue
                if own is None:
                    own = _own_units(batch, reg)
                numeric = own[rows]
                raw = [batch.values[i] for i in rows.tolist()]
                raw = [
                    float(n) if type(v) is float else v
                    for v, n in zip(raw, numeric.tolist(), strict=True)
                ]
                times = batch.times[rows]
                if isinstance(cond, rules.Threshold):
                    out = rules.run_threshold(t.rule, st, numeric, raw, times, now)
                else:
                    names = [reg.series_by_pk[s].variable_id for s in batch.series[rows].tolist()]
                    out = rules.run_expression(t.rule, st, names, numeric, raw, times, now)
                self.states[key] = out.state
                self.suppressed += out.suppressed
                for f in out.firings:
                    s = int(batch.series[rows[f.index]])
                    var_id = f.sensor or reg.series_by_pk[s].variable_id
                    self._fire(ch, t, var_id, f, int(batch.cursors[rows[f.index]]), now)

    def tick(self, now: int) -> None:
        """Deadman triggers on the clock."""
        for ch in list(self.channels.values()):
            if not ch.active:
                continue
            for t in ch.triggers:
                if not isinstance(t.rule.condition, rules.Deadman):
                    continue
                key = (ch.pk, t.index)
                out = rules.tick_deadman(t.rule, self.states.get(key, rules.TriggerState()), now)
                self.states[key] = out.state
                self.suppressed += out.suppressed
                for f in out.firings:
                    var = ch.doc.triggers[t.index].variable
                    self._fire(ch, t, var, f, None, now)

    def _fire(
        self,
        ch: Channel,
        t: Trigger,
        var_id: str | None,
        f: rules.Firing,
        cursor: int | None,
        now: int,
    ) -> None:
        reg = self.engine.registry
        dev = reg.devices_by_pk.get(t.device_pk)
        tdoc = ch.doc.triggers[t.index]
        record: dict[str, Any] = {
            "channel_id": ch.doc.id,
            "channel_name": ch.doc.name,
            "project_id": ch.doc.project,
            "site_id": dev.doc.site if dev else None,
            "inst_id": tdoc.device,
            "var_id": var_id,
            "value": f.value,
            "time": format_time(f.time_ms),
            "time_ms": f.time_ms,
            "trigger": t.index,
            "type": tdoc.type,
            "condition": _describe(tdoc),
            "state": "FIRING",
            "cursor": cursor,
            "created_at": _iso(now),
            "_check_name": ch.doc.id,
            "_time": format_time(f.time_ms),
            "_level": "crit",
        }
        self._pending.append((ch.pk, record))
        self._flush.set()

    # -- the alert log writer -----------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            try:
                await self._write_pending()
            except Exception:  # the store closing; the next start begins anew
                log.exception("writing alerts failed")

    async def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        docs = {c.pk: c for c in self.channels.values()}

        def run(tx: Tx) -> None:
            for channel_pk, record in pending:
                ch = docs.get(channel_pk)
                if ch is None:
                    continue
                alert_id = table.insert_alert(tx, channel_pk, _now_ms(), record)
                full = {**record, "alert_id": alert_id}
                actions = ch.doc.triggers[record["trigger"]].actions
                for a, slot in zip(actions, ch.triggers[record["trigger"]].slots, strict=True):
                    table.insert_action(
                        tx, alert_id, slot, channel_pk, a.method, a.target(), payload(a, full)
                    )

        await self.store.write(run)
        self.engine.deliveries.notify()
        self._actor_wake.set()

    async def _ticker(self) -> None:
        every = self.engine.settings.alert_tick_seconds
        while True:
            await asyncio.sleep(every)
            self.tick(_now_ms())

    # -- actors -------------------------------------------------------------------------------

    async def _actor_worker(self) -> None:
        while True:
            try:
                todo = await self.store.read(lambda c: table.actor_todo(c, FETCH))
            except Exception:
                log.exception("reading actor work failed")
                todo = []
            for alert_id, slot, _channel, actor_id, body, previous in todo:
                await self._run_actor(alert_id, slot, actor_id, body, previous)
            if len(todo) == FETCH:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._actor_wake.wait()
            self._actor_wake.clear()

    async def _run_actor(
        self, alert_id: int, slot: int, actor_id: str, body: bytes, previous: str | None
    ) -> None:
        attempt = (orjson.loads(previous).get("attempt", 0) if previous else 0) + 1
        alert = orjson.loads(body)
        started = time.perf_counter()
        outcome: dict[str, Any] = {"attempt": attempt, "actor_id": actor_id}
        try:
            result = await self.actors.run(actor_id, alert_id, alert)
            outcome |= {"delivered": True, "dead_lettered": False, "error": None, **result}
            done = True
        except ActorFailed as exc:
            done = attempt >= ACTOR_ATTEMPTS
            outcome |= {"delivered": False, "dead_lettered": done, "error": str(exc)}
        outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        outcome["execution_id"] = f"{alert_id}-{slot}-{attempt}"
        outcome["at"] = _iso(_now_ms())
        await self.store.write(lambda tx: table.record_outcome(tx, alert_id, slot, outcome, done))
        if not done:
            await asyncio.sleep(ACTOR_RETRY_SECONDS[min(attempt, len(ACTOR_RETRY_SECONDS)) - 1])


def _describe(t: Any) -> dict[str, Any]:
    if t.type == "threshold":
        return {"key": f"{t.device}.{t.variable}", "operator": t.operator, "val": t.value}
    if t.type == "expression":
        return {"expression": t.expression}
    return {"key": f"{t.device}.{t.variable or '*'}", "seconds": t.seconds}


def _own_units(batch: Batch, reg: Registry) -> npt.NDArray[np.float64]:
    """The batch's numeric values in each variable's own unit (the unit its thresholds use)."""
    values = batch.numeric()
    uniq, inverse = np.unique(batch.series, return_inverse=True)
    scale = np.ones(len(uniq))
    offset = np.zeros(len(uniq))
    for j, pk in enumerate(uniq.tolist()):
        s = reg.series_by_pk.get(pk)
        var = reg.variables_by_pk.get(s.variable_pk) if s is not None else None
        if var is not None:
            scale[j], offset[j] = var.scale, var.offset
    out: npt.NDArray[np.float64] = np.round((values - offset[inverse]) / scale[inverse], 9)
    return out
