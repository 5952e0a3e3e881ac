"""The MQTT bridge (ports/mqtt.py) against the machine's Mosquitto with paho-mqtt publishers:
every topic form is ingested; bad messages are acknowledged, counted, reported on the errors
topic and never block the session; a batch whose commit fails is not acknowledged and the
broker sends it again to the next process of the same session; a shared subscription ingests
each message once across two servers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt

from streamgauge.domain.errors import Unavailable
from tests.conftest import Server, make_station, start_server
from tests.ports.conftest import paho_client, wait_for

T0 = 1_700_000_000_000


def count(client: httpx.Client, project: str = "p1") -> int:
    r = client.get(f"/api/v1/projects/{project}/observations", params={"limit": 100000})
    assert r.status_code == 200, r.text
    return len(r.json()["observations"])


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if (
            line.startswith(name + " ")
            or line.startswith(name + "{")
            and line.split(" ")[0] == name
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def serve(data: Path, broker: str, prefix: str, **kw: Any) -> Server:
    return start_server(data, mqtt=broker, mqtt_topic_prefix=prefix, **kw)


def test_every_topic_form_is_ingested(
    tmp_path: Path, broker: str, prefix: str, publisher: mqtt.Client
) -> None:
    srv = serve(tmp_path / "data", broker, prefix)
    try:
        with srv.client() as c:
            make_station(c, "p1")
            infos = [
                publisher.publish(f"{prefix}/p1/d0/air_temp", b"21.5", qos=1),
                publisher.publish(
                    f"{prefix}/p1/d0/wind_speed",
                    orjson.dumps({"time": "2023-11-14T22:13:20Z", "value": 3.5}),
                    qos=1,
                ),
                publisher.publish(
                    f"{prefix}/p1/observations",
                    orjson.dumps(
                        [
                            {
                                "device": "d1",
                                "variable": "air_temp",
                                "time": T0 + i,
                                "value": i % 40,
                            }
                            for i in range(500)
                        ]
                    ),
                    qos=1,
                ),
                publisher.publish(
                    f"{prefix}/p1/observations",
                    b"\n".join(
                        orjson.dumps(
                            {"device": "d1", "variable": "wind_speed", "time": T0 + i, "value": 1}
                        )
                        for i in range(10)
                    ),
                    qos=1,
                ),
            ]
            for info in infos:
                info.wait_for_publish()
            wait_for(lambda: count(c) == 512, "512 observations")
            r = c.get(
                "/api/v1/projects/p1/observations",
                params={"device": "d0", "variable": "wind_speed"},
            )
            assert r.json()["observations"][0]["value"] == 3.5
            assert r.json()["observations"][0]["time"] == "2023-11-14T22:13:20Z"
            text = c.get("/metrics").text
            assert 'streamgauge_mqtt_messages_total{outcome="ingested",reason="ok"} 4.0' in text
            assert "streamgauge_mqtt_connected 1.0" in text
    finally:
        srv.stop()


def test_bad_messages_are_acknowledged_counted_and_reported(
    tmp_path: Path, broker: str, prefix: str, publisher: mqtt.Client
) -> None:
    reports: list[dict[str, Any]] = []
    got = threading.Event()
    watcher = paho_client()
    watcher.on_message = lambda cl, u, m: (reports.append(json.loads(m.payload)), got.set())
    watcher.subscribe(f"{prefix}/+/errors", qos=1)
    srv = serve(tmp_path / "data", broker, prefix, mqtt_batch_messages=1)
    try:
        with srv.client() as c:
            make_station(c, "p1")
            bad = [
                (f"{prefix}/p1/d0/air_temp", b"not json", "not_json"),
                (f"{prefix}/p1/nope/air_temp", b"1", "unknown_device"),
                (f"{prefix}/p1/d0/nope", b"1", "unknown_variable"),
                (f"{prefix}/p1/d0/air_temp", b"true", "bad_value"),
                (f"{prefix}/p1/d0/air_temp", b'{"value": 1, "time": "soon"}', "bad_time"),
                (f"{prefix}/ghost/d0/air_temp", b"1", "unknown_project"),
                (f"{prefix}/p1/observations", b'[{"device": "d0"}]', "bad_rows"),
            ]
            for topic, payload, _ in bad:
                publisher.publish(topic, payload, qos=1).wait_for_publish()
            # More than the broker's in-flight window of good messages after them: had a bad
            # message not been acknowledged, the session would stall before these.
            for i in range(40):
                body = orjson.dumps({"time": T0 + i * 1000, "value": 10.0})
                publisher.publish(f"{prefix}/p1/d0/air_temp", body, qos=1).wait_for_publish()
            wait_for(lambda: count(c) == 40, "the good messages")
            wait_for(lambda: len(reports) == len(bad), "the error reports")
            assert [r["reason"] for r in reports] == [reason for *_, reason in bad]
            assert [r["topic"] for r in reports] == [topic for topic, *_ in bad]
            assert all(r["message"] and "received" in r for r in reports)
            text = c.get("/metrics").text
            for *_, reason in bad:
                line = (
                    f'streamgauge_mqtt_messages_total{{outcome="rejected",reason="{reason}"}} 1.0'
                )
                assert line in text
            # A conflicting value for a stored time is rejected too.
            body = orjson.dumps({"time": T0, "value": 99.0})
            publisher.publish(f"{prefix}/p1/d0/air_temp", body, qos=1).wait_for_publish()
            wait_for(lambda: len(reports) == len(bad) + 1, "the conflict report")
            assert reports[-1]["reason"] == "conflict"
            assert count(c) == 40
    finally:
        srv.stop()
        watcher.loop_stop()
        watcher.disconnect()


def test_a_batch_not_committed_is_not_acknowledged(
    tmp_path: Path, broker: str, prefix: str, publisher: mqtt.Client
) -> None:
    """The commit fails (the engine is unavailable): no PUBACK, so the broker sends the
    message again to the next process of the session, which stores it."""
    data = tmp_path / "data"
    srv = serve(data, broker, prefix)
    failed = threading.Event()
    engine = srv.engine

    async def unavailable(*args: Any, **kw: Any) -> Any:
        failed.set()
        raise Unavailable("storage is closed")

    try:
        with srv.client() as c:
            make_station(c, "p1")
            engine.ingest_rows = unavailable
            body = orjson.dumps({"time": T0, "value": 12.5})
            publisher.publish(f"{prefix}/p1/d0/air_temp", body, qos=1).wait_for_publish()
            assert failed.wait(60)
            assert count(c) == 0
    finally:
        srv.stop()
    srv = serve(data, broker, prefix)  # the same data folder: the same client id and session
    try:
        with srv.client() as c:
            wait_for(lambda: count(c) == 1, "the redelivered message")
            r = c.get("/api/v1/projects/p1/observations")
            assert r.json()["observations"][0]["value"] == 12.5
    finally:
        srv.stop()


def test_shared_subscription_ingests_each_message_once(
    tmp_path: Path, broker: str, prefix: str, publisher: mqtt.Client
) -> None:
    group = prefix.replace("-", "")
    servers = [
        serve(tmp_path / f"node{i}", broker, prefix, mqtt_shared_group=group) for i in range(2)
    ]
    try:
        clients = [s.client() for s in servers]
        for c in clients:
            make_station(c, "p1")
        n = 200
        for i in range(n):
            body = orjson.dumps({"time": T0 + i * 1000, "value": float(i % 30)})
            publisher.publish(f"{prefix}/p1/d{i % 2}/air_temp", body, qos=1)
        publisher.publish(f"{prefix}/p1/d0/wind_speed", b"1", qos=1).wait_for_publish()
        wait_for(lambda: sum(count(c) for c in clients) == n + 1, "every message once")
        times: list[tuple[str, str]] = []
        for c in clients:
            r = c.get("/api/v1/projects/p1/observations", params={"limit": 100000})
            times += [(o["device"], o["time"]) for o in r.json()["observations"]]
        assert len(set(times)) == len(times) == n + 1
        assert all(count(c) > 0 for c in clients)  # the broker shared them out
        for c in clients:
            c.close()
    finally:
        for s in servers:
            s.stop()
