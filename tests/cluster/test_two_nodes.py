"""Two nodes, one cluster: two real ``streamgauge serve`` processes on loopback with the same
PostgreSQL store (a fresh database per test, dropped after), the same NATS bus and a fresh
cluster name (its NATS stream deleted after), the same admin token (the token-signing key is
derived from it) and different data folders (helpers: ``tests/cluster/nodes.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.nodes import (
    WAIT,
    Node,
    history,
    native,
    new_cluster,
    node_env,
    running,
    visible,
)
from tests.conftest import free_port, make_station, rows
from tests.pg import fresh_database


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    env = node_env()  # no STREAMGAUGE_TOKEN_KEY: derived from the shared admin token
    with fresh_database("sg_cluster") as url:
        a = Node("a", tmp_path / "a", free_port(), env)
        b = Node("b", tmp_path / "b", free_port(), env)
        with running([a, b], url, new_cluster()):
            yield a, b


def test_metadata_live_resume_duplicates_and_conflicts_across_nodes(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    with a.client() as ca:
        make_station(ca)
    took = visible(b, "/api/v1/projects/p1/devices/d1")
    print(f"device made on A visible on B after {took * 1000:.0f} ms")
    reader = native(b, 0)
    try:
        replies = []
        with a.client() as ca:
            for k in range(5):
                r = ca.post(
                    "/api/v1/projects/p1/observations",
                    json=rows(100, start_ms=1_700_000_000_000 + k * 100_000),
                )
                assert r.status_code == 200, r.text
                replies.append(r.json())
        last = replies[-1]["last_cursor"]
        reader.wait_for(last)
        # in cursor order, exactly once, everything A acknowledged
        assert reader.cursors == list(range(1, last + 1))
    finally:
        reader.close()

    # a cursor given by A resumes on B: the rest, nothing lost or doubled
    mid = replies[2]["last_cursor"]
    resumed = native(b, mid)
    try:
        resumed.wait_for(last)
        assert resumed.cursors == list(range(mid + 1, last + 1))
    finally:
        resumed.close()

    with b.client() as cb:
        # a batch A stored, re-sent to B: all duplicates
        again = cb.post(
            "/api/v1/projects/p1/observations", json=rows(100, start_ms=1_700_000_000_000)
        )
        assert again.status_code == 200, again.text
        assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 100)
        # a conflicting value on B for a row A stored: 409, nothing written
        bad = rows(3, start_ms=1_700_000_100_000)
        bad[1]["value"] = 39.5
        r = cb.post("/api/v1/projects/p1/observations", json=bad)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["details"][0]["index"] == 1
        # B's own ingest continues the one log
        r = cb.post("/api/v1/projects/p1/observations", json=rows(10, start_ms=1_710_000_000_000))
        assert r.status_code == 200, r.text
        assert r.json()["first_cursor"] == last + 1

    # and A's streams see B's rows: a project made on B streams on A
    with b.client() as cb:
        make_station(cb, project="p2")
    visible(a, "/api/v1/projects/p2/devices/d0")
    on_a = native(a, 0, "p2")
    try:
        with b.client() as cb:
            r = cb.post("/api/v1/projects/p2/observations", json=rows(20))
            assert r.status_code == 200, r.text
        on_a.wait_for(r.json()["last_cursor"])
        assert on_a.cursors == list(range(r.json()["first_cursor"], r.json()["last_cursor"] + 1))
    finally:
        on_a.close()


def test_kill_9_of_a_node_during_ingest_loses_nothing_it_acknowledged(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    with a.client() as ca:
        make_station(ca, devices=4)
    visible(b, "/api/v1/projects/p1/devices/d3")
    reader = native(b, 0)
    acked: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    def produce() -> None:
        with a.client(timeout=10) as c:
            for k in range(10_000):
                batch = rows(200, start_ms=1_600_000_000_000 + k * 200_000, devices=4)
                try:
                    r = c.post("/api/v1/projects/p1/observations", json=batch)
                except httpx.HTTPError:
                    return  # A died mid-request: this batch was not acknowledged
                assert r.status_code == 200, r.text
                acked.append((r.json(), batch))

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + WAIT
    while len(acked) < 20:
        assert producer.is_alive() or len(acked) >= 20, "the producer stopped"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.kill()
    producer.join(30)
    assert len(acked) >= 20
    last = max(reply["last_cursor"] for reply, _ in acked)
    try:
        reader.wait_for(last)  # B's live stream has every acknowledged row, once, in order
        got = reader.cursors
        assert got == sorted(set(got)) and got[0] == 1
        assert set(range(1, last + 1)) <= set(got)
    finally:
        reader.close()
    stored = history(b)  # and B's history too
    for reply, batch in acked:
        cursors = range(reply["first_cursor"], reply["last_cursor"] + 1)
        assert len(cursors) == len(batch)
        for cursor, row in zip(cursors, batch, strict=True):
            got_row = stored[cursor]
            assert (got_row["device"], got_row["variable"], got_row["value"]) == (
                row["device"],
                row["variable"],
                row["value"],
            )
            assert reader.rows[cursor]["value"] == row["value"]


def test_a_key_issued_on_one_node_works_on_the_other(nodes: tuple[Node, Node]) -> None:
    """A service account and its key made on A authenticate on B (the token key the nodes
    derive from their shared admin token; the key's hash is in the shared store)."""
    a, b = nodes
    with a.client() as ca:
        make_station(ca)
        r = ca.post("/api/v1/projects/p1/serviceaccounts", json={"id": "sa1", "role": "user"})
        assert r.status_code == 201, r.text
        r = ca.post("/api/v1/projects/p1/serviceaccounts/sa1/keys")
        assert r.status_code == 201, r.text
        key = r.json()
    visible(b, "/api/v1/projects/p1/serviceaccounts/sa1")
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(
            f"{b.base}/api/v1/projects/p1/devices", auth=(key["key_id"], key["secret"]), timeout=30
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text
    assert {d["id"] for d in r.json()["devices"]} >= {"d0", "d1"}
