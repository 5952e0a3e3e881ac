"""NATS restarted under a running cluster: two real nodes on a private ``nats-server`` (JetStream,
a store folder of its own, a free loopback port) and a fresh PostgreSQL database.

The NATS server is stopped (SIGTERM, or SIGKILL; in one case its store folder is lost too, so
the cluster's stream is gone when it comes back), observations are ingested on A while it is
down (PostgreSQL holds the log, so ingest goes on), and NATS is started again on the same port:
both nodes reconnect, B fills the gap from PostgreSQL (at once after reconnecting, not at its
next periodic look at the store, which these nodes do only every minute), and every live stream
delivers every acknowledged observation exactly once, in cursor order; what is ingested after
the restart travels on the bus again."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.nodes import (
    NatsServer,
    Node,
    eventually,
    holder,
    native,
    new_cluster,
    node_env,
    running,
    visible,
)
from tests.conftest import free_port, make_station, rows
from tests.pg import fresh_database

T0 = 1_700_000_000_000
# The nodes look at the store's head only every minute: what reaches a stream sooner came on
# the bus, or from the look a node takes at once when its bus reconnects.
HEAD_CHECK = "60"


@pytest.fixture
def bus_pair(tmp_path: Path) -> Iterator[tuple[NatsServer, Node, Node]]:
    nats = NatsServer(tmp_path / "nats-store", tmp_path / "nats.log")
    nats.start()
    env = node_env(STREAMGAUGE_CLUSTER_HEAD_CHECK_SECONDS=HEAD_CHECK)
    try:
        with fresh_database("sg_busfault") as url:
            a = Node("a", tmp_path / "a", free_port(), env, bus=nats.url)
            b = Node("b", tmp_path / "b", free_port(), env, bus=nats.url)
            with running([a, b], url, new_cluster()):
                yield nats, a, b
    finally:
        nats.stop(signal.SIGKILL)


def ingest(node: Node, k: int, n: int = 100) -> dict[str, Any]:
    with node.client(timeout=10) as c:
        started = time.monotonic()
        r = c.post("/api/v1/projects/p1/observations", json=rows(n, start_ms=T0 + k * 100_000))
        took = time.monotonic() - started
    assert r.status_code == 200, r.text
    # Not stuck on the bus (its outage must not hold ingest up): far under a minute, with room
    # for a loaded machine (5 s failed under load once).
    assert took < 20, f"ingest took {took:.1f} s"
    reply: dict[str, Any] = r.json()
    return reply


OUTAGES = [("sigterm", False), ("sigkill", False), ("sigkill", True)]


def test_nats_restarted_nodes_reconnect_and_fill_the_gap(
    bus_pair: tuple[NatsServer, Node, Node], tmp_path: Path
) -> None:
    """Three outages in a row on one pair of nodes: NATS stopped with SIGTERM, with SIGKILL,
    and with SIGKILL losing its store folder. Then a node started while NATS is down exits,
    saying so, while the running ones keep ingesting."""
    nats, a, b = bus_pair
    with a.client() as ca:
        make_station(ca)
    visible(b, "/api/v1/projects/p1/devices/d1")
    on_b, on_a = native(b, 0), native(a, 0)
    k = 0

    def batch(node: Node) -> int:
        nonlocal k
        k += 1
        last: int = ingest(node, k)["last_cursor"]
        return last

    try:
        last = batch(a)
        on_b.wait_for(last)  # the bus works
        for how, lose_store in OUTAGES:
            what = f"NATS {how}" + (" losing its store" if lose_store else "")
            nats.stop(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            if lose_store:
                shutil.rmtree(nats.store_dir)
            before = last
            down = [batch(a), batch(a), batch(a), batch(b)]  # the log is in PostgreSQL
            last = down[-1]
            assert last == before + 400  # one log, no gap
            nats.start()  # the same port
            # Both nodes reconnect and fill the gap from PostgreSQL at once (their periodic
            # look at the store is a minute away).
            took = eventually(
                lambda last=last: on_b.cursors[-1:] >= [last] and on_a.cursors[-1:] >= [last],
                f"{what}: the rows ingested while it was down, on both nodes",
            )
            # The bus carries new batches again, both ways: each reaches the other node long
            # before its next look at the store.
            carried = []
            for src, dst in ((a, on_b), (b, on_a)):
                sent = time.monotonic()
                last = batch(src)
                dst.wait_for(last)
                carried.append(time.monotonic() - sent)
            print(
                f"{what}: gap filled {took:.1f} s after its restart; then A to B "
                f"{carried[0] * 1000:.0f} ms, B to A {carried[1] * 1000:.0f} ms"
            )
            # Carried by the bus, not found by the store's look a minute away (``HEAD_CHECK``);
            # the margin is a loaded machine's (3 s failed under load once).
            assert max(carried) < 20.0
            for reader in (on_b, on_a):
                # (B's stream of B's own last batch may still be on its way: only A's was waited
                # for above; once seen failing with the stream 96 rows short)
                reader.wait_for(last)
                assert reader.cursors == list(range(1, last + 1)), what  # once, in order
            # The work lease is held again (its bucket made again if the server lost it).
            eventually(lambda: holder([a, b], a.cluster) is not None, f"{what}: the lease")
    finally:
        on_b.close()
        on_a.close()
    with b.client() as cb:  # the stored log is the same one
        r = cb.get("/api/v1/projects/p1/observations", params={"limit": 100_000})
        assert [o["cursor"] for o in r.json()["observations"]] == list(range(1, last + 1))

    # A node that cannot reach its bus at start says so and exits non-zero; the running nodes
    # keep ingesting (the store holds the log).
    nats.stop(signal.SIGKILL)
    late = Node("late", tmp_path / "late", free_port(), a.env, bus=nats.url)
    said = late.fails_to_start(a.store, a.cluster)
    assert f"cannot reach the bus (NATS) at {nats.url}" in said, said
    assert "cannot reach the store" not in said
    batch(a)
