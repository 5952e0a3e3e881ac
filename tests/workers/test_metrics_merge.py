"""``metrics.merge``: the writer's /metrics with its workers' (``serve --workers N``)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from streamgauge.auth.principals import FailureLimiter
from streamgauge.metrics import Metrics, Peer, merge


def parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def process(subscribers: int, closed: int, rows: int) -> Metrics:
    m = Metrics()
    m.bind(lambda: float(subscribers), lambda: 100.0, lambda: 42.0, lambda: 0.0)
    m.stream_closed.labels("slow_consumer").inc(closed)
    m.delivery_seconds.observe(0.002)
    m.ingest_rows.inc(rows)
    return m


def test_sums_what_adds_up_and_labels_what_is_per_process() -> None:
    writer = process(subscribers=2, closed=0, rows=1000)
    worker = process(subscribers=5, closed=3, rows=0)
    got = parsed(
        merge(
            writer.registry.collect(),
            [Peer("1", worker.render(), 2), Peer("2", None, 0)],
        )
    )
    assert got[("streamgauge_subscribers", ())] == 7
    assert got[("streamgauge_subscriber_queue_bytes", ())] == 200
    assert got[("streamgauge_stream_closed_total", (("reason", "slow_consumer"),))] == 3
    assert got[("streamgauge_delivery_seconds_count", ())] == 2
    assert got[("streamgauge_delivery_seconds_bucket", (("le", "0.0025"),))] == 2
    assert got[("streamgauge_ingest_observations_total", ())] == 1000  # the writer's alone
    assert got[("streamgauge_log_head", ())] == 42
    assert got[("streamgauge_log_head", (("worker", "1"),))] == 42
    assert got[("process_resident_memory_bytes", ())] > 0
    assert got[("process_resident_memory_bytes", (("worker", "1"),))] > 0
    assert ("process_resident_memory_bytes", (("worker", "2"),)) not in got
    assert got[("streamgauge_worker_up", (("worker", "1"),))] == 1
    assert got[("streamgauge_worker_up", (("worker", "2"),))] == 0
    assert got[("streamgauge_worker_restarts", (("worker", "1"),))] == 2


def test_without_workers_metrics_are_this_process_alone() -> None:
    m = process(subscribers=2, closed=0, rows=10)
    alone, merged = parsed(m.render()), parsed(merge(m.registry.collect(), []))
    assert alone.keys() == merged.keys()
    ours = [k for k in alone if k[0].startswith("streamgauge_")]  # process_* move on
    assert [alone[k] for k in ours] == [merged[k] for k in ours]


def test_failures_told_and_counted_across_limiters() -> None:
    now = [0.0]
    a = FailureLimiter(2, 60.0, clock=lambda: now[0])
    b = FailureLimiter(2, 60.0, clock=lambda: now[0])
    a.on_failed = b.count  # what the bus does between two processes
    b.on_failed = a.count
    key = ("addr", "127.0.0.1")
    a.failed(key)
    b.failed(key)
    assert a.retry_after(key) == 30 and b.retry_after(key) == 30
    now[0] = 30.0
    assert a.retry_after(key) is None and b.retry_after(key) is None
