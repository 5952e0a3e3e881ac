"""``engine.channels``: alert channels, their CRUD and the deliveries of their actions.

A channel document compiles to triggers (``core/rulebook.Channel``); creating, editing and
deleting one is written in the transaction of the alert rules' progress (``RulesControl.commit``:
alerts the old rules fired are logged first, and a new channel judges the log from the current
position on). Each HTTP action slot of a channel is one durable delivery
(``Deliveries``, keyed ``alert:<channel pk>:<slot>``) over that slot's rows of the alert log
(``SlotSource``); each attempt's outcome is written back to the row. ``ACTOR`` slots are run by
the actor worker (``core/actors.ActorWorker``), never registered as HTTP deliveries.

The service knows the rules' runtime and the deliveries only through the narrow protocols
below, never the engine.

In the cluster mode every change is also an event of the metadata feed (``ChannelPut``,
``ChannelDropped``, written by the alert tables in the change's transaction): the other nodes
apply it with ``follow``, so the node holding the work lease judges the next batch with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from streamgauge.core import alerts as rules
from streamgauge.core.channels import ChannelDoc, compile_trigger
from streamgauge.core.deliveries import Item, Outcome, Source, check_target
from streamgauge.core.registry import ProjectRec, Registry
from streamgauge.core.rulebook import Channel, Trigger
from streamgauge.domain import events as ev
from streamgauge.domain.errors import Conflict, Invalid
from streamgauge.store.api import AlertTables, Transactions

log = logging.getLogger("streamgauge.alerts")


class RulesControl(Protocol):
    """What the channel service needs of the alert rules' runtime (``core/alerting.Alerting``)."""

    async def commit(self, also: Callable[[Any], Any] | None = None) -> Any:
        """Write the rules' progress, and ``also`` in the same transaction; ``also``'s result."""
        ...

    def drop_states(self, channel_pk: int) -> None: ...

    def state(self, channel_pk: int, trigger: int) -> rules.TriggerState: ...


class DeliveryControl(Protocol):
    """The part of ``Deliveries`` the channels use."""

    allow_private_targets: bool

    def add(
        self,
        key: str,
        source: Source,
        *,
        start_after: int | None = None,
        on_outcome: Callable[[Item, Outcome], Awaitable[None] | None] | None = None,
    ) -> None: ...

    def remove(self, key: str, *, forget: bool = True) -> None: ...

    def keys(self) -> list[str]: ...


def _iso_now() -> str:
    return datetime.fromtimestamp(int(time.time() * 1000) / 1000, UTC).isoformat(
        timespec="milliseconds"
    )


class SlotSource:
    """The alert log as a delivery ``Source``: one action slot of one channel."""

    def __init__(
        self,
        store: Transactions[Any, Any],
        table: AlertTables[Any, Any],
        channel_pk: int,
        slot: int,
    ) -> None:
        self._store = store
        self._table = table
        self._channel = channel_pk
        self._slot = slot

    async def fetch(self, after: int, limit: int) -> Sequence[Item]:
        rows = await self._store.read(
            lambda c: self._table.slot_items(c, self._channel, self._slot, after, limit)
        )
        headers = {"Content-Type": "application/json"}
        return [Item(a, url, body, headers, created) for a, url, body, created in rows]


class ChannelService:
    """Every channel of the deployment (``engine.channels``): loaded on start, changed by the
    faces through these methods."""

    def __init__(
        self,
        store: Transactions[Any, Any],
        table: AlertTables[Any, Any],
        registry: Registry,
        deliveries: DeliveryControl,
        rules: RulesControl,
        actor_names: Callable[[], set[str]],
    ) -> None:
        self._store = store
        self._table = table  # the backend's alert tables, run in the store's transactions
        self._reg = registry
        self._deliveries = deliveries
        self._rules = rules
        self._actor_names = actor_names
        self.channels: dict[str, Channel] = {}
        self._following: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Read every stored channel and register its deliveries (channels no longer stored are
        forgotten: a reload after missing changes made on another node)."""
        loaded = await self._store.read(self._table.load_channels)
        stored = {pk for pk, _, _ in loaded}
        for gone in [c for c in self.channels.values() if c.pk not in stored]:
            self._forget(gone)
        for pk, project_pk, doc in loaded:
            ch = self._compiled(pk, project_pk, doc)
            if ch is not None:
                self._put(ch)
                await self._register(ch)

    def _compiled(self, pk: int, project_pk: int, doc: ChannelDoc) -> Channel | None:
        """A stored channel compiled (None: its project is gone)."""
        project = self._reg.projects_by_pk.get(project_pk)
        if project is None:
            return None
        try:
            return self.compile(project, doc, pk)
        except Invalid as exc:  # an instrument was deleted since: keep it, inactive
            log.warning("channel %s no longer compiles: %s", doc.id, exc.message)
            return Channel(pk, project_pk, doc.model_copy(update={"status": "INACTIVE"}))

    def _put(self, ch: Channel) -> None:
        for other in [c for c in self.channels.values() if c.pk == ch.pk and c is not ch]:
            self.channels.pop(other.doc.id, None)
        self.channels[ch.doc.id] = ch

    def _by_pk(self, pk: int) -> Channel | None:
        return next((c for c in self.channels.values() if c.pk == pk), None)

    # -- changes made on another node (the cluster's metadata feed) ---------------------------

    def follow(self, event: ev.MetaEvent) -> None:
        """A channel created, changed or deleted on another node (``ChannelPut``,
        ``ChannelDropped``; other events are not the channels'). Applied at once, in the order
        of the feed, so the node judging the rules uses the new channel from the next batch on;
        an update starts every trigger over (OK), as on the node that made it."""
        if isinstance(event, ev.ChannelPut):
            old = self._by_pk(event.pk)
            if old is not None and old.doc == event.doc and old.project_pk == event.project_pk:
                return  # already so (this node's own change, or a repeat)
            ch = self._compiled(event.pk, event.project_pk, event.doc)
            if ch is None:
                return
            if old is not None:
                self._rules.drop_states(event.pk)
            self._put(ch)
            task = asyncio.get_running_loop().create_task(self._register(ch))
            self._following.add(task)
            task.add_done_callback(self._following.discard)
        elif isinstance(event, ev.ChannelDropped):
            gone = self._by_pk(event.pk)
            if gone is not None:
                self._forget(gone)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, channel_id: str) -> Channel | None:
        return self.channels.get(channel_id)

    def of_project(self, project_pk: int) -> list[Channel]:
        return [c for c in self.channels.values() if c.project_pk == project_pk]

    def state_of(self, ch: Channel) -> list[str]:
        return [self._rules.state(ch.pk, t.index).state.value for t in ch.triggers]

    async def alerts(self, ch: Channel, skip: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        return await self._store.read(lambda c: self._table.list_alerts(c, ch.pk, skip, limit))

    async def project_of_alert(self, alert_id: int) -> str | None:
        """The id of the project an alert belongs to (None: no such alert)."""
        return await self._store.read(lambda c: self._table.alert_project(c, alert_id))

    # -- changes --------------------------------------------------------------------------------

    def compile(self, project: ProjectRec, doc: ChannelDoc, pk: int = 0) -> Channel:
        names = self._actor_names()
        triggers: list[Trigger] = []
        slot = 0
        for i, t in enumerate(doc.triggers):
            rule, dev, pks = compile_trigger(self._reg, project, t, i, names)
            for j, a in enumerate(t.actions):
                if a.method == "ACTOR":
                    continue  # runs locally: no target URL
                name = "http_url" if a.method == "HTTP" else "webhook_url"
                url = getattr(a, name)
                if url is not None:
                    try:
                        check_target(url, allow_private=self._deliveries.allow_private_targets)
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
        ch = self.compile(project, doc)
        ch.pk = int(
            await self._rules.commit(lambda tx: self._table.insert_channel(tx, project.pk, doc))
        )
        self.channels[doc.id] = ch
        await self._register(ch)
        return ch

    async def update(self, ch: Channel, doc: ChannelDoc) -> Channel:
        """Replace the channel's document; the new rules apply to the next batch, every trigger
        starting OK. Alerts the old rules fired are logged first, with the old actions."""
        project = self._reg.projects_by_pk[ch.project_pk]
        new = self.compile(project, doc, ch.pk)

        def run(tx: Any) -> None:
            self._table.update_channel(tx, ch.pk, doc)
            self._table.forget_states(tx, ch.pk)

        await self._rules.commit(run)
        self._put(new)
        self._rules.drop_states(ch.pk)
        await self._register(new)
        return new

    async def delete(self, ch: Channel) -> None:
        await self._rules.commit(lambda tx: self._table.delete_channel(tx, ch.pk))
        self._forget(ch)

    def forget_project(self, project_pk: int) -> None:
        """The project is gone (its channels, alerts and states went with it in the database)."""
        for ch in self.of_project(project_pk):
            self._forget(ch)

    def _forget(self, ch: Channel) -> None:
        if self.channels.get(ch.doc.id) is not None and self.channels[ch.doc.id].pk == ch.pk:
            del self.channels[ch.doc.id]
        self._rules.drop_states(ch.pk)
        self._unregister(ch)

    # -- the deliveries of the actions -----------------------------------------------------------

    async def _register(self, ch: Channel) -> None:
        """One delivery per HTTP action slot (current ones, and old ones that still hold rows).
        ``ACTOR`` slots are run by the actor worker, never registered as HTTP deliveries (their
        "target" is an actor id, and a delivery would overwrite the actor's outcome)."""
        stored = await self._store.read(lambda c: self._table.slots(c, ch.pk))
        current = {
            s
            for t in ch.triggers
            for a, s in zip(ch.doc.triggers[t.index].actions, t.slots, strict=True)
            if a.method != "ACTOR"
        }
        deliveries = self._deliveries
        for key in deliveries.keys():  # slots that became ACTOR slots on an edit
            prefix, _, number = key.rpartition(":")
            if prefix == f"alert:{ch.pk}" and int(number) not in current | set(stored):
                deliveries.remove(key, forget=True)
        for slot in sorted(current | set(stored)):
            deliveries.add(
                f"alert:{ch.pk}:{slot}",
                SlotSource(self._store, self._table, ch.pk, slot),
                start_after=0,
                on_outcome=self._outcome_hook(slot),
            )

    def _unregister(self, ch: Channel) -> None:
        for key in self._deliveries.keys():
            if key.startswith(f"alert:{ch.pk}:"):
                self._deliveries.remove(key, forget=True)

    def _outcome_hook(self, slot: int) -> Callable[[Item, Outcome], Awaitable[None]]:
        async def record(item: Item, o: Outcome) -> None:
            outcome = {
                "attempt": o.attempt,
                "status": o.status,
                "error": o.error,
                "latency_ms": round(o.latency_ms, 3),
                "delivered": o.delivered,
                "dead_lettered": o.dead_lettered,
                "at": _iso_now(),
            }
            done = o.delivered or o.dead_lettered
            await self._store.write(
                lambda tx: self._table.record_outcome(tx, item.cursor, slot, outcome, done)
            )

        return record
