"""``streamgauge serve --workers 2``: the state that is the server's, not one process's.

``/metrics`` (the writer's) covers the worker too: subscribers and delivery latencies summed,
resident memory and the registry's size per process (``worker="1"``); ``/healthz`` says the
worker's state; and the failed-login limit is one limit however a client's attempts spread
over the processes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, make_station
from tests.workers.test_serve_workers import HEADER, WAIT, Reader, Served, ingest, open_on

LIMIT = 4  # failed logins per address (STREAMGAUGE_AUTH_FAILURE_LIMIT)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("STREAMGAUGE_AUTH_FAILURE_LIMIT", str(LIMIT))
    monkeypatch.setenv("STREAMGAUGE_AUTH_FAILURE_WINDOW_SECONDS", "600")
    s = Served(tmp_path / "data", free_port())
    s.start(workers=2)
    try:
        with s.client() as c:
            make_station(c)
        open_on(s, "1", None).close()  # the worker is up and serving
        yield s
    finally:
        s.stop()


def samples(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    with served.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers[HEADER] == "0"  # the writer answers it
    found = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def wait_until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_metrics_cover_the_worker_process(served: Served) -> None:
    on_worker = [open_on(served, "1", None) for _ in range(3)]
    on_writer = [open_on(served, "0", None) for _ in range(2)]
    # The streams open_on did not keep end at their next line: give them one.
    ingest(served, 0)
    wait_until(  # both processes' streams, summed
        lambda: samples(served)[("streamgauge_subscribers", ())] == 5,
        f"subscribers: {samples(served)[('streamgauge_subscribers', ())]}",
    )
    got = samples(served)
    assert got[("streamgauge_worker_up", (("worker", "1"),))] == 1
    assert got[("streamgauge_worker_restarts", (("worker", "1"),))] == 0
    # Per process: the writer's without a label, the worker's with worker="1".
    for name in ("process_resident_memory_bytes", "streamgauge_registry_series"):
        assert got[(name, ())] > 0, name
        assert got[(name, (("worker", "1"),))] > 0, name
    assert got[("streamgauge_registry_bytes", (("worker", "1"),))] > 0
    # Deliveries on the worker count in the server's delivery latency histogram.
    for r in on_writer:
        r.close()
    ingest(served, 1)
    wait_until(
        lambda: samples(served)[("streamgauge_subscribers", ())] == 3, "writer streams closed"
    )
    before = samples(served)[("streamgauge_delivery_seconds_count", ())]
    first, last, _ = ingest(served, 2)
    for r in on_worker:
        r.wait_for(last - first + 1 + 200)
    wait_until(
        lambda: samples(served)[("streamgauge_delivery_seconds_count", ())] > before,
        "the worker's deliveries are not in /metrics",
    )
    head = samples(served)[("streamgauge_log_head", (("worker", "1"),))]
    assert head == last  # the worker's own head: it has followed the writer's log
    for r in on_worker:
        r.close()


def test_healthz_says_the_workers_state(served: Served) -> None:
    readers = [open_on(served, "1", None) for _ in range(2)]
    ingest(served, 0)  # the streams open_on did not keep end at their next line

    def health() -> dict[str, object]:
        with served.client() as c:
            r = c.get("/healthz")
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    def worker() -> dict[str, object]:
        listed = health()["workers"]
        assert isinstance(listed, list) and len(listed) == 1
        item: dict[str, object] = listed[0]
        return item

    wait_until(
        lambda: worker().get("subscribers") == 2 and worker().get("head") == health()["head"],
        f"healthz: {health()}",
    )
    body = health()
    assert body["status"] == "ok" and body["processes"] == 2 and body["up"] == 1
    item = worker()
    assert item["worker"] == 1 and item["state"] == "up"
    assert item["pid"] in served.worker_pids()
    assert isinstance(item["resident_memory_bytes"], int) and item["resident_memory_bytes"] > 0
    for r in readers:
        r.close()


def test_the_failed_login_limit_counts_over_every_process(served: Served) -> None:
    """``LIMIT`` failed logins from one address, wherever they land, and every process answers
    429 from then on (each process alone would still allow ``LIMIT`` of its own)."""
    secret = base64.b64encode(b"knotakey:wrong").decode()
    bad = {"Authorization": f"Basic {secret}"}
    seen: list[tuple[str, int]] = []
    url = f"{served.base}/api/v1/projects/p1/stream"
    for _ in range(LIMIT):
        with httpx.Client(timeout=30) as c:  # a new connection each: the kernel spreads them
            r = c.get(url, headers=bad)
        seen.append((r.headers[HEADER], r.status_code))
    assert [status for _, status in seen] == [401] * LIMIT, seen
    time.sleep(0.3)  # the failures reach the other process (a frame over a socket pair)
    limited: set[str] = set()
    deadline = time.monotonic() + WAIT
    while limited != {"0", "1"}:
        assert time.monotonic() < deadline, (seen, limited)
        with httpx.Client(timeout=30) as c:
            r = c.get(url, headers=bad)
        seen.append((r.headers[HEADER], r.status_code))
        assert r.status_code == 429, seen
        assert int(r.headers["Retry-After"]) >= 1
        limited.add(r.headers[HEADER])
    # The admin's bearer token is not a key login: never limited.
    reader = Reader(served, None)
    assert reader.error is None
    reader.close()


def test_the_server_accepts_once_its_worker_is_ready(tmp_path: Path) -> None:
    """A server's first clients are spread over both processes: the writer accepts only once
    the worker follows its log (and binds the port right after)."""
    s = Served(tmp_path / "data", free_port())
    s.start(workers=2)  # returns at the first 200 from /healthz
    try:
        with s.client() as c:
            body = c.get("/healthz").json()
        assert body["up"] == 1, body
        with s.client() as c:
            make_station(c)
        landed = set()
        deadline = time.monotonic() + WAIT
        while landed != {"0", "1"}:  # the kernel spreads streams over both at once
            assert time.monotonic() < deadline, landed
            r = Reader(s, None)
            landed.add(str(r.worker))
            r.close()
    finally:
        s.stop()
