"""Prometheus metrics of one engine (its own registry: no global state)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger("streamgauge")
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
    ) -> None:
        self.subscribers.set_function(subscribers)
        self.queue_bytes.set_function(queue_bytes)
        self.head.set_function(head)

    def bind_registry(self, size: Callable[[], Any]) -> None:
        """``size()`` gives the registry's ``series``, ``devices``, ``variables`` and
        ``bytes`` (``core.footprint.Cached.get``)."""
        self.registry_series.set_function(lambda: size().series)
        self.registry_devices.set_function(lambda: size().devices)
        self.registry_variables.set_function(lambda: size().variables)
        self.registry_bytes.set_function(lambda: size().bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
