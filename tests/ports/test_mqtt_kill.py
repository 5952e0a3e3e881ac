"""kill -9 of ``streamgauge serve --mqtt`` while a paho publisher sends QoS 1 messages loses
nothing and stores nothing twice: a real subprocess, the machine's Mosquitto, a restart on the
same data folder (the same persistent session). Half the messages are bare numbers timed on
arrival, whose redelivered copies must get their first arrival time (the arrival journal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

from tests.conftest import free_port, make_station
from tests.ports.conftest import paho_client, wait_for

TOKEN = "mqtt-kill-token"


def spawn(data: Path, port: int, prefix: str, broker: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STREAMGAUGE_ADMIN_TOKEN": TOKEN, "STREAMGAUGE_MQTT_TOPIC_PREFIX": prefix}
    log = data.parent / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamgauge", "serve", "--host", "127.0.0.1"]
            + ["--port", str(port), "--data", str(data), "--mqtt", broker],
            env=env,
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def test_kill_9_mid_stream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, broker: str, prefix: str
) -> None:
    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = spawn(data, port, prefix, broker)
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    n = 600
    t0 = 1_700_000_000_000
    publisher = paho_client()
    try:
        make_station(client, "p1")

        def publish() -> None:
            for i in range(n):
                if i % 2:  # with its own time
                    topic = f"{prefix}/p1/d0/air_temp"
                    body = orjson.dumps({"time": t0 + i * 1000, "value": float(i % 40)})
                else:  # a bare number, timed on arrival
                    topic = f"{prefix}/p1/d1/wind_speed"
                    body = str(float(i % 40)).encode()
                publisher.publish(topic, body, qos=1).wait_for_publish()
                time.sleep(0.002)

        sender = threading.Thread(target=publish)
        sender.start()

        def stored() -> int:
            r = client.get("/api/v1/projects/p1/observations", params={"limit": 100000})
            return len(r.json()["observations"])

        wait_for(lambda: stored() >= n // 4, "a quarter of the messages")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sender.join()  # the broker keeps what arrives meanwhile for the persistent session
        proc = spawn(data, port, prefix, broker)

        def everything() -> bool:
            r = client.get(
                "/api/v1/projects/p1/observations", params={"limit": 100000, "qc": "none"}
            )
            return len(r.json()["observations"]) >= n

        wait_for(everything, "every message", 120)
        time.sleep(1.0)  # anything still redelivered would show up as an extra row now
        r = client.get("/api/v1/projects/p1/observations", params={"limit": 100000, "qc": "none"})
        rows = r.json()["observations"]
        timed = [o for o in rows if o["device"] == "d0"]
        arrival = [o for o in rows if o["device"] == "d1"]
        assert len(timed) == n // 2
        assert sorted(o["value"] for o in timed) == sorted(float(i % 40) for i in range(1, n, 2))
        assert len(arrival) == n // 2, "a redelivered bare number was stored twice"
        assert len({o["time"] for o in timed}) == n // 2
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
