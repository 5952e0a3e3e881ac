"""Work that must happen once follows changes made on any node: two real nodes, A holding the
work lease (it started first), B not. An alert channel or a DT data connector created, paused
or deleted on B takes effect on A at once (an observation ingested right after is judged by
it), each alert and push is delivered once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import disruptive as dt
import httpx
import psycopg
import pytest

from tests.bus.test_jetstream import NATS_URL
from tests.cluster.nodes import TOKEN, WAIT, Node
from tests.conftest import free_port
from tests.pg import fresh_database
from tests.tapis_helpers import Receiver, eventually
from tests.test_dt_sdk import TokenAuth

QUIET = 1.5  # seconds of watching for a second delivery that must not come


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """Two nodes that may deliver to loopback; A starts first, so A holds the work lease."""
    from streamgauge.bus.jetstream import delete_cluster_stream

    cluster = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STREAMGAUGE_ADMIN_TOKEN": TOKEN,
        "STREAMGAUGE_ALLOW_PRIVATE_TARGETS": "true",
        "STREAMGAUGE_ALERT_FLUSH_SECONDS": "0",
    }
    with fresh_database("sg_work") as url:
        env["STREAMGAUGE_STORE"] = url  # as --store (the tests read the database too)
        a = Node("a", tmp_path / "a", free_port(), env)
        b = Node("b", tmp_path / "b", free_port(), env)
        try:
            a.start(url, cluster)
            eventually(lambda: holds(a), WAIT)
            b.start(url, cluster)
            assert not holds(b)
            yield a, b
        finally:
            for n in (a, b):
                if n.proc is not None and n.proc.poll() is None:
                    n.proc.terminate()
                    try:
                        n.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        n.kill()
            asyncio.run(delete_cluster_stream(NATS_URL, cluster))


def holds(node: Node) -> bool:
    """Whether ``node`` holds the work lease (its metric)."""
    with node.client() as c:
        text = c.get("/metrics").text
    return "streamgauge_cluster_work_lease 1.0" in text


def station(c: httpx.Client) -> None:
    assert c.post("/api/v1/projects", json={"id": "lab"}).status_code == 201
    r = c.post(
        "/api/v1/projects/lab/devices",
        json=[{"id": "ws1", "variables": [{"name": "air_temp", "unit": "degC"}]}],
    )
    assert r.status_code == 201, r.text


def temp(c: httpx.Client, value: float) -> None:
    """One air temperature of ws1, now (a new time each call)."""
    temp.t = max(getattr(temp, "t", 0) + 1000, int(time.time() * 1000))  # type: ignore[attr-defined]
    r = c.post(
        "/api/v1/projects/lab/observations",
        json=[{"device": "ws1", "variable": "air_temp", "time": temp.t, "value": value}],  # type: ignore[attr-defined]
    )
    assert r.status_code == 200, r.text


def hot_values(receiver: Receiver) -> list[float]:
    return [body["value"] for _, body in receiver.got]


def test_a_channel_made_paused_and_deleted_on_the_node_without_the_lease(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    receiver = Receiver().start()
    try:
        with a.client() as ca, b.client() as cb:
            station(ca)
            eventually(lambda: cb.get("/api/v1/projects/lab/devices/ws1").status_code == 200)
            r = cb.post(
                "/api/v1/projects/lab/channels",
                json={
                    "id": "hot",
                    "triggers": [
                        {
                            "device": "ws1",
                            "variable": "air_temp",
                            "operator": ">",
                            "value": 40,
                            "actions": [{"method": "HTTP", "http_url": receiver.url + "/h"}],
                        }
                    ],
                },
            )
            assert r.status_code == 201, r.text
            # Right after, on either node: the holder judges it by the new channel.
            temp(cb, 45.0)
            receiver.wait(1)
            temp(ca, 20.0)  # resolves
            temp(ca, 46.0)  # fires again
            receiver.wait(2)
            time.sleep(QUIET)
            assert hot_values(receiver) == [45.0, 46.0]  # each alert once
            # The channel is readable on A too, and its alerts are the holder's.
            assert ca.get("/api/v1/projects/lab/channels/hot").status_code == 200
            # Paused on B: no more alerts.
            r = cb.patch("/api/v1/projects/lab/channels/hot", json={"status": "INACTIVE"})
            assert r.status_code == 200, r.text
            eventually(
                lambda: ca.get("/api/v1/projects/lab/channels/hot").json()["status"] == "INACTIVE"
            )
            temp(cb, 20.0)
            temp(cb, 47.0)
            # Active again on B: fires for the next breach (it starts over, OK).
            r = cb.patch("/api/v1/projects/lab/channels/hot", json={"status": "ACTIVE"})
            assert r.status_code == 200, r.text
            temp(cb, 48.0)
            receiver.wait(3)
            # Deleted on B: gone on A, and nothing fires.
            assert cb.delete("/api/v1/projects/lab/channels/hot").status_code == 204
            eventually(lambda: ca.get("/api/v1/projects/lab/channels/hot").status_code == 404)
            temp(cb, 20.0)
            temp(ca, 49.0)
            time.sleep(QUIET)
            assert hot_values(receiver) == [45.0, 46.0, 48.0]
    finally:
        receiver.stop()


class Pushes(Receiver):
    """DT pushes as they arrive (the body's event)."""

    def events(self) -> list[dict[str, Any]]:
        return [body["event"] for _, body in self.got]


def test_a_data_connector_made_and_deleted_on_the_node_without_the_lease(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    receiver = Pushes().start()
    saved = dt.base_url, dt.emulator_base_url
    auth = TokenAuth(f"Bearer {TOKEN}")
    try:
        with a.client() as ca:
            assert ca.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        dt.base_url = dt.emulator_base_url = a.base + "/v2"
        device = dt.Emulator.create_device("p1", "temperature", auth=auth)
        dt.base_url = dt.emulator_base_url = b.base + "/v2"
        with b.client() as cb:
            path = f"/v2/projects/p1/devices/{device.device_id}"
            eventually(lambda: cb.get(path).status_code == 200)
        con = dt.DataConnector.create_data_connector(
            "p1", dt.DataConnector.HttpPushConfig(url=receiver.url + "/push"), auth=auth
        )
        # Ingested right after, on A: A (the holder) pushes it, once.
        dt.base_url = dt.emulator_base_url = a.base + "/v2"
        dt.Emulator.publish_event(
            device.device_id, "p1", dt.events.Temperature(celsius=21), auth=auth
        )
        receiver.wait(1)
        # Changed on B (its URL): the next push goes to the new one.
        with b.client() as cb:
            r = cb.patch(
                f"/v2/projects/p1/dataconnectors/{con.data_connector_id}",
                json={"httpConfig": {"url": receiver.url + "/moved"}},
            )
            assert r.status_code == 200, r.text

        def moved() -> bool:
            got = dt.DataConnector.get_data_connector(con.data_connector_id, "p1", auth=auth)
            return bool(got.config.url.endswith("/moved"))

        eventually(moved)
        dt.Emulator.publish_event(
            device.device_id, "p1", dt.events.Temperature(celsius=22), auth=auth
        )
        receiver.wait(2)
        # Deleted on B: A stops.
        dt.base_url = dt.emulator_base_url = b.base + "/v2"
        dt.DataConnector.delete_data_connector(con.data_connector_id, "p1", auth=auth)
        dt.base_url = dt.emulator_base_url = a.base + "/v2"
        eventually(lambda: dt.DataConnector.list_data_connectors("p1", auth=auth) == [])
        dt.Emulator.publish_event(
            device.device_id, "p1", dt.events.Temperature(celsius=23), auth=auth
        )
        time.sleep(QUIET)
        assert [p for p, _ in receiver.got] == ["/push", "/moved"]
        assert [e["data"]["temperature"]["value"] for e in receiver.events()] == [21.0, 22.0]
    finally:
        receiver.stop()
        dt.base_url, dt.emulator_base_url = saved


def alert_cursor(node: Node) -> int:
    with psycopg.connect(node.env["STREAMGAUGE_STORE"], autocommit=True) as conn:
        row = conn.execute("SELECT value FROM state WHERE key = 'alert_cursor'").fetchone()
    assert row is not None
    return int(row[0])


def test_a_channel_made_on_the_node_without_the_lease_leaves_the_rules_progress_alone(
    pair: tuple[Node, Node],
) -> None:
    """Regression: a channel made on a node whose rules do not run wrote that node's progress
    (none: cursor 0) with it, moving the holder's stored position back to the start of the
    log, which the next holder would have judged again (alerts fired twice)."""
    a, b = pair
    doc = {"triggers": [{"device": "ws1", "variable": "air_temp", "operator": ">", "value": 90}]}
    with a.client() as ca, b.client() as cb:
        station(ca)
        for v in (1.0, 2.0, 3.0):
            temp(ca, v)
        eventually(lambda: cb.get("/api/v1/projects/lab/devices/ws1").status_code == 200)
        # Made on A (the holder): its progress is written with it.
        assert ca.post("/api/v1/projects/lab/channels", json={"id": "x", **doc}).status_code == 201
        before = alert_cursor(a)
        assert before >= 3
        assert cb.post("/api/v1/projects/lab/channels", json={"id": "y", **doc}).status_code == 201
        assert cb.patch("/api/v1/projects/lab/channels/y", json={"name": "Y"}).status_code == 200
        assert cb.delete("/api/v1/projects/lab/channels/y").status_code == 204
        assert alert_cursor(a) >= before
