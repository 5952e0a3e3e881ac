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
channel never change what an alert already fired sends.

Rules are a durable consumer of the log. The rules' *progress* is the last log cursor judged
(``evaluated``) and every trigger's state (OK/PENDING/FIRING/RESOLVED, pending and cooldown
times, a deadman's last data). It is written in the same transaction as the alerts it produced,
so the database always holds one consistent point of the evaluation: alerts up to a cursor,
and the states right after it. On start the log after the stored cursor is judged again
(``_replay``, each ingest's rows with the time they were received as the rules' clock) before
going live, so every acknowledged observation is judged exactly once: an alert whose batch was
acknowledged but whose write a crash prevented is raised by the replay, and one already logged
is not raised again. The live path writes only when an alert fired (after
``alert_flush_seconds``); without alerts the progress is checkpointed lazily, every
``CHECKPOINT_SECONDS`` when it moved, on edits and on stop. A deadman's clock is part of the
progress and pauses while the server is down (``rules.resume_deadman``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core import alerts as rules
from streamgauge.core.actors import ActorFailed, Actors, delete_old_plots
from streamgauge.core.batch import per_series_affine
from streamgauge.core.channels import ChannelDoc, compile_trigger, payload
from streamgauge.core.deliveries import Item, Outcome, check_target
from streamgauge.core.registry import ProjectRec, Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import Conflict, Invalid
from streamgauge.store.sqlite.store import Tx
from streamgauge.wire.rows import format_time

if TYPE_CHECKING:
    from streamgauge.core.engine import Engine

log = logging.getLogger("streamgauge.alerts")
ACTOR_ATTEMPTS = 3
ACTOR_RETRY_SECONDS = (1.0, 5.0)
ACTOR_CONCURRENCY = 4  # actions running at once, over all projects
ACTOR_POLL_SECONDS = 5.0  # the supervisor looks for left-over actor work this often
PLOT_SWEEP_SECONDS = 3600.0  # old plots are looked for this often (and on start)
FETCH = 100
CHECKPOINT_SECONDS = 5.0  # the progress is written at least this often when it moved
HEARTBEAT_SECONDS = 30.0  # ... and this often anyway while deadman triggers exist
REPLAY_ROWS = 50_000  # log rows read per step of the replay


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
            lambda c: self._a.table.slot_items(c, self._channel, self._slot, after, limit)
        )
        headers = {"Content-Type": "application/json"}
        return [Item(a, url, body, headers, created) for a, url, body, created in rows]


@dataclass
class Progress:
    """What one write of the rules' progress holds (taken at one instant on the loop)."""

    alerts: list[tuple[Channel, dict[str, Any]]]
    states: dict[tuple[int, int], rules.TriggerState | None]
    cursor: int
    alive_ms: int


class Alerting:
    """``engine.alerting``: every channel of the deployment and its runtime."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.table = engine.backend.alerts  # the backend's alert tables (store.api.AlertTables)
        s = engine.settings
        self.actors = Actors(engine, s.actors, s.actor_timeout_seconds, ACTOR_CONCURRENCY)
        self.channels: dict[str, Channel] = {}
        self.states: dict[tuple[int, int], rules.TriggerState] = {}
        self.evaluated = 0  # the last log cursor judged (in memory)
        self.saved = 0  # ... as last written
        self._dirty: set[tuple[int, int]] = set()  # states changed since the last write
        self._pending: list[tuple[Channel, dict[str, Any]]] = []
        self._replaying: list[Batch] | None = None  # batches published during the replay
        self._lock = asyncio.Lock()  # one progress write at a time, in snapshot order
        self._saved_at = 0.0  # monotonic time of the last progress write
        self._flush = asyncio.Event()
        self._actor_wake = asyncio.Event()
        self._actor_slots = asyncio.Semaphore(ACTOR_CONCURRENCY)  # FIFO: projects take turns
        self._actor_tasks: dict[int, asyncio.Task[None]] = {}  # project pk -> its worker
        self._actor_more: dict[int, bool] = {}  # project pk -> work may have come meanwhile
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.suppressed = 0
        self.replayed = 0  # log rows judged by the last start's replay

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        loaded = await self.store.read(self.table.load_channels)
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
        cursor, alive_ms, states = await self.store.read(self.table.load_progress)
        known = {(c.pk, t.index) for c in self.channels.values() for t in c.triggers}
        self.states = {k: v for k, v in states.items() if k in known}
        self.evaluated = self.saved = cursor
        self._replaying = []
        self.engine.listeners.append(self.on_batch)
        try:
            last_received = await self._replay()
        finally:
            buffered, self._replaying = self._replaying, None
        for batch in buffered:
            self.on_batch(batch)
        paused = _now_ms() - max(alive_ms, last_received)
        if alive_ms and paused > 0:
            for key, st in list(self.states.items()):
                if st.last_seen_ms is not None:
                    self.states[key] = rules.resume_deadman(st, paused)
                    self._dirty.add(key)
        await self._commit()
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._tasks = [
            loop.create_task(self._writer(), name="alert log"),
            loop.create_task(self._ticker(), name="deadman"),
            loop.create_task(self._actor_worker(), name="actors"),
        ]

    async def stop(self) -> None:
        self._stopping = True  # no actor worker starts from here on (the last commit below)
        running = [*self._tasks, *self._actor_tasks.values()]
        for t in running:
            t.cancel()
        for t in running:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.actors.close()
        try:
            await self._commit()
        except Exception:  # the next start judges again what was not written
            log.exception("writing the alert rules' progress on stop failed")

    async def _replay(self) -> int:
        """Judge the log after the stored cursor, up to the head at start, each ingest's rows
        (a run of one project and one receive time) as one batch at the time it was received.
        Returns the last receive time seen (0: none)."""
        reg = self.engine.registry
        head = self.store.head
        after = self.evaluated
        last_received = 0
        self.replayed = 0
        while after < head:
            rows = await self.store.read(
                functools.partial(self.table.log_after, after=after, upto=head, limit=REPLAY_ROWS)
            )
            if not rows:
                break
            cursors, series, times, values, qcs, received = zip(*rows, strict=True)
            s = np.array(series, np.int64)
            rec = np.array(received, np.int64)
            inside = s < len(reg.s_project)
            project = np.full(len(s), -1, np.int64)
            project[inside] = reg.s_project[s[inside]]
            cut = np.flatnonzero((project[1:] != project[:-1]) | (rec[1:] != rec[:-1])) + 1
            bounds = [0, *cut.tolist(), len(rows)]
            c = np.array(cursors, np.int64)
            t = np.array(times, np.int64)
            q = np.array(qcs, np.int64)
            for lo, hi in itertools.pairwise(bounds):
                if project[lo] >= 0:
                    batch = Batch(
                        int(project[lo]),
                        c[lo:hi],
                        s[lo:hi],
                        t[lo:hi],
                        list(values[lo:hi]),
                        q[lo:hi],
                    )
                    self._judge(batch, int(rec[lo]))
                self.evaluated = max(self.evaluated, int(c[hi - 1]))
            after = int(c[-1])
            last_received = max(last_received, int(rec[-1]))
            self.replayed += len(rows)
        return last_received

    # -- the rules' progress --------------------------------------------------------------------

    def _snapshot(self) -> Progress:
        """Take the alerts not yet logged, the states changed, and the position, at once."""
        alerts, self._pending = self._pending, []
        states: dict[tuple[int, int], rules.TriggerState | None] = {
            k: self.states.get(k) for k in self._dirty
        }
        self._dirty = set()
        return Progress(alerts, states, self.evaluated, _now_ms())

    def _restore(self, p: Progress) -> None:
        """A write failed: what it held is written with the next one."""
        self._pending[:0] = p.alerts
        self._dirty |= set(p.states)

    def _apply(self, tx: Tx, p: Progress) -> None:
        live = {c.pk for c in self.channels.values()}
        stored: dict[int, bool] = {}
        for ch, record in p.alerts:
            if ch.pk not in stored:  # deleted meanwhile (or its project): nothing to log
                stored[ch.pk] = ch.pk in live and self.table.channel_exists(tx, ch.pk)
            if not stored[ch.pk]:
                continue
            alert_id = self.table.insert_alert(tx, ch.pk, p.alive_ms, record)
            full = {**record, "alert_id": alert_id}
            t = ch.triggers[record["trigger"]]
            for a, slot in zip(ch.doc.triggers[t.index].actions, t.slots, strict=True):
                self.table.insert_action(
                    tx, alert_id, slot, ch.pk, a.method, a.target(), payload(a, full)
                )
        self.table.save_progress(tx, p.cursor, p.alive_ms, p.states)

    async def _commit(self, also: Callable[[Tx], Any] | None = None) -> Any:
        """Write the progress (alerts not yet logged, changed states, position), and ``also``
        after it in the same transaction; ``also``'s result."""
        async with self._lock:
            p = self._snapshot()

            def run(tx: Tx) -> Any:
                self._apply(tx, p)
                return also(tx) if also is not None else None

            write = asyncio.ensure_future(self.store.write(run))
            try:
                out = await asyncio.shield(write)
            except asyncio.CancelledError:
                # The transaction runs to its end anyway: know whether it held, so what it
                # carried is neither lost nor written twice.
                await asyncio.wait({write})
                if write.cancelled() or write.exception() is not None:
                    self._restore(p)
                raise
            except BaseException:
                self._restore(p)
                raise
            self.saved = max(self.saved, p.cursor)
            self._saved_at = time.monotonic()
        if p.alerts:
            self.engine.deliveries.notify()
            for ch, _ in p.alerts:
                if any(a.method == "ACTOR" for t in ch.doc.triggers for a in t.actions):
                    self._wake_actors(ch.project_pk)
        return out

    def _due(self) -> bool:
        """Whether a lazy checkpoint is due (on the tick)."""
        age = time.monotonic() - self._saved_at
        if self._pending:
            return False  # the writer logs them
        if (self.evaluated != self.saved or self._dirty) and age >= CHECKPOINT_SECONDS:
            return True
        return age >= HEARTBEAT_SECONDS and any(
            isinstance(t.rule.condition, rules.Deadman)
            for c in self.channels.values()
            for t in c.triggers
        )

    def problem(self) -> str | None:
        """What keeps the rules from working (for health checks), or None."""
        if not self._tasks:
            return "not started"
        for t in self._tasks:
            if t.done():
                return f"the {t.get_name()} task stopped"
        behind = self.store.head - self.evaluated
        if behind > 0:
            return f"{behind} observations behind the log"
        return None

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
                if a.method == "ACTOR":
                    continue  # runs locally: no target URL
                name = "http_url" if a.method == "HTTP" else "webhook_url"
                url = getattr(a, name)
                if url is not None:
                    try:
                        check_target(
                            url, allow_private=self.engine.deliveries.allow_private_targets
                        )
                    except Invalid as exc:
                        field = f"triggers.actions.{j}.{name}"
                        raise Invalid(
                            f"triggers[{i}].actions[{j}].{name}: {exc.message}",
                            [{"index": i, "field": field, "reason": exc.details[0]["reason"]}],
                        ) from exc
            slots = list(range(slot, slot + len(t.actions)))
            whole = t.type == "deadman" and not t.variable
            triggers.append(Trigger(i, rule, dev.pk, pks, slots, any_variable=whole))
            slot += len(t.actions)
        if not triggers:
            raise Invalid("a channel needs at least one trigger", [{"field": "triggers"}])
        return Channel(pk, project.pk, doc, triggers)

    async def create(self, project: ProjectRec, doc: ChannelDoc) -> Channel:
        """A new channel judges the log from the current position on (the position is written
        with it, so a restart does not judge older observations against it)."""
        if doc.id in self.channels:
            raise Conflict(f"channel {doc.id!r} exists", [{"field": "channel_id"}])
        ch = self._compile(project, doc)
        ch.pk = int(await self._commit(lambda tx: self.table.insert_channel(tx, project.pk, doc)))
        self.channels[doc.id] = ch
        await self._register(ch)
        return ch

    async def update(self, ch: Channel, doc: ChannelDoc) -> Channel:
        """Replace the channel's document; the new rules apply to the next batch, every trigger
        starting OK. Alerts the old rules fired are logged first, with the old actions."""
        project = self.engine.registry.projects_by_pk[ch.project_pk]
        new = self._compile(project, doc, ch.pk)

        def run(tx: Tx) -> None:
            self.table.update_channel(tx, ch.pk, doc)
            self.table.forget_states(tx, ch.pk)

        await self._commit(run)
        self.channels[doc.id] = new
        self._drop_states(ch.pk)
        await self._register(new)
        return new

    async def delete(self, ch: Channel) -> None:
        await self._commit(lambda tx: self.table.delete_channel(tx, ch.pk))
        self.channels.pop(ch.doc.id, None)
        self._drop_states(ch.pk)
        self._unregister(ch)

    def _drop_states(self, channel_pk: int) -> None:
        for key in [k for k in self.states if k[0] == channel_pk]:
            del self.states[key]
        self._dirty = {k for k in self._dirty if k[0] != channel_pk}

    def _unregister(self, ch: Channel) -> None:
        for key in self.engine.deliveries.keys():
            if key.startswith(f"alert:{ch.pk}:"):
                self.engine.deliveries.remove(key, forget=True)

    def forget_project(self, project_pk: int) -> None:
        """The project is gone (its channels, alerts and states went with it in the database)."""
        for ch in self.of_project(project_pk):
            self.channels.pop(ch.doc.id, None)
            self._drop_states(ch.pk)
            self._unregister(ch)

    async def project_of_alert(self, alert_id: int) -> str | None:
        """The id of the project an alert belongs to (None: no such alert)."""
        return await self.engine.store.read(lambda c: self.table.alert_project(c, alert_id))

    async def alerts(self, ch: Channel, skip: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        return await self.store.read(lambda c: self.table.list_alerts(c, ch.pk, skip, limit))

    def state_of(self, ch: Channel) -> list[str]:
        return [
            self.states.get((ch.pk, t.index), rules.TriggerState()).state.value for t in ch.triggers
        ]

    async def _register(self, ch: Channel) -> None:
        """One delivery per HTTP action slot (current ones, and old ones that still hold rows).
        ``ACTOR`` slots are run by the actor worker, never registered as HTTP deliveries (their
        "target" is an actor id, and a delivery would overwrite the actor's outcome)."""
        stored = await self.store.read(lambda c: self.table.slots(c, ch.pk))
        current = {
            s
            for t in ch.triggers
            for a, s in zip(ch.doc.triggers[t.index].actions, t.slots, strict=True)
            if a.method != "ACTOR"
        }
        for key in self.engine.deliveries.keys():  # slots that became ACTOR slots on an edit
            prefix, _, number = key.rpartition(":")
            if prefix == f"alert:{ch.pk}" and int(number) not in current | set(stored):
                self.engine.deliveries.remove(key, forget=True)
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
                lambda tx: self.table.record_outcome(tx, item.cursor, slot, outcome, done)
            )

        return record

    # -- rules --------------------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        """Listener: judge a committed batch (the part after the position, once the replay on
        start is done) by every active channel of its project."""
        if self._replaying is not None:
            self._replaying.append(batch)
            return
        if not len(batch) or batch.last <= self.evaluated:
            return
        if batch.first <= self.evaluated:
            batch = batch.take(batch.cursors > self.evaluated)
        self._judge(batch, _now_ms())
        self.evaluated = batch.last
        if self._pending:
            self._flush.set()

    def _judge(self, batch: Batch, now: int) -> None:
        """Run every active channel of the batch's project over it, ``now`` being the rules'
        clock (the time the batch was received)."""
        channels = [
            c for c in self.channels.values() if c.project_pk == batch.project_pk and c.active
        ]
        if not channels:
            return
        reg = self.engine.registry
        own = None
        where = BatchSeries.of(batch, reg)
        for ch in channels:
            for t in ch.triggers:
                rows = where.rows(t)
                if not len(rows):
                    continue
                key = (ch.pk, t.index)
                st = self.states.get(key, rules.TriggerState())
                cond = t.rule.condition
                if isinstance(cond, rules.Deadman):
                    self._set(key, st, rules.seen(st, now))
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
                self._set(key, st, out.state)
                self.suppressed += out.suppressed
                for f in out.firings:
                    s = int(batch.series[rows[f.index]])
                    var_id = f.sensor or reg.series_by_pk[s].variable_id
                    self._fire(ch, t, var_id, f, int(batch.cursors[rows[f.index]]), now)

    def _set(self, key: tuple[int, int], old: rules.TriggerState, new: rules.TriggerState) -> None:
        if new != old:
            self.states[key] = new
            self._dirty.add(key)

    def tick(self, now: int) -> None:
        """Deadman triggers on the clock."""
        projects = self.engine.registry.projects_by_pk
        for ch in list(self.channels.values()):
            if ch.project_pk not in projects:  # the project was deleted (on any face)
                self.forget_project(ch.project_pk)
                continue
            if not ch.active:
                continue
            for t in ch.triggers:
                if not isinstance(t.rule.condition, rules.Deadman):
                    continue
                key = (ch.pk, t.index)
                st = self.states.get(key, rules.TriggerState())
                out = rules.tick_deadman(t.rule, st, now)
                self._set(key, st, out.state)
                self.suppressed += out.suppressed
                for f in out.firings:
                    var = ch.doc.triggers[t.index].variable
                    self._fire(ch, t, var, f, None, now)
        if self._pending:
            self._flush.set()

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
        self._pending.append((ch, record))

    # -- writing the progress -----------------------------------------------------------------

    async def _writer(self) -> None:
        """Log fired alerts (with the progress), ``alert_flush_seconds`` after the first; also
        the lazy checkpoints the ticker finds due."""
        delay = self.engine.settings.alert_flush_seconds
        while True:
            await self._flush.wait()
            if delay:
                await asyncio.sleep(delay)
            self._flush.clear()
            try:
                await self._commit()
            except Exception:  # the store closing; the replay on the next start redoes it
                log.exception("writing alerts failed")
                await asyncio.sleep(1.0)
                self._flush.set()

    async def _ticker(self) -> None:
        """Deadman triggers on a fixed schedule. The ticker never waits for the store (a
        checkpoint that is due is handed to the writer), so a busy store or a slow write cannot
        hold the next tick back; a failing tick is logged and the next one runs."""
        every = self.engine.settings.alert_tick_seconds
        loop = asyncio.get_running_loop()
        next_at = loop.time() + every
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + every, loop.time())  # after a stall: no burst of ticks
            try:
                self.tick(_now_ms())
            except Exception:
                log.exception("judging deadman triggers failed")
            if self._due():
                self._flush.set()  # the writer checkpoints

    # -- actors -------------------------------------------------------------------------------

    async def _actor_worker(self) -> None:
        """The actors' supervisor: every ``ACTOR_POLL_SECONDS`` (and on start) it finds the
        projects with actions not yet done (after a restart, after failures) and makes sure
        each has its worker; it also deletes plots older than ``plot_retention_days``."""
        swept = -math.inf
        while True:
            try:
                projects = await self.store.read(self.table.actor_projects)
            except Exception:
                log.exception("reading actor work failed")
                projects = []
            for project_pk in projects:
                self._wake_actors(project_pk)
            if time.monotonic() - swept >= PLOT_SWEEP_SECONDS:
                swept = time.monotonic()
                days = self.engine.settings.plot_retention_days
                if days > 0:
                    try:
                        await asyncio.to_thread(
                            delete_old_plots, self.engine.settings.data, days * 86400.0
                        )
                    except Exception:
                        log.exception("deleting old plots failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACTOR_POLL_SECONDS):
                    await self._actor_wake.wait()
            self._actor_wake.clear()

    def _wake_actors(self, project_pk: int) -> None:
        """The project may have actions to run: start its worker unless it runs already."""
        self._actor_more[project_pk] = True
        if project_pk not in self._actor_tasks and self._tasks and not self._stopping:
            self._actor_tasks[project_pk] = asyncio.get_running_loop().create_task(
                self._project_actors(project_pk), name=f"actors of project {project_pk}"
            )

    async def _project_actors(self, project_pk: int) -> None:
        """One project's worker: its ``ACTOR`` rows not yet done, in alert order, one at a time.
        Workers of all projects share ``ACTOR_CONCURRENCY`` slots (a FIFO semaphore, so projects
        take turns: one tenant's backlog or slow actor cannot starve the others), and a failed
        action's retry delay holds back only its own project. The worker ends when its project
        has nothing left."""
        try:
            while True:
                self._actor_more[project_pk] = False
                try:
                    todo = await self.store.read(
                        functools.partial(self.table.actor_todo, project_pk=project_pk, limit=FETCH)
                    )
                except Exception:
                    log.exception("reading actor work of project %d failed", project_pk)
                    await asyncio.sleep(ACTOR_RETRY_SECONDS[-1])
                    continue
                if not todo:
                    if self._actor_more.get(project_pk):
                        continue  # woken while reading: look again
                    return
                for alert_id, slot, _channel, actor_id, body, previous in todo:
                    async with self._actor_slots:
                        retry = await self._run_actor(alert_id, slot, actor_id, body, previous)
                    if retry:
                        await asyncio.sleep(retry)
        finally:
            if self._actor_tasks.get(project_pk) is asyncio.current_task():
                del self._actor_tasks[project_pk]
                self._actor_more.pop(project_pk, None)

    async def _run_actor(
        self, alert_id: int, slot: int, actor_id: str, body: bytes, previous: str | None
    ) -> float:
        """Run one action and record its outcome; the delay before its retry (0: done)."""
        attempt = (orjson.loads(previous).get("attempt", 0) if previous else 0) + 1
        alert = orjson.loads(body)
        started = time.perf_counter()
        outcome: dict[str, Any] = {"attempt": attempt, "actor_id": actor_id}
        try:
            result = await self.actors.run(actor_id, alert_id, alert)
            outcome |= {"delivered": True, "dead_lettered": False, "error": None, **result}
            done = True
        except Exception as exc:  # ActorFailed, or a bug: recorded, never kills the worker
            if not isinstance(exc, ActorFailed):
                log.exception("actor %s failed unexpectedly", actor_id)
            done = attempt >= ACTOR_ATTEMPTS
            error = str(exc) if isinstance(exc, ActorFailed) else f"internal error: {exc!r}"
            outcome |= {"delivered": False, "dead_lettered": done, "error": error}
        outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        outcome["execution_id"] = f"{alert_id}-{slot}-{attempt}"
        outcome["at"] = _iso(_now_ms())
        await self.store.write(
            lambda tx: self.table.record_outcome(tx, alert_id, slot, outcome, done)
        )
        if done:
            return 0.0
        return ACTOR_RETRY_SECONDS[min(attempt, len(ACTOR_RETRY_SECONDS)) - 1]


def _describe(t: Any) -> dict[str, Any]:
    if t.type == "threshold":
        return {"key": f"{t.device}.{t.variable}", "operator": t.operator, "val": t.value}
    if t.type == "expression":
        return {"expression": t.expression}
    return {"key": f"{t.device}.{t.variable or '*'}", "seconds": t.seconds}


def _own_units(batch: Batch, reg: Registry) -> npt.NDArray[np.float64]:
    """The batch's numeric values in each variable's own unit (the unit its thresholds use)."""
    values = batch.numeric()
    scale, offset = per_series_affine(batch, reg, lambda var: (var.scale, var.offset))
    out: npt.NDArray[np.float64] = np.round((values - offset) / scale, 9)
    return out
