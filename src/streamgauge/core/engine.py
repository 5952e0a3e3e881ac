"""The engine: one store, one hub, one authenticator, wired together; faces call into it.

A face translates its wire format into these calls and back, and owns no storage, filtering or
cursor logic of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Gauge

from streamgauge.auth import Authenticator
from streamgauge.auth.tokens import TokenIssuer
from streamgauge.bus.api import Bus
from streamgauge.config import Settings
from streamgauge.core import columnar as columnar_ingest
from streamgauge.core import footprint, ingest, metafeed
from streamgauge.core.alerting import Alerting
from streamgauge.core.cluster import (
    Channel,
    ClusterLink,
    MetaRun,
    decode_meta,
    encode_meta,
    split_by_project,
)
from streamgauge.core.consumers import Consumer, Handler, Select
from streamgauge.core.dedupe import LogRules
from streamgauge.core.deliveries import Deliveries
from streamgauge.core.filters import CompiledSelection, Selection
from streamgauge.core.framing import Framing
from streamgauge.core.handoff import Handoff
from streamgauge.core.hub import Hub, Item, Sink, Subscription
from streamgauge.core.ingest import Row as IngestRow
from streamgauge.core.leases import LeasedWork
from streamgauge.core.registry import DeviceRec, ProjectRec, Registry
from streamgauge.core.services import AccountService, MetadataService
from streamgauge.core.services.timeseries import TimeSeries
from streamgauge.core.units import METRIC, UnitSystem, describe
from streamgauge.core.units import warm as warm_units
from streamgauge.domain import events as ev
from streamgauge.domain.batch import Batch, concat, empty_batch
from streamgauge.domain.errors import BadRequest, StreamgaugeError, Unavailable
from streamgauge.domain.feeds import FeedSession, FeedToken
from streamgauge.domain.log import AppendResult, HistoryQuery, IngestColumns
from streamgauge.metrics import Metrics
from streamgauge.store.api import ConsumerPositions, FeedSessions, Store
from streamgauge.store.face_state import DTAccountStore, DTConnectorStore
from streamgauge.store.factory import Backend, backend_for
from streamgauge.store.files import private_dir, tighten_if_present
from streamgauge.wire.rows import format_time

log = logging.getLogger("streamgauge.engine")

MAX_SEND_BYTES = 256 * 1024  # coalesce queued frames into writes of at most this size
LAG_PROBE_SECONDS = 0.05  # how often the event loop's lag is sampled (metrics)
STORE_RETRY_SECONDS = 0.5  # a stream whose catch-up read found the store away reads again
SHUTDOWN_REASON = "server shutting down"
HISTORY_STEP = 4096  # candidates judged per store read of a filtered history read
HISTORY_WINDOW_MS = 60_000  # first time window of a filtered history read
MAX_WINDOW_MS = 1 << 50  # a window never grows past this (about 35,000 years)
MAX_CURSOR = 2**63 - 1


def _series_added(event: ev.MetaEvent) -> bool:
    return type(event) is ev.SeriesAdded


def load_admin_token(settings: Settings) -> tuple[str, bool]:
    """The admin token, and whether it was generated just now (to print it once)."""
    if settings.admin_token:
        return settings.admin_token, False
    private_dir(settings.data)
    path = settings.data / "admin-token"
    token = secrets.token_urlsafe(32)
    try:  # created 0600 (never readable by others, not even for a moment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        tighten_if_present(path)
        return path.read_text().strip(), False
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return token, True


def token_key(settings: Settings, admin_token: str) -> str | None:
    """The key that signs tokens and derives key secrets, as hex: ``STREAMGAUGE_TOKEN_KEY`` if
    set; in the cluster mode (a shared store) without it, one derived from the admin token,
    which every node of a cluster shares (HMAC-SHA256), so a token or key issued by one node
    works on every other; else None (a random key kept in the data folder)."""
    if settings.token_key is not None:
        return settings.token_key
    if settings.store is None:
        return None
    return hmac.new(admin_token.encode(), b"streamgauge token key", hashlib.sha256).hexdigest()


class Engine:
    def __init__(
        self, settings: Settings, admin_token: str, *, backend: Backend[Any, Any] | None = None
    ) -> None:
        self.settings = settings
        # The metadata read model: the store loads it and hands it every committed change.
        self.registry = Registry()
        # The storage backend (store/factory.py): its store, table modules and services. The
        # core reaches storage only through it and the protocols of store/api.py. ``backend``:
        # another one than the settings name (a worker process's read-only view, workers/).
        self.backend: Backend[Any, Any] = backend or backend_for(settings)
        # The duplicate/conflict rule and QC run in the store's writer, in commit order.
        rules = LogRules(self.registry, quality_control=settings.qc)
        self.store: Store[Any, Any] = self.backend.open_store(
            settings, lambda _: rules, self.registry
        )
        self.metrics = Metrics()
        self.hub = Hub(on_direct=self.metrics.delivery_seconds.observe)
        self.tokens = TokenIssuer.load(settings.data, token_key(settings, admin_token))
        self.auth = Authenticator(
            self.registry,
            admin_token,
            self.tokens,
            failure_limit=settings.auth_failure_limit,
            failure_window_seconds=settings.auth_failure_window_seconds,
        )
        # Called in the event loop with every batch handed on, before the hub has it: what
        # relays it to other processes (workers/: the fan-out worker processes). Quick, no raise.
        self.relays: list[Callable[[Batch], None]] = []
        # Called in the event loop with every committed batch, after the hub has it. Listeners
        # (reported state, alert rules, delivery wake-ups) must be quick and must not raise.
        self.listeners: list[Callable[[Batch], None]] = []
        self.metrics.bind(
            lambda: self.hub.subscribers,
            self.hub.queued_bytes,
            lambda: self.head,
            self.store.index_lag,
        )
        # The other processes' state for /healthz (workers/: set by the writer with workers).
        self.process_health: Callable[[], dict[str, object]] | None = None
        # The push-feed sessions the other processes serve (workers/: set by the writer when
        # its workers serve the feed), for ``connected_feeds``.
        self.peer_feeds: Callable[[int], Awaitable[list[tuple[FeedToken, FeedSession]]]] | None = (
            None
        )
        self.metrics.bind_registry(footprint.Cached(self.registry).get)
        # Outbound deliveries (data connectors, alert actions), woken by every committed batch.
        self.deliveries = Deliveries(
            self.backend.delivery_positions(self.store),
            metrics=self.metrics,
            allow_private_targets=settings.allow_private_targets,
            poll_seconds=settings.delivery_poll_seconds,
            retry_first_seconds=settings.delivery_retry_first_seconds,
            retry_max_seconds=settings.delivery_retry_max_seconds,
        )
        self.listeners.append(lambda batch: self.deliveries.notify())
        self.consumers: dict[str, Consumer] = {}  # durable readers of the log, by name
        # The cluster mode (``--bus``): the link to the other nodes, and the last cursor this
        # node handed on (the hub's head; the store's head in the embedded mode).
        self.cluster: ClusterLink | None = None
        self._node_head = 0
        self._work: LeasedWork | None = None  # the cluster mode's work lease
        self._ticker: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Future[None]] = set()
        self._lag: asyncio.Task[None] | None = None
        self._gc_before: tuple[int, int, int] | None = None
        self._switch_before: float | None = None
        # Push-feed tokens and durable feed sessions.
        self.feeds: FeedSessions = self.backend.feed_sessions(
            self.store,
            settings.feed_session_retention_hours * 3600,
            settings.feed_sessions_per_token,
        )
        # Alert channels: rules on every committed batch, actions through deliveries and actors.
        self.alerting = Alerting(
            self.store,
            self.backend.alerts,
            self.registry,
            self,
            self.listeners,
            self.deliveries,
            self.deliveries,
            self,
            data=settings.data,
            actors=settings.actors,
            actor_timeout_seconds=settings.actor_timeout_seconds,
            page_limit=settings.page_limit_max,
            plot_retention_days=settings.plot_retention_days,
            alert_flush_seconds=settings.alert_flush_seconds,
            alert_tick_seconds=settings.alert_tick_seconds,
        )
        self.channels = self.alerting.service  # channel CRUD (core/services/channels.py)
        # The cluster mode: told, in feed order, of each work event (``events.WORK_EVENTS``:
        # channels, data connectors) another node committed, so the work lease's holder
        # follows a change made anywhere at once. Quick, on the loop, must not raise.
        self.followers: list[Callable[[ev.MetaEvent], None]] = [self.channels.follow]
        # ... and, when this node was behind what the feed keeps and reloaded the metadata
        # (``core/metafeed.py``), these reload what the work events would have told.
        self.resyncs: list[Callable[[], Coroutine[Any, Any, None]]] = [self.channels.load]
        # The services every face calls (core/services/).
        self.metadata = MetadataService(self.store, self.backend.metadata, self.registry, settings)
        self.metadata.project_deleted += [
            lambda pk: self.hub.close_project(pk, "project deleted"),
            self.alerting.forget_project,
        ]
        self.accounts = AccountService(
            self.store, self.backend.metadata, self.registry, self.auth, self.tokens
        )
        # Aggregates, latest values, retention, resume gaps (core/services/timeseries.py).
        self.timeseries = TimeSeries(self.store, self.registry, settings)
        self.listeners.append(self.timeseries.committed)

    async def start(self) -> None:
        private_dir(self.settings.data)
        await self.store.open(self._committed)
        if self.settings.bus:
            await self._join_cluster()
        if self.cluster is None:
            await self.timeseries.start()
            await self.alerting.start()
            await self.deliveries.start()
        else:  # the work that must happen once runs on the node holding the lease
            await self.timeseries.start(retention=False)
            await self.alerting.service.load()  # channels readable on every node
            self._work = self._lease_work(self.cluster)
            self._work.begin()
        await self.feeds.start()
        self._start_clocks()

    def _start_clocks(self) -> None:
        """The process-wide settings (gc, switch interval) and the keepalive and lag clocks."""
        gc.callbacks.append(self.metrics.on_gc)
        self._gc_before = gc.get_threshold()
        gc.set_threshold(*self.settings.gc_thresholds)
        self._switch_before = sys.getswitchinterval()
        sys.setswitchinterval(self.settings.switch_interval_ms / 1000)
        self._ticker = asyncio.create_task(self._keepalive_clock())
        self._lag = asyncio.create_task(self._loop_lag_probe())

    async def _keepalive_clock(self) -> None:
        """Idle streams get a keepalive between one and 1.25 intervals after their last write."""
        idle = self.settings.keepalive_seconds
        while True:
            await asyncio.sleep(idle / 4)
            self.hub.tick(time.monotonic(), idle)

    async def _loop_lag_probe(self) -> None:
        """Sample the event loop's lag (``streamgauge_event_loop_lag_seconds``)."""
        step = LAG_PROBE_SECONDS
        while True:
            due = time.perf_counter() + step
            await asyncio.sleep(step)
            self.metrics.loop_lag.observe(max(0.0, time.perf_counter() - due))

    def _committed(self, batch: Batch) -> None:
        if self.cluster is not None:  # in cursor order with the other nodes' commits
            self.cluster.committed("batch", batch)
        else:
            self._hand_on(batch)

    def _hand_on(self, batch: Batch) -> None:
        self._node_head = batch.last
        for relay in self.relays:
            relay(batch)
        self.hub.publish(batch)
        for listener in self.listeners:
            listener(batch)

    @property
    def head(self) -> int:
        """The last cursor this node handed on to its hub and listeners: what its streams may
        resume from without waiting (the store's head in the embedded mode)."""
        return self._node_head if self.cluster is not None else self.store.head

    def _lease_work(self, link: ClusterLink) -> LeasedWork:
        """Alert rules (with deadman clocks and actors), deliveries (alert actions, DT data
        connectors) and retention: started when this node takes the work lease, stopped when
        it loses it. Their positions are in the store, so the next holder goes on from them."""
        from streamgauge.bus.jetstream import NatsBus, NatsLeases

        assert isinstance(link.bus, NatsBus)
        ttl = self.settings.cluster_lease_seconds

        async def start() -> None:
            await self.alerting.start()
            await self.deliveries.start()
            self.timeseries.start_retention()

        async def stop() -> None:
            await self.alerting.stop()
            await self.deliveries.stop()
            await self.timeseries.stop()

        work = LeasedWork(
            NatsLeases(link.bus, ttl),
            "work",
            link.bus.node_id,
            start,
            stop,
            ttl=ttl,
            renew_every=ttl / 3,
        )
        Gauge(
            "streamgauge_cluster_work_lease",
            "1 while this node holds the cluster's work lease (rules, deliveries, retention)",
            registry=self.metrics.registry,
        ).set_function(lambda: 1.0 if work.held else 0.0)
        return work

    async def _join_cluster(self, bus: Bus | None = None, meta_after: int | None = None) -> None:
        """Subscribe to the bus, start after the store's head, and fill gaps from the store
        (``core/cluster.py``; a bus that cannot be reached raises ``BusUnavailable``).

        ``bus``: another bus than the settings' NATS one (a worker process's link to its
        parent, ``bus/local.py``); ``meta_after``: the metadata event the registry was loaded
        at, when that is not the store's events head now (a read-only view loaded earlier)."""
        from streamgauge.bus.codec import decode_batch, encode_batch  # the cluster mode only

        s = self.settings
        reg = self.registry

        def project_of(series: int) -> int:
            rec = reg.series_by_pk.get(series)
            return rec.project_pk if rec is not None else 0

        def apply(run: MetaRun) -> None:
            if run.reload:  # behind what the feed keeps: the store's metadata, then the work's
                metafeed.apply_reload(reg, run)
                for resync in self.resyncs:
                    task = asyncio.get_running_loop().create_task(resync())
                    self._stopping.add(task)
                    task.add_done_callback(self._stopping.discard)
                return
            if not run.local:  # this node's own changes were applied at its commit
                # In order; each run of series first seen at once (``Registry.apply_all``).
                for series, group in itertools.groupby(run.events, _series_added):
                    if series:
                        reg.apply_all(list(group))
                        continue
                    for event in group:
                        reg.apply(event)
                        if isinstance(event, ev.WORK_EVENTS):
                            for follow in self.followers:
                                try:
                                    follow(event)
                                except Exception:
                                    log.exception("following a %s event failed", ev.kind(event))

        async def read_meta(after: int, upto: int | None) -> list[tuple[int, int, MetaRun]]:
            return await metafeed.read_meta(self.store, after, upto, s.cluster_fill_rows)

        meta: Channel[MetaRun] = Channel(
            "meta",
            encode=encode_meta,
            decode=decode_meta,
            span=lambda r: (r.first, r.last),
            trim=lambda r, after: r.after(after),
            read=read_meta,
            head=self.store.events_head,
            deliver=apply,
            grace=s.cluster_fill_grace_seconds,
        )

        async def known(batch: Batch) -> None:
            """A batch whose series another node made: its metadata first."""
            if not reg.knows_series(batch.series):
                await meta.sync()

        async def read(after: int, upto: int | None) -> list[tuple[int, int, Batch]]:
            end = upto if upto is not None else await self.store.durable_head()
            if end <= after:
                return []
            batch = await self.store.read_log(after, end, s.cluster_fill_rows)
            await known(batch)
            return split_by_project(batch, project_of)

        channel: Channel[Batch] = Channel(
            "batch",
            encode=encode_batch,
            decode=lambda data: decode_batch(data, time.monotonic_ns()),
            span=lambda b: (b.first, b.last),
            trim=lambda b, after: b.take(b.cursors > after),
            read=read,
            head=self.store.durable_head,
            deliver=self._hand_on,
            grace=s.cluster_fill_grace_seconds,
            prepare=known,
        )
        if bus is None:
            from streamgauge.bus.jetstream import NatsBus

            assert s.bus is not None
            bus = NatsBus(
                s.bus,
                s.cluster,
                retention_seconds=s.cluster_bus_retention_seconds,
            )
        link = ClusterLink(bus, [channel, meta], head_every=s.cluster_head_check_seconds)

        async def heads() -> dict[Any, int]:
            head = await self.store.durable_head()
            self._node_head = head
            events = meta_after if meta_after is not None else await self.store.events_head()
            return {"batch": head, "meta": events}

        def events_committed(first: int, last: int, events: list[Any]) -> None:
            link.committed("meta", MetaRun(first, last, events, local=True))

        self.cluster = link
        try:
            await link.start(heads)
        except BaseException:
            self.cluster = None
            raise
        self.store.on_events = events_committed

    def begin_shutdown(self) -> None:
        """The first step of a shutdown (the server calls it as soon as the signal arrives, before
        waiting for connections): every live stream ends now with its closing frame and resume
        cursor, and every stream opened from now on ends at once the same way (a complete
        response, never one cut by the server going down)."""
        self.hub.shut_down(SHUTDOWN_REASON)

    async def stop(self) -> None:
        for task in (self._ticker, self._lag):
            if task is not None:
                task.cancel()
        self._ticker = self._lag = None
        if self.metrics.on_gc in gc.callbacks:
            gc.callbacks.remove(self.metrics.on_gc)
        if self._gc_before is not None:
            gc.set_threshold(*self._gc_before)
            self._gc_before = None
        if self._switch_before is not None:
            sys.setswitchinterval(self._switch_before)
            self._switch_before = None
        if self._work is not None:
            await self._work.close()  # stops the work if held here, and releases the lease
            self._work = None
        await self.alerting.stop()
        if self.cluster is not None:
            await self.cluster.close()
        await self.timeseries.stop()
        for consumer in list(self.consumers.values()):
            await consumer.stop()
        await asyncio.gather(*self._stopping, return_exceptions=True)  # removed ones
        self.hub.shut_down(SHUTDOWN_REASON)
        await asyncio.sleep(0)
        await self.feeds.stop()
        await self.deliveries.stop()
        await self.store.close()
        self.auth.close()

    # -- ingest ---------------------------------------------------------------------------------

    async def ingest(
        self,
        project: ProjectRec,
        body: bytes,
        *,
        ndjson: bool,
        future_limit: bool = True,
        columnar: str | None = None,
    ) -> AppendResult:
        """Decode, check and append a batch. ``future_limit=False`` lifts ``max_future_seconds``
        (the Tapis face: Tapis stores times in the future). ``columnar``: the body is an Arrow
        IPC stream (``"arrow"``) or a Parquet file (``"parquet"``), see ``core/columnar.py``."""
        started = time.perf_counter()
        s = self.settings
        if columnar is not None:  # off the loop: see columnar.decode_resolve
            try:
                columns = await asyncio.to_thread(
                    functools.partial(
                        columnar_ingest.decode_resolve,
                        body,
                        columnar,
                        self.registry,
                        project.pk,
                        max_bytes=s.max_body_bytes,
                        **self._checks(future_limit),
                    )
                )
            except StreamgaugeError as exc:
                self.metrics.ingest_rejected.labels(str(exc.status)).inc()
                raise
            return await self._append(columns, started)
        if len(body) >= ingest.OFF_LOOP_BYTES:  # a big batch: checked off the loop
            try:
                columns = await asyncio.to_thread(
                    functools.partial(
                        ingest.decode_resolve,
                        body,
                        self.registry,
                        project.pk,
                        ndjson=ndjson,
                        **self._checks(future_limit),
                    )
                )
            except StreamgaugeError as exc:
                self.metrics.ingest_rejected.labels(str(exc.status)).inc()
                raise
            return await self._append(columns, started)
        try:
            rows = ingest.decode(body, ndjson=ndjson, max_errors=s.max_batch_errors)
        except StreamgaugeError as exc:
            self.metrics.ingest_rejected.labels(str(exc.status)).inc()
            raise
        return await self.ingest_rows(project, rows, future_limit=future_limit, started=started)

    def _checks(self, future_limit: bool) -> dict[str, Any]:
        s = self.settings
        return {
            "now_ms": int(time.time() * 1000),
            "max_future_ms": int(s.max_future_seconds * 1000) if future_limit else ingest.MAX_TIME,
            "max_errors": s.max_batch_errors,
        }

    async def ingest_rows(
        self,
        project: ProjectRec,
        rows: list[IngestRow],
        *,
        future_limit: bool = True,
        started: float | None = None,
        metadata: Callable[[Any], object] | None = None,
    ) -> AppendResult:
        """Check and append rows a face decoded from its own wire format (the line protocol,
        MQTT messages), all or nothing: ``Invalid`` naming each bad row by its index in
        ``rows``, or ``Conflict`` naming the rows that conflict with stored observations.

        ``metadata``: metadata writes the rows need first (``MetadataService.ensure_writes``:
        devices and variables created on first sight), committed in the same transaction as
        the rows (``Store.append_with``), so a refused batch leaves none of them behind."""
        started = time.perf_counter() if started is None else started
        try:
            if not rows:
                raise BadRequest(ingest.EMPTY_BATCH)
            resolve = functools.partial(
                ingest.resolve, rows, self.registry, project.pk, **self._checks(future_limit)
            )
            if metadata is None:
                columns = resolve()
        except StreamgaugeError as exc:
            self.metrics.ingest_rejected.labels(str(exc.status)).inc()
            raise
        if metadata is None:
            return await self._append(columns, started)
        return await self._append(None, started, metadata=metadata, resolve=resolve)

    async def _append(
        self,
        columns: IngestColumns | None,
        started: float,
        *,
        metadata: Callable[[Any], object] | None = None,
        resolve: Callable[[], IngestColumns] | None = None,
    ) -> AppendResult:
        try:
            if columns is not None:
                result = await self.store.append(columns)
            else:  # the rows are resolved in the transaction, after what it creates
                assert metadata is not None and resolve is not None
                result = await self.store.append_with(metadata, resolve)
        except StreamgaugeError as exc:
            self.metrics.ingest_rejected.labels(str(exc.status)).inc()
            raise
        self.metrics.ingest_batches.inc()
        self.metrics.ingest_rows.inc(result.accepted)
        self.metrics.ingest_duplicates.inc(result.duplicates)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return result

    # -- reads ----------------------------------------------------------------------------------

    async def history(self, query: HistoryQuery, selection: Selection | None = None) -> Batch:
        """Stored rows in (time, cursor) order, up to ``query.limit``, however many rows it
        takes to find them (for internal readers: feed rewinds, actors). A face answering a
        client uses ``history_page``, whose work per request is bounded."""
        if selection is None or selection.expr is None:
            return await self.store.history(query)
        kept: list[Batch] = []
        found = 0
        after = query.after
        while True:
            page = dataclasses.replace(query, after=after, limit=query.limit - found)
            batch, after = await self.history_page(page, selection, scan_rows=None)
            kept.append(batch)
            found += len(batch)
            if after is None or found >= query.limit:
                break
        return concat(kept).head(query.limit)

    async def history_page(
        self,
        query: HistoryQuery,
        selection: Selection | None = None,
        *,
        scan_rows: int | None = -1,
    ) -> tuple[Batch, tuple[int, int] | None]:
        """One page of a history read: up to ``query.limit`` rows in (time, cursor) order after
        ``query.after``, and the key to go on from (None: nothing is left).

        The read walks the log in time windows, each entered at the resume key by every
        series' index, so each row is scanned once however many pages it takes (a window
        holding more than a page halves the next one; a sparse one grows it; an empty one
        jumps to the next stored time), and no read sorts more than a window. With a filter
        expression the database judges each window's candidates, and the page also ends after
        ``scan_rows`` candidates (``history_scan_rows`` by default; None: no bound) even if
        fewer rows passed: the key then points past the last row scanned. Without one, every
        row scanned is returned, so ``query.limit`` bounds the work."""
        expr = selection.expr if selection is not None else None
        budget = self.settings.history_scan_rows if scan_rows == -1 else scan_rows
        if expr is None:
            budget = None  # every row scanned is returned: the limit bounds the work
        kept: list[Batch] = []
        found = scanned = 0
        after = query.after
        window = HISTORY_WINDOW_MS
        start: int | None = None  # the current window's first time (None: look it up)
        while True:
            if budget is not None and scanned >= budget:
                break  # bounded work: the caller resumes from the last row scanned
            if start is None:
                start = await self.store.next_time(dataclasses.replace(query, after=after))
                if start is None:
                    after = None  # nothing is left
                    break
            upper = start + window
            if query.end is not None:
                upper = min(upper, query.end)
            if expr is None:  # one row past the limit says whether there is more
                step = min(HISTORY_STEP, query.limit + 1 - found)
            else:
                step = HISTORY_STEP if budget is None else min(HISTORY_STEP, budget - scanned)
            page = dataclasses.replace(query, after=after, end=upper, limit=step)
            if expr is None:
                picked = await self.store.history(page)
                candidates = len(picked)
                last = (int(picked.times[-1]), int(picked.cursors[-1])) if candidates else None
            else:
                picked, last, candidates = await self.store.history_judged(page, expr)
            kept.append(picked)
            found += len(picked)
            scanned += candidates
            if candidates >= step and last is not None:  # the window held more than a page
                after = last
                start = last[0]
                window = max(1, window // 2)
            else:  # the window is done: go on after it
                after = (upper - 1, MAX_CURSOR)
                start = upper if candidates else None
                if candidates < step // 4:
                    window = min(window * 4, MAX_WINDOW_MS)
                if query.end is not None and upper >= query.end:
                    after = None
                    break
            if found > query.limit:
                break
        batch = concat(kept) if kept else empty_batch(query.project_pk)
        if len(batch) > query.limit:
            batch = batch.head(query.limit)
            return batch, (int(batch.times[-1]), int(batch.cursors[-1]))
        return batch, after

    def series_of(self, selection: Selection) -> tuple[int, ...]:
        """The series pks a selection wants now (for history reads)."""
        allowed = CompiledSelection(selection, self.registry).allowed()
        return tuple(np.flatnonzero(allowed).tolist())

    async def check_cursor(self, since: int) -> None:
        """A cursor to resume from must be in the log. In the cluster mode another node may have
        given it out a moment before this one handed it on: wait (briefly) until it has."""
        if self.cluster is not None and 0 <= since and since > self.head:
            if since <= await self.store.durable_head():
                deadline = time.monotonic() + self.settings.cluster_resume_wait_seconds
                while self.head < since and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
        if since < 0 or since > self.head:
            raise BadRequest(
                f"cursor {since} is not in this log (its head is {self.head})",
                [{"field": "since", "reason": "resume from a cursor this server gave you"}],
            )

    async def stream(
        self,
        selection: Selection,
        framing: Framing,
        since: int | None,
        units: UnitSystem = METRIC,
        direct: Callable[[bytes], bool] | None = None,
        state: object = None,
    ) -> AsyncIterator[bytes]:
        """Frames of matching observations after ``since`` (live only if None), then live,
        keepalives when idle, and a closing frame with the resume cursor if the server ends it.

        ``direct``: writes frames to the client at once, without waiting (False: not now,
        nothing written); while the stream is live, the hub's fan-out writes each round's
        frames with it instead of waking this generator (``core/hub.py``, direct delivery).
        ``state``: the face's, for its framing's ``prepare`` and ``deliver`` (see ``events``)."""
        s = self.settings
        warm_units(units)  # before the opening frame's labels (see ``events``)
        yield framing.opened(int(s.keepalive_seconds * 1000)) + framing.units(describe(units))
        sink: Sink | None = None
        if direct is not None:
            write = direct

            def sink(items: list[Item], position: int) -> bool:
                return not items or write(b"".join([item.data for item in items]))

        async for event in self.events(selection, framing, since, units, sink, state=state):
            if isinstance(event, Chunk):
                if event.items:
                    yield b"".join([item.data for item in event.items])
            elif isinstance(event, Keepalive):
                yield framing.keepalive(format_time(event.now_ms))
            else:
                yield framing.closed(event.reason, event.resume)

    async def events(
        self,
        selection: Selection,
        framing: Framing,
        since: int | None,
        units: UnitSystem = METRIC,
        direct: Sink | None = None,
        keepalives: bool = True,
        state: object = None,
    ) -> AsyncGenerator[Chunk | Keepalive | Closed, None]:
        """A subscription as events, for faces to frame: chunks of matching rows after
        ``since`` (live only if None; catch-up from the store first, then live, without gap or
        duplicate), a keepalive when idle for ``keepalive_seconds``, and, if the server ends
        it, a last ``Closed`` event with the cursor to resume from. Each chunk carries the
        position: every row up to it has been considered.

        ``direct``: a sink (see ``core/hub.py``) that takes live rounds at once. It is given to
        the hub whenever the subscription is live with nothing queued; while the hub uses it,
        rows do not pass through here. What it raises is raised here.

        ``keepalives=False``: no ``Keepalive`` events (a WebSocket face has protocol pings), so
        the keepalive clock never wakes this stream's task.

        ``state``: the face's per-subscriber state, for its framing's ``prepare`` and
        ``deliver`` (the feed's ``_Sender``, a native stream's ``ChunkWriter``)."""
        s = self.settings
        warm_units(units)  # pint's registry now, not in a fan-out round every stream waits on
        sub = Subscription(
            CompiledSelection(selection, self.registry),
            framing,
            self.registry,
            s.subscriber_queue_bytes,
            units,
        )
        sub.keepalives = keepalives
        sub.state = state
        sub.selection.compile()  # now, not on the first publish that all subscribers share
        self.hub.subscribe(sub)
        handoff = Handoff(last=self.head if since is None else since)
        handoff.start(self.head)
        try:
            while True:
                if sub.closed is not None:  # also while catching up: shutdown does not wait
                    if handoff.live and sub.direct_last > handoff.last:
                        handoff.delivered(sub.direct_last)
                    self.metrics.stream_closed.labels("server").inc()
                    yield Closed(sub.closed, handoff.last, slow=False)
                    return
                span = handoff.next_read()
                if span is not None:
                    page = s.catchup_page_rows
                    try:
                        batch = await self.store.read_log(
                            span[0], span[1], page, project_pk=selection.project_pk
                        )
                    except Unavailable:
                        # The store is away (cluster mode: PostgreSQL unreachable): the stream
                        # keeps its connection, with keepalives, and reads again.
                        if keepalives and sub.keepalive_due:
                            sub.keepalive_due = False
                            sub.last_sent = time.monotonic()
                            yield Keepalive(int(time.time() * 1000))
                        await asyncio.sleep(STORE_RETRY_SECONDS)
                        continue
                    items = sub.render(batch) if len(batch) else []
                    handoff.read(batch.last if len(batch) else None, complete=len(batch) < page)
                    if items or len(batch):
                        sub.last_sent = time.monotonic()
                        yield Chunk(items, handoff.last)
                    if sub.overflowed:
                        sub.reset()
                        handoff.restart(self.head)
                    continue
                if sub.direct_last > handoff.last:
                    handoff.delivered(sub.direct_last)
                if sub.error is not None:
                    raise sub.error
                if sub.closed is not None:
                    continue  # closed at the top of the loop
                if sub.overflowed:
                    self.metrics.stream_closed.labels("slow_consumer").inc()
                    yield Closed(
                        "slow consumer: the send queue overflowed; resume from the cursor",
                        handoff.last,
                        slow=True,
                    )
                    return
                chunk: list[Item] = []
                size = 0
                oldest = 0
                while size < MAX_SEND_BYTES:
                    item = sub.take()
                    if item is None:
                        break
                    if handoff.admit(item.first, item.last):
                        chunk.append(item)
                        size += len(item.data)
                        oldest = oldest or item.received_ns
                if chunk:
                    self.metrics.delivery_seconds.observe((time.monotonic_ns() - oldest) / 1e9)
                    sub.last_sent = time.monotonic()
                    yield Chunk(chunk, handoff.last)
                    continue
                if sub.keepalive_due:
                    sub.keepalive_due = False
                    sub.last_sent = time.monotonic()
                    yield Keepalive(int(time.time() * 1000))
                    continue
                if direct is not None:
                    sub.sink = direct  # live, nothing queued: the hub delivers from now on
                await sub.wakeup.wait()
        finally:
            sub.sink = None
            self.hub.unsubscribe(sub)

    # -- the log, face state, device transfer -----------------------------------------------------

    @property
    def log_head(self) -> int:
        """The last committed and published cursor (0 when the log is empty)."""
        return self.head

    async def read_log(self, after: int, upto: int, limit: int) -> Batch:
        """Committed rows with ``after < cursor <= upto`` in cursor order, all projects."""
        return await self.store.read_log(after, upto, limit)

    async def cursor_before(self, received_ms: int) -> int:
        """The last cursor committed before ``received_ms`` (wall clock), 0 if none."""
        return await self.store.cursor_before(received_ms)

    async def connected_feeds(self, project_pk: int) -> list[tuple[FeedToken, FeedSession]]:
        """The push-feed sessions of the project's tokens that a connection serves now, in
        every process of the server (with the feed served by fan-out workers, each worker's
        too)."""
        found = self.feeds.connected(project_pk)
        if self.peer_feeds is not None:
            found += await self.peer_feeds(project_pk)
        return found

    @functools.cached_property
    def consumer_positions(self) -> ConsumerPositions:
        """Where durable consumers keep their positions (``store.api.ConsumerPositions``)."""
        return self.backend.consumer_positions(self.store)

    def consumer(
        self,
        name: str,
        handler: Handler,
        *,
        select: Select | None = None,
        page_rows: int = 5000,
        start: int | None = None,
    ) -> Consumer:
        """A durable consumer of the log (``core/consumers``) named ``name``, woken by every
        committed batch; the caller starts it (``await consumer.start()``), the engine stops it.
        A consumer of the same name replaces the previous one, which is stopped."""
        old = self.consumers.pop(name, None)
        if old is not None:
            self.remove_consumer(old)
        consumer = Consumer(
            name,
            self,
            self.consumer_positions,
            handler,
            select=select,
            page_rows=page_rows,
            start=start,
        )
        self.consumers[name] = consumer
        self.listeners.append(consumer.notify)
        return consumer

    def remove_consumer(self, consumer: Consumer) -> None:
        """Stop waking ``consumer`` and stop its task (its stored position stays)."""
        if self.consumers.get(consumer.name) is consumer:
            del self.consumers[consumer.name]
        if consumer.notify in self.listeners:
            self.listeners.remove(consumer.notify)
        if consumer.running:
            task = asyncio.ensure_future(consumer.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    @functools.cached_property
    def dt_accounts(self) -> DTAccountStore[Any]:
        """The DT face's service-account settings (``store/face_state.py``)."""
        return self.backend.dt_accounts(self.store)

    @functools.cached_property
    def dt_connectors(self) -> DTConnectorStore:
        """The DT face's data connectors (``store/face_state.py``)."""
        return self.backend.dt_connectors(self.store)

    async def transfer_device(self, device: DeviceRec, target: ProjectRec) -> None:
        """Move a device to another project, in one write transaction: it keeps its pk,
        variables, series and stored observations, which now belong to ``target`` (the source
        project no longer sees them); it loses its site. The registry follows after the commit."""
        await self.backend.ops.transfer_device(self.store, device, target)

    async def check_store(self) -> None:
        """Raise if the store cannot answer a read (health checks)."""
        await self.backend.ops.probe(self.store)


@dataclass(frozen=True, slots=True)
class Chunk:
    items: list[Item]  # may be empty: a catch-up page with no match still advances ``position``
    position: int


@dataclass(frozen=True, slots=True)
class Keepalive:
    now_ms: int


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str
    resume: int
    slow: bool
