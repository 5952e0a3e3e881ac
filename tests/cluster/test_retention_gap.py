"""Retention in the cluster: the node holding the work lease removes expired rows; a resume on
any node from a cursor older than what is kept gets the 410 with ``earliest`` (never silent
loss), and ``on_gap=earliest`` continues from the earliest kept observation on every node."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.bus.test_jetstream import NATS_URL
from tests.cluster.nodes import TOKEN, WAIT, Node
from tests.conftest import free_port, make_station
from tests.pg import fresh_database

DAY_MS = 86_400_000


@pytest.fixture
def fast_retention_nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    from streamgauge.bus.jetstream import delete_cluster_stream

    cluster = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STREAMGAUGE_ADMIN_TOKEN": TOKEN,
        "STREAMGAUGE_RETENTION_INTERVAL_SECONDS": "0.5",
    }
    with fresh_database("sg_cluster") as url:
        nodes = (
            Node("a", tmp_path / "a", free_port(), env),
            Node("b", tmp_path / "b", free_port(), env),
        )
        try:
            for n in nodes:
                n.start(url, cluster)
            yield nodes
        finally:
            for n in nodes:
                if n.proc is not None and n.proc.poll() is None:
                    n.proc.terminate()
                    try:
                        n.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        n.kill()
            asyncio.run(delete_cluster_stream(NATS_URL, cluster))


def first_line(node: Node, params: dict[str, str | int]) -> tuple[int, dict[str, object]]:
    """The status of a native stream opened on ``node`` and its first line (the error body of
    a refusal, or the first object streamed)."""
    with (
        node.client() as c,
        c.stream("GET", "/api/v1/projects/p1/stream", params=params) as s,
    ):
        if s.status_code != 200:
            return s.status_code, orjson.loads(s.read())
        for line in s.iter_lines():
            if line:
                return 200, orjson.loads(line)
    raise AssertionError("the stream ended without a line")


def test_a_resume_older_than_retention_is_refused_on_every_node(
    fast_retention_nodes: tuple[Node, Node],
) -> None:
    a, b = fast_retention_nodes
    now = int(time.time() * 1000)
    with a.client() as ca:
        make_station(ca)
        old = [
            {"device": "d0", "variable": "air_temp", "time": now - 5 * DAY_MS + i, "value": 1.0}
            for i in range(5)
        ]
        fresh = [{"device": "d0", "variable": "air_temp", "time": now - 1000, "value": 2.0}]
        for body in (old, fresh):
            r = ca.post("/api/v1/projects/p1/observations", json=body)
            assert r.status_code == 200, r.text
        kept = r.json()["last_cursor"]
        r = ca.patch("/api/v1/projects/p1", json={"retention_days": 1})
        assert r.status_code == 200, r.text
    # whichever node holds the lease removes the five old rows; both must then refuse since=0
    for node in (a, b):
        deadline = time.monotonic() + WAIT
        while True:
            status, body = first_line(node, {"since": 0})
            if status == 410:
                break
            assert status == 200, body
            assert time.monotonic() < deadline, f"{node.name} never answered 410"
            time.sleep(0.1)
        error = body["error"]
        assert isinstance(error, dict) and error["earliest"] == kept, body
        status, line = first_line(node, {"since": 0, "on_gap": "earliest"})
        assert status == 200, line
        gap = line["gap"]
        assert isinstance(gap, dict) and gap["earliest"] == kept and gap["since"] == 0, line
