"""Prometheus metrics of one engine (its own registry: no global state).

With fan-out worker processes (``serve --workers N``, docs/workers.md) the writer's
``/metrics`` covers every process (``render_all``, ``merge``): what adds up across processes
(subscribers, their queued bytes, delivery latencies, closed streams) is one sum, as with one
process; what belongs to a process (``process_*``: resident memory, CPU, fds; the registry's
size; GC pauses; event-loop lag; the log head it has) is there once per process: the writer's
without a label, each worker's with ``worker="N"``. ``streamgauge_worker_up{worker="N"}`` says
which workers answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger("streamgauge")
# Families summed over the processes (one server's subscribers, whichever process holds them).
SUMMED = frozenset(
    {
        "streamgauge_subscribers",
        "streamgauge_subscriber_queue_bytes",
        "streamgauge_delivery_seconds",
        "streamgauge_stream_closed",
    }
)
# Families kept per process (a worker's with a ``worker`` label).
PER_PROCESS = ("process_", "streamgauge_registry_", "streamgauge_gc_pause_seconds")
PER_PROCESS_NAMES = frozenset({"streamgauge_event_loop_lag_seconds", "streamgauge_log_head"})


class Peer(NamedTuple):
    """One worker process as the writer's ``/metrics`` sees it: its exposition, or None if it
    did not answer."""

    worker: str
    text: bytes | None
    restarts: int = 0


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ingest_rows = Counter(
            "streamgauge_ingest_observations", "Observations accepted and stored", registry=r
        )
        self.ingest_duplicates = Counter(
            "streamgauge_ingest_duplicates",
            "Re-sent observations acknowledged, not stored twice",
            registry=r,
        )
        self.ingest_batches = Counter(
            "streamgauge_ingest_batches", "Ingest batches committed", registry=r
        )
        self.ingest_rejected = Counter(
            "streamgauge_ingest_rejected_batches", "Ingest batches rejected", ["status"], registry=r
        )
        self.batch_seconds = Histogram(
            "streamgauge_ingest_batch_seconds",
            "Request-to-commit time of an ingest batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "streamgauge_delivery_seconds",
            "Commit-to-send time of live stream frames (per sent chunk; per fan-out round for"
            " sessions written to directly)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_closed = Counter(
            "streamgauge_stream_closed", "Streams closed by the server", ["reason"], registry=r
        )
        self.subscribers = Gauge("streamgauge_subscribers", "Open live subscriptions", registry=r)
        self.queue_bytes = Gauge(
            "streamgauge_subscriber_queue_bytes", "Bytes queued for all subscribers", registry=r
        )
        self.head = Gauge("streamgauge_log_head", "Last committed cursor", registry=r)
        self.index_lag = Gauge(
            "streamgauge_index_lag_rows",
            "Rows committed to the log but not yet in its (series, time) index (reads scan "
            "them as the unindexed tail; it grows while the indexer falls behind)",
            registry=r,
        )
        self.gc_pause = Histogram(
            "streamgauge_gc_pause_seconds",
            "Pauses of Python's full (generation 2) collections",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "streamgauge_event_loop_lag_seconds",
            "How late the event loop ran a timer due now (sampled every 50 ms): how long the "
            "loop was busy with other work, e.g. a fan-out round",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.outbound_attempts = Counter(
            "streamgauge_outbound_attempts",
            "Outbound delivery attempts (connectors, alert actions) by outcome: delivered, "
            "failed (will retry) or dead_lettered",
            ["outcome"],
            registry=r,
        )
        self.outbound_seconds = Histogram(
            "streamgauge_outbound_attempt_seconds",
            "Duration of outbound delivery attempts that got an HTTP response",
            buckets=_LATENCY_BUCKETS + (10.0, 30.0),
            registry=r,
        )
        self.mqtt_messages = Counter(
            "streamgauge_mqtt_messages",
            "MQTT messages taken from the broker by outcome: ingested (committed, then "
            "acknowledged) or rejected (acknowledged, published to PREFIX/{project}/errors), "
            "with the reason of a rejection (ok for ingested ones)",
            ["outcome", "reason"],
            registry=r,
        )
        self.mqtt_batches = Counter(
            "streamgauge_mqtt_batches", "Batches of MQTT messages ingested", registry=r
        )
        self.mqtt_connected = Gauge(
            "streamgauge_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        # Memory: the process (process_resident_memory_bytes, ..._virtual_memory_bytes, cpu,
        # open fds: prometheus_client's collector, Linux only) and the registry's size.
        ProcessCollector(registry=r)
        self.registry_series = Gauge(
            "streamgauge_registry_series", "Series held in the in-memory registry", registry=r
        )
        self.registry_devices = Gauge(
            "streamgauge_registry_devices", "Devices held in the in-memory registry", registry=r
        )
        self.registry_variables = Gauge(
            "streamgauge_registry_variables",
            "Variables held in the in-memory registry",
            registry=r,
        )
        self.registry_bytes = Gauge(
            "streamgauge_registry_bytes",
            "Estimated bytes of the in-memory registry (numpy columns exactly, records by "
            "sampling; refreshed at most every 10 s)",
            registry=r,
        )
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` hook: time full collections, warn about long ones."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self.gc_pause.observe(pause)
        if pause > 0.1:
            log.warning("a full garbage collection paused the process for %.0f ms", pause * 1000)

    def bind(
        self,
        subscribers: Callable[[], float],
        queue_bytes: Callable[[], float],
        head: Callable[[], float],
        index_lag: Callable[[], float],
    ) -> None:
        self.subscribers.set_function(subscribers)
        self.queue_bytes.set_function(queue_bytes)
        self.head.set_function(head)
        self.index_lag.set_function(index_lag)

    def bind_registry(self, size: Callable[[], Any]) -> None:
        """``size()`` gives the registry's ``series``, ``devices``, ``variables`` and
        ``bytes`` (``core.footprint.Cached.get``)."""
        self.registry_series.set_function(lambda: size().series)
        self.registry_devices.set_function(lambda: size().devices)
        self.registry_variables.set_function(lambda: size().variables)
        self.registry_bytes.set_function(lambda: size().bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # The writer process with fan-out workers sets this (``workers/supervisor.py``): the
    # workers' expositions, asked for now.
    peers: Callable[[], Awaitable[list[Peer]]] | None = None

    async def render_all(self) -> bytes:
        """This process's metrics, and every worker process's if it has any (``merge``)."""
        if self.peers is None:
            return self.render()
        return merge(self.registry.collect(), await self.peers())


def _per_process(name: str) -> bool:
    return name.startswith(PER_PROCESS) or name in PER_PROCESS_NAMES


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge(own: Iterable[Metric], peers: list[Peer]) -> bytes:
    """The exposition of one process's families (``own``) with its workers' (``peers``):
    ``SUMMED`` families add up sample by sample (same name and labels; ``_created`` stays
    this process's), per-process ones get each worker's samples with ``worker="N"``, the rest
    (ingest, MQTT, deliveries: the writer's work) are this process's alone."""
    families = {f.name: f for f in own}
    for peer in peers:
        if peer.text is None:
            continue
        for theirs in text_string_to_metric_families(peer.text.decode()):
            mine = families.get(theirs.name)
            if mine is None or mine.type != theirs.type:
                continue
            if theirs.name in SUMMED:
                at = {
                    (x.name, tuple(sorted(x.labels.items()))): i for i, x in enumerate(mine.samples)
                }
                for x in theirs.samples:
                    if x.name.endswith("_created"):
                        continue
                    i = at.get((x.name, tuple(sorted(x.labels.items()))))
                    if i is None:
                        mine.samples.append(Sample(x.name, dict(x.labels), x.value))
                    else:
                        old = mine.samples[i]
                        mine.samples[i] = old._replace(value=old.value + x.value)
            elif _per_process(theirs.name):
                for x in theirs.samples:
                    mine.samples.append(
                        Sample(x.name, {**x.labels, "worker": peer.worker}, x.value)
                    )
    up = GaugeMetricFamily(
        "streamgauge_worker_up",
        "1 if the fan-out worker process answered this scrape (serve --workers N)",
        labels=["worker"],
    )
    restarts = GaugeMetricFamily(
        "streamgauge_worker_restarts",
        "Times the writer restarted this fan-out worker (it exited)",
        labels=["worker"],
    )
    for peer in peers:
        up.add_metric([peer.worker], 0.0 if peer.text is None else 1.0)
        restarts.add_metric([peer.worker], float(peer.restarts))
    return generate_latest(_Families([*families.values(), up, restarts]))
