"""A node with ``bus`` set: its commits go through the cluster link and reach its own streams in
order; a bus that does not answer stops ``serve`` with a message naming it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import Server, free_port, make_station, rows, start_server

from .test_jetstream import NATS_URL

STORES = ["sqlite"]  # a test here reads meta_events from the SQLite file


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Server]:
    import asyncio

    from streamgauge.bus.jetstream import delete_cluster_stream

    cluster = f"t{uuid.uuid4().hex[:10]}"
    srv = start_server(tmp_path / "data", bus=NATS_URL, cluster=cluster)
    try:
        yield srv
    finally:
        srv.stop()
        asyncio.run(delete_cluster_stream(NATS_URL, cluster))


def test_commits_reach_the_nodes_streams_through_the_link(node: Server) -> None:
    with node.client() as c:
        make_station(c)
        r = c.post("/api/v1/projects/p1/observations", json=rows(10))
        assert r.status_code == 200, r.text
        got: list[int] = []
        with c.stream("GET", "/api/v1/projects/p1/stream?since=0") as s, node.client() as c2:
            r = c2.post(
                "/api/v1/projects/p1/observations", json=rows(6, start_ms=1_700_100_000_000)
            )
            assert r.status_code == 200, r.text
            for line in s.iter_lines():
                if not line:
                    continue
                obj = orjson.loads(line)
                if "cursor" in obj and "value" in obj:
                    got.append(obj["cursor"])
                if len(got) >= 16:
                    break
        assert got == list(range(1, 17))
    link = node.engine.cluster
    assert link is not None
    stats = link.channels["batch"].stats
    assert stats.local >= 2 and stats.publish_failures == 0


def test_serve_exits_when_the_bus_does_not_answer(tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamgauge.cli",
            "serve",
            "--port",
            str(free_port()),
            "--data",
            str(tmp_path / "d"),
            "--bus",
            dead,
            "--cluster",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert "cannot reach the bus (NATS) at " + dead in p.stdout + p.stderr


def test_resume_cursor_beyond_the_log_is_still_refused(node: Server) -> None:
    with node.client() as c:
        make_station(c)
        r = c.get("/api/v1/projects/p1/stream", params={"since": "999"})
        assert r.status_code == 400, r.text
        assert "not in this log" in r.json()["error"]["message"]


def test_metadata_events_go_out_on_the_meta_channel(node: Server) -> None:
    """Each metadata write's events are sequenced and published as one run, numbered as the
    store numbers them; what the store holds reads back as the same runs."""
    import sqlite3
    import time

    from streamgauge.core.cluster import decode_meta, encode_meta, meta_runs
    from streamgauge.domain import events as ev

    with node.client() as c:
        make_station(c)
    link = node.engine.cluster
    assert link is not None
    meta = link.channels["meta"]
    for _ in range(200):
        if meta.stats.published >= 3:
            break
        time.sleep(0.05)
    assert meta.stats.local >= 3 and meta.stats.publish_failures == 0
    with sqlite3.connect(node.data / "streamgauge.db") as db:
        rows = [
            (seq, ev.decode(p)) for seq, p in db.execute("SELECT seq, payload FROM meta_events")
        ]
    assert meta.seq is not None and meta.seq.delivered == rows[-1][0]
    runs = meta_runs(rows)
    assert runs[0][0] == rows[0][0] and runs[-1][1] == rows[-1][0]
    for _, _, run in runs:
        back = decode_meta(encode_meta(run))
        assert back.events == run.events and (back.first, back.last) == (run.first, run.last)


def test_the_only_node_takes_the_work_lease(node: Server) -> None:
    """Alert rules, deliveries and retention run on the node holding the cluster's work lease;
    a node alone takes it at once."""
    import time

    work = node.engine._work
    assert work is not None
    deadline = time.monotonic() + 10
    engine = node.engine
    while not (work.held and engine.alerting._running and engine.deliveries._started):
        assert time.monotonic() < deadline, "the lease was not taken, or its work not started"
        time.sleep(0.05)
