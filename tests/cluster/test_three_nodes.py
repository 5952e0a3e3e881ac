"""Three nodes, one cluster: three real ``streamgauge serve`` processes on loopback with the same
PostgreSQL store (a fresh database, dropped after), the same NATS bus and a fresh cluster name
(its stream and lease bucket deleted after).

* metadata made on A is served and streamed by B and C within a second;
* observations ingested on A reach matching subscribers on B and C in cursor order, exactly
  once, on the native NDJSON and SSE streams and the DT ``devices:stream`` (NDJSON and SSE);
* a cursor A gave out resumes on C on each of those, and a push-feed session opened on A,
  dropped abruptly, resumes on C with ``?cursor=N``;
* ``kill -9`` of the node holding the work lease: another node takes the lease within 10 s,
  and an alert whose condition is met after the kill fires exactly once to a loopback webhook
  receiver (as does the one before the kill: nothing lost, nothing doubled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from websockets.exceptions import ConnectionClosed

from tests.cluster.nodes import (
    Node,
    Reader,
    Receiver,
    eventually,
    holder,
    native,
    new_cluster,
    node_env,
    running,
    visible,
)
from tests.conftest import Server, free_port, make_station, rows
from tests.pg import fresh_database
from tests.test_feed import Feed, feed_token

T0 = 1_700_000_000_000


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[tuple[list[Node], str]]:
    cluster = new_cluster()
    env = node_env()
    with fresh_database("sg_cluster3") as url:
        nodes = [Node(n, tmp_path / n, free_port(), env) for n in ("a", "b", "c")]
        with running(nodes, url, cluster):
            yield nodes, cluster


def temperatures(k: int, n: int = 10) -> list[dict[str, Any]]:
    """``n`` rows of the thermometer ``th1`` (its variable is named like a DT event type, so
    they are DT events too), values unique across batches."""
    return [
        {
            "device": "th1",
            "variable": "temperature",
            "time": T0 + k * 100_000 + i * 1000,
            "value": float(k * 100 + i) / 10,
        }
        for i in range(n)
    ]


def test_metadata_live_and_resume_on_every_face_across_three_nodes(
    trio: tuple[list[Node], str],
) -> None:
    (a, b, c), _ = trio
    for n in (b, c):  # a first request pays for lazy set-up: not what is measured here
        with n.client() as cl:
            assert cl.get("/api/v1/projects").status_code == 200
    with a.client() as ca:
        make_station(ca)
        made = time.monotonic()
        r = ca.post(
            "/api/v1/projects/p1/devices",
            json=[
                {
                    "id": "th1",
                    "site": "s1",
                    "variables": [{"name": "temperature", "unit": "degC"}],
                }
            ],
        )
        assert r.status_code == 201, r.text
    # Metadata made on A: served by B and C within a second of A's reply.
    for n in (b, c):
        visible(n, "/api/v1/projects/p1/devices/th1")
        took = time.monotonic() - made
        print(f"device made on A served by {n.name} after {took * 1000:.0f} ms")
        assert took < 1.0

    live = {
        "b ndjson": native(b, 0),
        "c ndjson": native(c, 0),
        "b sse": native(b, 0, sse=True),
        "c sse": native(c, 0, sse=True),
    }
    dt_live = {
        "b dt": Reader(b, "/v2/projects/p1/devices:stream", kind="dt", params={"since": 0}),
        "c dt sse": Reader(
            c, "/v2/projects/p1/devices:stream", kind="sse", headers={"Last-Event-ID": "0"}
        ),
    }
    batches: list[list[dict[str, Any]]] = []
    replies: list[dict[str, Any]] = []
    try:
        with a.client() as ca:
            # The first batch names the thermometer made a moment ago on A: B and C stream it
            # within a second of A's reply.
            for k in range(5):
                batch = rows(100, start_ms=T0 + k * 100_000) + temperatures(k)
                r = ca.post("/api/v1/projects/p1/observations", json=batch)
                assert r.status_code == 200, r.text
                assert r.json()["accepted"] == len(batch)
                batches.append(batch)
                replies.append(r.json())
                if k == 0:
                    acked = time.monotonic()
                    for name in ("b ndjson", "c ndjson"):
                        live[name].wait_for(r.json()["last_cursor"])
                        print(f"first batch on {name} {(time.monotonic() - acked) * 1000:.0f} ms")
                    assert time.monotonic() - acked < 1.0
        last = replies[-1]["last_cursor"]
        for name, reader in live.items():
            reader.wait_for(last)
            # in cursor order, exactly once, everything A acknowledged
            assert reader.cursors == list(range(1, last + 1)), name
        by_cursor = {
            reply["first_cursor"] + i: row
            for reply, batch in zip(replies, batches, strict=True)
            for i, row in enumerate(batch)
        }
        for cursor, row in by_cursor.items():
            assert live["c ndjson"].rows[cursor]["value"] == row["value"]
        thermo = [cur for cur, row in by_cursor.items() if row["device"] == "th1"]
        dt_live["b dt"].wait_events(len(thermo))
        assert [e["data"]["temperature"]["value"] for e in dt_live["b dt"].events] == [
            by_cursor[cur]["value"] for cur in thermo
        ]
        dt_live["c dt sse"].wait_for(thermo[-1])
        assert dt_live["c dt sse"].cursors == thermo
    finally:
        for reader in [*live.values(), *dt_live.values()]:
            reader.close()

    # A cursor given by A resumes on C, on every face: the rest, nothing lost or doubled.
    mid = replies[2]["last_cursor"]
    rest = list(range(mid + 1, last + 1))
    thermo_rest = [cur for cur in thermo if cur > mid]
    resumed = {
        "ndjson": native(c, mid),
        "sse": native(c, mid, sse=True),
        "dt sse": Reader(
            c, "/v2/projects/p1/devices:stream", kind="sse", headers={"Last-Event-ID": str(mid)}
        ),
    }
    dt_resumed = Reader(c, "/v2/projects/p1/devices:stream", kind="dt", params={"since": mid})
    try:
        resumed["ndjson"].wait_for(last)
        resumed["sse"].wait_for(last)
        resumed["dt sse"].wait_for(thermo_rest[-1])
        assert resumed["ndjson"].cursors == rest
        assert resumed["sse"].cursors == rest
        assert resumed["dt sse"].cursors == thermo_rest
        dt_resumed.wait_events(len(thermo_rest))
        assert [e["data"]["temperature"]["value"] for e in dt_resumed.events] == [
            by_cursor[cur]["value"] for cur in thermo_rest
        ]
    finally:
        for reader in [*resumed.values(), dt_resumed]:
            reader.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A fresh database and cluster name for nodes a test starts itself."""
    with fresh_database("sg_cluster3") as url:
        yield url, new_cluster(), tmp_path


def test_a_feed_session_opened_on_one_node_resumes_on_another_with_cursor(
    parts: tuple[str, str, Path],
) -> None:
    """A push-feed session opened on A, dropped abruptly (no close frame), resumes on C with
    ``/feed/{token}/{session}?cursor=N``: every observation after N, once, in log order. The
    session and the token live in PostgreSQL. C starts after the token was made (the test
    below checks a token made on a running node)."""
    url, cluster, tmp = parts
    a, c = (Node(n, tmp / n, free_port(), node_env()) for n in ("a", "c"))
    with running([a], url, cluster):
        with a.client() as ca:
            make_station(ca)
            token = feed_token(ca)
        c.start(url, cluster)
        try:
            asyncio.run(_feed_resumes_elsewhere(a, c, token))
        finally:
            c.stop()


async def _feed_resumes_elsewhere(a: Node, c: Node, token: str) -> None:
    on_a = await Feed.open(cast(Server, SimpleNamespace(url=a.base)), token)
    replies = []
    with a.client() as ca:
        for k in range(4):
            r = ca.post("/api/v1/projects/p1/observations", json=rows(50, T0 + k * 100_000))
            assert r.status_code == 200, r.text
            replies.append(r.json())
    mid = replies[1]["last_cursor"]
    while not on_a.cursors or on_a.cursors[-1] < mid:
        await on_a.read()
    on_a.ws.transport.abort()  # the network drops: no close frame
    on_c = await Feed.open(
        cast(Server, SimpleNamespace(url=c.base)), token, f"cursor={mid}", session=on_a.session
    )
    assert on_c.auth["messages"] == ["Restarting from provided session id."]
    assert on_c.auth["session"] == on_a.session
    last = replies[-1]["last_cursor"]
    got = 0
    try:
        while not on_c.cursors or on_c.cursors[-1] < last:
            got += len(await on_c.read())
    except ConnectionClosed:
        pytest.fail(f"the resumed session closed: {on_c.close_code} {on_c.close_reason}")
    assert on_c.cursors[0] > mid and on_c.cursors[-1] == last
    assert got == last - mid  # every observation after the cursor, none twice
    await on_c.ws.close()


def test_a_feed_token_made_on_one_running_node_works_on_another(
    trio: tuple[list[Node], str],
) -> None:
    """Feed tokens are announced in the transaction that makes them: a token made on A
    authenticates on C, which was running already, within a second."""
    (a, _, c), _ = trio
    with a.client() as ca:
        make_station(ca)
        token = feed_token(ca)

    async def auth() -> list[str]:
        feed = await Feed.open(cast(Server, SimpleNamespace(url=c.base)), token)
        await feed.ws.close()
        messages: list[str] = feed.auth["messages"]
        return messages

    started = time.monotonic()
    while (messages := asyncio.run(auth())) != ["Starting new session."]:
        assert time.monotonic() - started < 1.0, messages
        time.sleep(0.02)


def test_kill_9_of_the_work_lease_holder_moves_alerts_and_deliveries(
    trio: tuple[list[Node], str],
) -> None:
    nodes, cluster = trio
    receiver = Receiver()
    try:
        eventually(lambda: holder(nodes, cluster) is not None, "a node holds the work lease")
        first = holder(nodes, cluster)
        assert first is not None
        other = next(n for n in nodes if n is not first)
        with first.client() as cf:
            make_station(cf)
            r = cf.post(
                "/api/v1/projects/p1/channels",
                json={
                    "id": "hot",
                    "triggers": [
                        {
                            "device": "d0",
                            "variable": "air_temp",
                            "operator": ">",
                            "value": 50,
                            "actions": [
                                {
                                    "method": "WEBHOOK",
                                    "webhook_url": receiver.url + "/hook",
                                    "message": "${value}",
                                }
                            ],
                        }
                    ],
                },
            )
            assert r.status_code == 201, r.text
        # (Channels made on one node reach the lease holder when the lease next moves: here it
        # is made on the holder, and the next holder loads it from the store.)

        def post(node: Node, t: int, value: float) -> None:
            with node.client() as cl:
                r = cl.post(
                    "/api/v1/projects/p1/observations",
                    json=[{"device": "d0", "variable": "air_temp", "time": t, "value": value}],
                )
                assert r.status_code == 200, r.text

        def delivered(node: Node, n: int) -> bool:
            with node.client() as cl:
                alerts = cl.get("/api/v1/projects/p1/channels/hot/alerts").json()["alerts"]
            return len(alerts) == n and all(
                (x["actions"][0]["outcome"] or {}).get("delivered") for x in alerts
            )

        # Before the kill: ingested on another node, judged and delivered by the holder.
        post(other, T0, 60.0)
        eventually(lambda: receiver.messages() == ["60.0"], "the first alert")
        eventually(lambda: delivered(first, 1), "the first alert's delivery recorded")
        post(other, T0 + 1000, 10.0)  # clears: the next breach fires again

        first.kill()
        killed = time.monotonic()
        post(other, T0 + 2000, 70.0)  # met after the kill, while nobody holds the lease

        eventually(lambda: holder(nodes, cluster) is not None, "another node takes the lease")
        took_lease = time.monotonic() - killed
        second = holder(nodes, cluster)
        assert second is not None and second is not first
        eventually(lambda: len(receiver.messages()) >= 2, "the alert after the kill")
        took_alert = time.monotonic() - killed
        print(
            f"kill -9 of {first.name}: {second.name} took the lease after {took_lease:.1f} s, "
            f"the alert met after the kill arrived after {took_alert:.1f} s"
        )
        assert took_lease < 10.0 and took_alert < 10.0
        eventually(lambda: delivered(second, 2), "the second alert's delivery recorded")
        assert receiver.messages() == ["60.0", "70.0"]  # each once, in order
        with second.client() as cl:
            alerts = cl.get("/api/v1/projects/p1/channels/hot/alerts").json()["alerts"]
        assert len(alerts) == 2
    finally:
        receiver.close()
