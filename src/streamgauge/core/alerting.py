"""The alert runtime (``engine.alerting``): the rules as a durable consumer of the log, their
progress, the deadman clock, and the actor worker. Its parts, each in its own room:

* channel CRUD and the deliveries of HTTP actions: ``core/services/channels.ChannelService``
  (``engine.channels``);
* rule evaluation, a pure core: ``core/rulebook.py`` (``judge``, ``tick``) over the trigger
  rule engine ``core/alerts.py``;
* the consumer that runs it: ``RulesConsumer`` (a ``core/consumers.Consumer``) with its
  position store ``RulesProgress``;
* the actor worker: ``core/actors.ActorWorker`` (``ACTOR`` actions), through ``AlertActorWork``.

None of them takes the engine: the runtime gets the store, the registry, the log reader, the
deliveries and a history reader (for the plot actor), each typed by a narrow protocol.

The payload of every action is built when the alert is logged (same transaction), so edits to a
channel never change what an alert already fired sends.

Rules are a durable consumer of the log. The rules' *progress* is the last log cursor judged
(``evaluated``, the consumer's position) and every trigger's state (OK/PENDING/FIRING/RESOLVED,
pending and cooldown times, a deadman's last data). ``RulesProgress`` is the consumer's
position store: it writes the position in the same transaction as the alerts it produced and
the states changed, so the database always holds one consistent point of the evaluation:
alerts up to a cursor, and the states right after it. On start the log after the stored cursor
is judged again (the consumer's catch-up, ``RulesConsumer.step``: each ingest's rows with the
time they were received as the rules' clock) before going live, so every acknowledged
observation is judged exactly once: an alert whose batch was acknowledged but whose write a
crash prevented is raised by the replay, and one already logged is not raised again. The live
path (``RulesConsumer.live``, inside the commit listener, the receive time as clock, no store
read) writes only when an alert fired (after ``alert_flush_seconds``); without alerts the
progress is checkpointed lazily, every ``CHECKPOINT_SECONDS`` when it moved, on edits and on
stop. A deadman's clock is part of the progress and pauses while the server is down
(``rules.resume_deadman``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from streamgauge.core import alerts as rules
from streamgauge.core import rulebook
from streamgauge.core.actors import Actors, ActorWorker, HistoryReader, Todo
from streamgauge.core.channels import payload
from streamgauge.core.consumers import Consumer, LogReader
from streamgauge.core.registry import Registry
from streamgauge.core.rulebook import BatchSeries, Channel, StateKey, Trigger
from streamgauge.core.services.channels import ChannelService, DeliveryControl
from streamgauge.domain.batch import Batch
from streamgauge.store.api import AlertTables, Transactions

__all__ = ["Alerting", "BatchSeries", "Channel", "RulesConsumer", "RulesProgress", "Trigger"]

log = logging.getLogger("streamgauge.alerts")
CHECKPOINT_SECONDS = 5.0  # the progress is written at least this often when it moved
HEARTBEAT_SECONDS = 30.0  # ... and this often anyway while deadman triggers exist
REPLAY_ROWS = 50_000  # log rows read per step of the replay
RULES = "alert-rules"  # the rules consumer's name


def _now_ms() -> int:
    return int(time.time() * 1000)


class Notifier(Protocol):
    """What is told when alerts were logged: the deliveries (new rows to send)."""

    def notify(self) -> None: ...


@dataclass
class Progress:
    """What one write of the rules' progress holds (taken at one instant on the loop)."""

    alerts: list[tuple[Channel, dict[str, Any]]]
    states: dict[StateKey, rules.TriggerState | None]
    cursor: int
    alive_ms: int


class RulesProgress:
    """The rules consumer's positions (``store.api.ConsumerPositions``): its position is the
    rules' progress, saved in one transaction with the alerts not yet logged and the trigger
    states changed (``Alerting._commit``), so the effect of judging is exactly once."""

    def __init__(self, alerting: Alerting) -> None:
        self._a = alerting

    async def load(self, name: str) -> int | None:
        cursor, _, _ = await self._a.store.read(self._a.table.load_progress)
        return cursor

    async def save(self, name: str, position: int) -> None:
        await self._a._commit()

    async def forget(self, name: str) -> None:
        await self._a.store.write(lambda tx: self._a.table.save_progress(tx, 0, 0, {}))


class RulesConsumer(Consumer):
    """The alert rules as a durable consumer of the log (all rows: every project's channels
    are judged). Live batches are judged inside the commit listener with the time they were
    received as clock; when behind (on start, after a failure) it reads the log with each row's
    receive time and judges each ingest's rows as one batch at that time. Its position is
    written by the runtime (with alerts, lazily, on edits and on stop), never per step."""

    synchronous = True

    def __init__(self, alerting: Alerting, log: LogReader) -> None:
        super().__init__(RULES, log, RulesProgress(alerting), page_rows=REPLAY_ROWS)
        self._a = alerting
        self.replayed = 0  # log rows judged by catch-up steps since start
        self.last_received = 0  # the last receive time a catch-up step saw (0: none)

    def live(self, batch: Batch) -> bool:
        a = self._a
        a.judge(batch, _now_ms())
        if a.pending:
            a.flush_soon()
        return True

    async def step(self) -> bool:
        """Catch-up: judge the log after the position up to the head, ``REPLAY_ROWS`` rows a
        read, each ingest's rows (a run of one project and one receive time) as one batch at
        the time it was received."""
        async with self._lock:
            after = await self.load()
            head = self.log_head
            if after >= head:
                return False
            a = self._a
            rows = await a.store.read(
                functools.partial(a.table.log_after, after=after, upto=head, limit=REPLAY_ROWS)
            )
            if not rows:
                return False
            reg = a.registry
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
                    a.judge(batch, int(rec[lo]))
                self.position = max(self.position or 0, int(c[hi - 1]))
            self.last_received = max(self.last_received, int(rec[-1]))
            self.replayed += len(rows)
            if a.pending:
                a.flush_soon()
            return True


class AlertActorWork:
    """The alert log's ``ACTOR`` actions, for the actor worker (``core/actors.ActorWork``)."""

    def __init__(self, store: Transactions[Any, Any], table: AlertTables[Any, Any]) -> None:
        self._store = store
        self._table = table

    async def projects(self) -> list[int]:
        return await self._store.read(self._table.actor_projects)

    async def todo(self, project_pk: int, limit: int) -> list[Todo]:
        return await self._store.read(
            functools.partial(self._table.actor_todo, project_pk=project_pk, limit=limit)
        )

    async def record(self, alert_id: int, slot: int, outcome: dict[str, Any], done: bool) -> None:
        await self._store.write(
            lambda tx: self._table.record_outcome(tx, alert_id, slot, outcome, done)
        )


class Alerting:
    """``engine.alerting``: the rules' runtime (states, progress, the rules consumer, the
    deadman ticker, the alert log writer) and the actor worker. Channels are
    ``self.service`` (``engine.channels``)."""

    def __init__(
        self,
        store: Transactions[Any, Any],
        table: AlertTables[Any, Any],
        registry: Registry,
        log: LogReader,
        listeners: list[Callable[[Batch], None]],
        deliveries: DeliveryControl,
        notifier: Notifier,
        history: HistoryReader,
        *,
        data: Path,
        actors: dict[str, str],
        actor_timeout_seconds: float,
        page_limit: int,
        plot_retention_days: float,
        alert_flush_seconds: float,
        alert_tick_seconds: float,
    ) -> None:
        self.store = store
        self.table = table  # the backend's alert tables, run in the store's transactions
        self.registry = registry
        self._log = log
        self._listeners = listeners
        self._notifier = notifier
        self._flush_delay = alert_flush_seconds
        self._tick_every = alert_tick_seconds
        self.actors = Actors(
            history, registry, data, actors, actor_timeout_seconds, page_limit=page_limit
        )
        self.actor_worker = ActorWorker(
            self.actors, AlertActorWork(store, table), data, plot_retention_days
        )
        self.service = ChannelService(store, table, registry, deliveries, self, self.actors.names)
        self.consumer = RulesConsumer(self, log)
        self.states: dict[StateKey, rules.TriggerState] = {}
        self._dirty: set[StateKey] = set()  # states changed since the last write
        self.pending: list[tuple[Channel, dict[str, Any]]] = []  # alerts not yet logged
        self._lock = asyncio.Lock()  # one progress write at a time, in snapshot order
        self._saved_at = 0.0  # monotonic time of the last progress write
        self._flush = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self.suppressed = 0

    # -- the consumer's position, as the rest of the server reads it ---------------------------

    @property
    def evaluated(self) -> int:
        """The last log cursor judged (in memory)."""
        return self.consumer.position or 0

    @property
    def saved(self) -> int:
        """... as last written."""
        return self.consumer.saved or 0

    @property
    def replayed(self) -> int:
        """Log rows judged by the last start's catch-up."""
        return self.consumer.replayed

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        await self.service.load()
        cursor, alive_ms, states = await self.store.read(self.table.load_progress)
        known = {(c.pk, t.index) for c in self.service.channels.values() for t in c.triggers}
        self.states = {k: v for k, v in states.items() if k in known}
        # What this node changed while it did not run the rules (another node held the work
        # lease and wrote the states since) is not this node's to write.
        self._dirty = set()
        consumer = self.consumer
        consumer.position = consumer.saved = cursor
        consumer.replayed = consumer.last_received = 0
        self._listeners.append(consumer.offer)
        while await consumer.step():  # judge what the log holds after the stored cursor
            pass
        paused = _now_ms() - max(alive_ms, consumer.last_received)
        if alive_ms and paused > 0:
            for key, st in list(self.states.items()):
                if st.last_seen_ms is not None:
                    self.states[key] = rules.resume_deadman(st, paused)
                    self._dirty.add(key)
        await self._commit()
        loop = asyncio.get_running_loop()
        self.actor_worker.running = True
        self._tasks = [
            loop.create_task(self._writer(), name="alert log"),
            loop.create_task(self._ticker(), name="deadman"),
            loop.create_task(self.actor_worker.run(), name="actors"),
        ]
        await consumer.start()  # reads on if it ever falls behind the live path
        if consumer._task is not None:
            self._tasks.append(consumer._task)

    async def stop(self) -> None:
        if not self._running:  # never started here (a cluster node without the work lease)
            return
        self._running = False
        self.actor_worker.running = False  # no actor worker starts from here on
        running = [t for t in self._tasks if t is not self.consumer._task]
        for t in running:
            t.cancel()
        for t in running:
            try:
                await t
            except asyncio.CancelledError:
                pass
        await self.actor_worker.stop()
        if self.consumer.offer in self._listeners:
            self._listeners.remove(self.consumer.offer)
        await self.consumer.stop(save=False)
        try:
            await self._commit()  # the position, the states and alerts not yet written
        except Exception:  # the next start judges again what was not written
            log.exception("writing the alert rules' progress on stop failed")

    # -- rules --------------------------------------------------------------------------------

    def judge(self, batch: Batch, now: int) -> None:
        """Judge a batch (``now``: the time it was received) by every active channel of its
        project and keep what came out."""
        self._keep(
            rulebook.judge(self.service.channels.values(), self.states, batch, self.registry, now)
        )

    def tick(self, now: int) -> None:
        """Deadman triggers on the clock."""
        projects = self.registry.projects_by_pk
        for ch in list(self.service.channels.values()):
            if ch.project_pk not in projects:  # the project was deleted (on any face)
                self.service.forget_project(ch.project_pk)
        channels = list(self.service.channels.values())
        self._keep(rulebook.tick(channels, self.states, self.registry, now))
        if self.pending:
            self._flush.set()

    def _keep(self, verdict: rulebook.Verdict) -> None:
        for key, st in verdict.states.items():
            self.states[key] = st
            self._dirty.add(key)
        self.suppressed += verdict.suppressed
        self.pending.extend(verdict.alerts)

    def flush_soon(self) -> None:
        """Alerts are pending: the writer logs them (after ``alert_flush_seconds``)."""
        self._flush.set()

    def state(self, channel_pk: int, trigger: int) -> rules.TriggerState:
        return self.states.get((channel_pk, trigger), rules.TriggerState())

    def drop_states(self, channel_pk: int) -> None:
        """The channel's triggers start over (an edit) or are gone (a delete). Their stored
        states are deleted with the next progress write too: an edit made on another node
        forgot them in the database, and a checkpoint of this node must not write them back."""
        for key in [k for k in self.states if k[0] == channel_pk]:
            del self.states[key]
            self._dirty.add(key)  # None in the next snapshot: deleted

    # -- the rules' progress --------------------------------------------------------------------

    def _snapshot(self) -> Progress:
        """Take the alerts not yet logged, the states changed, and the position, at once."""
        alerts, self.pending = self.pending, []
        states: dict[StateKey, rules.TriggerState | None] = {
            k: self.states.get(k) for k in self._dirty
        }
        self._dirty = set()
        return Progress(alerts, states, self.evaluated, _now_ms())

    def _restore(self, p: Progress) -> None:
        """A write failed: what it held is written with the next one."""
        self.pending[:0] = p.alerts
        self._dirty |= set(p.states)

    def _apply(self, tx: Any, p: Progress) -> None:
        live = {c.pk for c in self.service.channels.values()}
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

    async def commit(self, also: Callable[[Any], Any] | None = None) -> Any:
        """``RulesControl.commit`` (the channel service's writes). On a node where the rules
        do not run (a cluster node without the work lease) only ``also`` is written: this
        node's idea of the progress is none, and writing it would move back the holder's."""
        if not self._running:
            return await self.store.write(also if also is not None else lambda tx: None)
        return await self._commit(also)

    async def _commit(self, also: Callable[[Any], Any] | None = None) -> Any:
        """Write the progress (alerts not yet logged, changed states, position), and ``also``
        after it in the same transaction; ``also``'s result."""
        async with self._lock:
            p = self._snapshot()

            def run(tx: Any) -> Any:
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
            consumer = self.consumer
            consumer.saved = max(consumer.saved or 0, p.cursor)
            self._saved_at = time.monotonic()
        if p.alerts:
            self._notifier.notify()
            for ch, _ in p.alerts:
                if any(a.method == "ACTOR" for t in ch.doc.triggers for a in t.actions):
                    self.actor_worker.wake(ch.project_pk)
        return out

    def _due(self) -> bool:
        """Whether a lazy checkpoint is due (on the tick)."""
        age = time.monotonic() - self._saved_at
        if self.pending:
            return False  # the writer logs them
        if (self.evaluated != self.saved or self._dirty) and age >= CHECKPOINT_SECONDS:
            return True
        return age >= HEARTBEAT_SECONDS and any(
            isinstance(t.rule.condition, rules.Deadman)
            for c in self.service.channels.values()
            for t in c.triggers
        )

    def problem(self) -> str | None:
        """What keeps the rules from working (for health checks), or None."""
        if not self._tasks:
            return "not started"
        for t in self._tasks:
            if t.done():
                return f"the {t.get_name()} task stopped"
        behind = self._log.log_head - self.evaluated
        if behind > 0:
            return f"{behind} observations behind the log"
        return None

    # -- writing the progress -----------------------------------------------------------------

    async def _writer(self) -> None:
        """Log fired alerts (with the progress), ``alert_flush_seconds`` after the first; also
        the lazy checkpoints the ticker finds due."""
        delay = self._flush_delay
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
        every = self._tick_every
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

    # -- channels (``engine.channels``; kept here for the callers of ``engine.alerting``) ------

    def get(self, channel_id: str) -> Channel | None:
        return self.service.get(channel_id)

    def forget_project(self, project_pk: int) -> None:
        self.service.forget_project(project_pk)
