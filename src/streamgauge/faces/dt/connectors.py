"""Data connectors: DT's ``HTTP_PUSH`` on the engine's durable deliveries.

A connector is a stored record (its DT document, kept through the engine's face-state store
``engine.dt_connectors``, see ``store/face_state.py``) and, while ``ACTIVE``, a delivery
(``engine.deliveries``) keyed ``dt-connector:<id>`` whose source reads the observation log: each
event row of the connector's project (of its ``events`` types, all when empty) becomes one POST
with the body ``{"event", "labels", "metadata"}`` and, when a signature secret is set, the
``X-Dt-Signature`` JWT. The delivery keeps its own cursor (advanced after a 2xx), retries with
backoff and dead-letters after the retention window (DT's 12 hours), across restarts and
receiver outages. A new connector pushes events from its creation on. ``USER_DISABLED`` stops the
delivery and forgets its queue (DT drops undelivered events of disabled connectors and does not
back-fill on re-enable); enabling it again starts from that moment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from streamgauge.core.consumers import LogScanner
from streamgauge.core.deliveries import Item, Outcome, check_target, outbound_client
from streamgauge.core.filters import CompiledSelection, Selection
from streamgauge.core.registry import Registry
from streamgauge.core.signing import DT_SIGNATURE_HEADER, dt_signature
from streamgauge.domain import events as ev
from streamgauge.domain.errors import BadRequest, Invalid
from streamgauge.domain.face_state import StoredConnector
from streamgauge.faces.dt.events import (
    EVENT_TYPES,
    dumps_ascii,
    event_obj,
    event_type_of,
    event_variables,
)

if TYPE_CHECKING:
    from streamgauge.core.engine import Engine

log = logging.getLogger("streamgauge.dt.connectors")

STATUSES = ("ACTIVE", "USER_DISABLED", "SYSTEM_DISABLED")
RETENTION_SECONDS = 12 * 3600
TIMEOUT_SECONDS = 10.0
SCAN_ROWS = 5000  # log rows read per step while looking for a connector's events


@dataclass(slots=True)
class Connector:
    pk: int
    project_pk: int
    id: str
    doc: dict[str, Any]  # the DT document without "name"
    start: int = 0  # log head when it was created or last enabled: pushes begin after it
    failing_since: float | None = None  # wall time of the first failure since the last success

    @property
    def key(self) -> str:
        return f"dt-connector:{self.id}"

    @classmethod
    def of(cls, stored: StoredConnector) -> Connector:
        return cls(stored.pk, stored.project_pk, stored.id, stored.doc, stored.start)


def connector_json(reg: Registry, c: Connector) -> dict[str, Any]:
    """A connector as every read (and the reply to a create or update) shows it. The signature
    secret is write-only, as on DT: the key stays (the SDK reads ``httpConfig.signatureSecret``
    unconditionally) but its value is always ``""``; the stored secret only signs pushes."""
    project = reg.projects_by_pk[c.project_pk].doc.id
    doc = dict(c.doc)
    config = doc.get("httpConfig")
    if isinstance(config, dict):
        doc["httpConfig"] = {**config, "signatureSecret": ""}
    return {"name": f"projects/{project}/dataconnectors/{c.id}", **doc}


# -- validation -------------------------------------------------------------------------------


def _bad(field: str, reason: str) -> BadRequest:
    return BadRequest(f"{field}: {reason}", [{"field": field, "reason": reason}])


def validate(body: dict[str, Any], base: dict[str, Any], allow_private: bool) -> dict[str, Any]:
    """A connector document: ``base`` with the fields of ``body`` applied, checked."""
    known = {"displayName", "type", "status", "events", "labels", "httpConfig", "name"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad(unknown[0], "not a data connector field")
    doc = dict(base)
    for k, v in body.items():
        if k != "name":
            doc[k] = v
    if doc.get("type", "HTTP_PUSH") != "HTTP_PUSH":
        raise _bad("type", "only HTTP_PUSH connectors are supported")
    doc["type"] = "HTTP_PUSH"
    name = doc.get("displayName", "")
    if not isinstance(name, str) or len(name) > 256:
        raise _bad("displayName", "a string of at most 256 characters")
    doc["displayName"] = name
    status = doc.get("status", "ACTIVE")
    if status not in ("ACTIVE", "USER_DISABLED") and not (
        status == "SYSTEM_DISABLED" and base.get("status") == "SYSTEM_DISABLED"
    ):
        raise _bad("status", "ACTIVE or USER_DISABLED")
    doc["status"] = status
    events = doc.get("events") or []
    if not isinstance(events, list) or not all(e in EVENT_TYPES for e in events):
        raise _bad("events", f"a list of event types: {', '.join(EVENT_TYPES)}")
    doc["events"] = list(dict.fromkeys(events))
    labels = doc.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise _bad("labels", "a list of label keys")
    doc["labels"] = list(dict.fromkeys(labels))
    config = doc.get("httpConfig")
    if not isinstance(config, dict):
        raise _bad("httpConfig", "an object with url, signatureSecret and headers")
    merged = {**(base.get("httpConfig") or {}), **config}
    url = merged.get("url")
    if not isinstance(url, str) or not url:
        raise _bad("httpConfig.url", "an http or https URL")
    check_target(url, allow_private=allow_private)
    secret = merged.get("signatureSecret") or ""
    if not isinstance(secret, str) or len(secret) > 1024:
        raise _bad("httpConfig.signatureSecret", "a string")
    headers = merged.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and "\n" not in k + v and "\r" not in k + v
        for k, v in headers.items()
    ):
        raise _bad("httpConfig.headers", "an object of header names and string values")
    doc["httpConfig"] = {"url": url, "signatureSecret": secret, "headers": headers}
    return doc


# -- the source -------------------------------------------------------------------------------


def push_body(reg: Registry, c: Connector, event: dict[str, Any], device_pk: int) -> bytes:
    """``{"event", "labels", "metadata"}`` as DT pushes it (labels: the connector's keys only)."""
    dev = reg.devices_by_pk.get(device_pk)
    labels = dev.doc.labels if dev is not None else {}
    device_id = event["targetName"].split("/")[-1]
    project_id = event["targetName"].split("/")[1]
    product = dev.doc.metadata.get("productNumber", "") if dev is not None else ""
    return dumps_ascii(
        {
            "event": event,
            "labels": {k: labels[k] for k in c.doc["labels"] if k in labels},
            "metadata": {
                "deviceId": device_id,
                "projectId": project_id,
                "deviceType": (dev.doc.type if dev is not None else None) or "",
                "productNumber": product if isinstance(product, str) else str(product),
            },
        }
    )


class LogSource:
    """A connector's events, read from the log: the rows of its project whose variable is one of
    its event types, found by a ``LogScanner`` (``core/consumers``), which skips non-matching
    stretches of the log in steps and remembers them, so a connector whose events are rare does
    not rescan the log on every commit."""

    def __init__(self, engine: Engine, connector: Connector) -> None:
        self._engine = engine
        self.connector = connector
        types = event_variables(connector.doc["events"] or EVENT_TYPES)
        self._scanner = LogScanner(
            engine,
            CompiledSelection(Selection(connector.project_pk, variables=types), engine.registry),
            SCAN_ROWS,
        )
        # (after, up to): no event in between (rows the selection wants may be no events)
        self._skipped: tuple[int, int] = (-1, -1)

    async def head(self) -> int:
        return self._engine.log_head

    async def fetch(self, after: int, limit: int) -> Sequence[Item]:
        items: list[Item] = []
        position = self._skipped[1] if self._skipped[0] == after else after
        while len(items) < limit:
            picked, position = await self._scanner.read(position, limit - len(items))
            for cursor, s, t, v in zip(
                picked.cursors.tolist(),
                picked.series.tolist(),
                picked.times.tolist(),
                picked.values,
                strict=True,
            ):
                item = self.item(cursor, s, t, v)
                if item is not None:
                    items.append(item)
            if items or not len(picked):
                break  # else the rows were no events: read on
        if not items:
            self._skipped = (after, position)
        return items

    def item(self, cursor: int, s: int, t: int, v: object) -> Item | None:
        """The push of one log row (cursor, series, time, value), or None if it is no event."""
        reg = self._engine.registry
        rec = reg.series_by_pk.get(s)
        proj = reg.projects_by_pk.get(rec.project_pk) if rec is not None else None
        if rec is None or proj is None or event_type_of(reg, rec) is None:
            return None
        event = event_obj(proj.doc.id, rec.device_id, rec.variable_id, v, t, cursor)
        if event is None:
            return None
        c = self.connector
        config = c.doc["httpConfig"]
        return Item(
            cursor,
            config["url"],
            push_body(reg, c, event, rec.device_pk),
            {"Content-Type": "application/json", **config["headers"]},
            t,
        )


def signer(secret: str) -> Any:
    if not secret:
        return None

    def sign(item: Item) -> Mapping[str, str]:
        return {DT_SIGNATURE_HEADER: dt_signature(secret, item.body)}

    return sign


class Connectors:
    """The connectors of the deployment, kept in step with ``engine.deliveries``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.by_id: dict[str, Connector] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._following = asyncio.Lock()  # changes from other nodes, applied one at a time
        engine.followers.append(self.follow)
        engine.resyncs.append(self.reload)

    async def start(self) -> None:
        await self.reload()

    async def reload(self) -> None:
        """Every stored connector, delivered while ``ACTIVE`` (on start, and after this node
        missed changes made on another node); ones no longer stored are stopped."""
        stored = {c.id: c for c in await self.engine.dt_connectors.load()}
        for gone in [c for c in self.by_id.values() if c.id not in stored]:
            self._drop(gone)
        for rec in stored.values():
            self._adopt(Connector.of(rec))

    def _adopt(self, fresh: Connector) -> None:
        """A stored connector: new here, or changed (its document or start), or as it was."""
        c = self.by_id.get(fresh.id)
        if c is not None and c.pk == fresh.pk:
            if c.doc == fresh.doc and c.start == fresh.start and c.key in self.engine.deliveries:
                return
            c.doc, c.start = fresh.doc, fresh.start
        else:
            c = self.by_id[fresh.id] = fresh
        if c.project_pk in self.engine.registry.projects_by_pk:
            self._run(c)

    def _drop(self, c: Connector) -> None:
        if self.by_id.get(c.id) is c:
            del self.by_id[c.id]
        if c.key in self.engine.deliveries:
            self.engine.deliveries.remove(c.key, forget=True)

    def follow(self, event: ev.MetaEvent) -> None:
        """A connector created, changed or deleted on another node (``Engine.followers``): the
        node holding the work lease delivers it from now on. Its record is read from the store
        (the event does not carry the signature secret); the changes are applied one at a time
        in the feed's order."""
        if isinstance(event, ev.ConnectorChanged | ev.ConnectorDropped):
            task = asyncio.get_running_loop().create_task(self._follow(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _follow(self, event: ev.ConnectorChanged | ev.ConnectorDropped) -> None:
        async with self._following:
            if isinstance(event, ev.ConnectorDropped):
                c = self.by_id.get(event.id)
                if c is not None and c.pk == event.pk:
                    self._drop(c)
                return
            try:
                stored = await self.engine.dt_connectors.load()
            except Exception:
                log.exception("data connector %s: reading its change failed", event.id)
                return
            found = next((c for c in stored if c.pk == event.pk), None)
            if found is not None:  # else deleted since: its own event follows
                self._adopt(Connector.of(found))

    def _run(self, c: Connector) -> None:
        """Deliver an ACTIVE connector (a running or stored delivery keeps its cursor; a new
        one starts after ``c.start``); stop and forget a disabled one."""
        deliveries = self.engine.deliveries
        if c.doc["status"] != "ACTIVE":
            if c.key in deliveries:
                deliveries.remove(c.key, forget=True)
            return
        c.failing_since = None
        deliveries.add(
            c.key,
            LogSource(self.engine, c),
            start_after=c.start,
            sign=signer(c.doc["httpConfig"]["signatureSecret"]),
            timeout_seconds=TIMEOUT_SECONDS,
            retention_seconds=RETENTION_SECONDS,
            on_outcome=self._watch(c),
        )

    def _watch(self, c: Connector) -> Callable[[Item, Outcome], None]:
        """DT's auto-disable: when every push has failed for ``dt_connector_disable_hours``
        (5 days, as DT), the connector becomes ``SYSTEM_DISABLED`` and stops; enabling it again
        starts from that moment. The clock is kept in memory: a restart starts it again."""
        limit = self.engine.settings.dt_connector_disable_hours * 3600

        def on_outcome(item: Item, outcome: Outcome) -> None:
            now = time.time()
            if outcome.delivered:
                c.failing_since = None
            elif c.failing_since is None:
                c.failing_since = now
            elif now - c.failing_since >= limit and c.doc["status"] == "ACTIVE":
                task = asyncio.create_task(self.system_disable(c))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        return on_outcome

    async def system_disable(self, c: Connector) -> None:
        if c.doc["status"] != "ACTIVE" or self.by_id.get(c.id) is not c:
            return
        log.warning("data connector %s: every push failed for too long; disabled", c.id)
        await self.update(c, {**c.doc, "status": "SYSTEM_DISABLED"})

    async def create(self, c: Connector) -> None:
        c.start = self.engine.log_head
        stored = await self.engine.dt_connectors.insert(c.project_pk, c.id, c.doc, c.start)
        c.pk = stored.pk
        self.by_id[c.id] = c
        self._run(c)

    async def update(self, c: Connector, doc: dict[str, Any]) -> None:
        enabling = c.doc["status"] != "ACTIVE" and doc["status"] == "ACTIVE"
        start = self.engine.log_head if enabling else c.start
        await self.engine.dt_connectors.update(c.pk, doc, start)
        c.doc, c.start = doc, start
        self._run(c)

    async def delete(self, c: Connector) -> None:
        await self.engine.dt_connectors.delete(c.pk)
        self._drop(c)

    def of_project(self, project_pk: int) -> list[Connector]:
        return sorted(
            (c for c in self.by_id.values() if c.project_pk == project_pk), key=lambda c: c.id
        )


async def push_once(items: list[Item], secret: str, *, allow_private: bool) -> None:
    """POST each item once (``:sync``), signed; failures are logged, not retried."""
    sign = signer(secret)
    async with outbound_client(allow_private=allow_private, timeout=TIMEOUT_SECONDS) as client:
        for item in items:
            headers = dict(item.headers)
            if sign is not None:
                headers.update(sign(item))
            try:
                await client.post(item.url, content=item.body, headers=headers)
            except (httpx.HTTPError, Invalid) as exc:
                log.warning("sync push to %s failed: %s", item.url, exc)
