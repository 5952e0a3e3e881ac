"""streamgauge benchmark: the ingest ports (MQTT, InfluxDB line protocol) against native NDJSON.

    .venv/bin/python -m bench ports [--rounds 3] [--messages 20000]

One streamgauge server (subprocess, loopback, ``--mqtt`` to the machine's Mosquitto on
127.0.0.1:1883) and a project of 100 devices. Each round measures, on fresh times:

(a) MQTT, one observation a message: a paho-mqtt publisher sends ``--messages`` QoS 1
    messages ``{"time", "value"}``; from the first publish until the server has ingested the
    last (``streamgauge_mqtt_messages_total``): messages/s.
(b) MQTT, 500-row arrays: ``--messages / 50`` messages of 500 native rows: messages/s, obs/s.
(c) Line protocol: the same number of observations as (b) POSTed to /api/v2/write, 5,000
    lines (one field each) a request, one client: points/s.
(d) The yardstick: the same observations as native NDJSON POSTs of 5,000 rows: obs/s.

Prints the median and the spread (min-max) of the rounds and the core count. The machine
is shared: say so with the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .common import machine_speed
from .harness import HOST, TOKEN, StreamgaugeServer, log

BROKER = ("127.0.0.1", 1883)
DEVICES = 100
BATCH = 5000
T0 = 1_600_000_000_000
WINDOW = 500  # messages published ahead of what the server has ingested


def _metric(base: str, pattern: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    found = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(found.group(1)) if found else 0.0


def _wait(check: Callable[[], bool], what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _setup(base: str) -> None:
    h = {"Authorization": f"Bearer {TOKEN}"}
    httpx.post(f"{base}/api/v1/projects", json={"id": "bench"}, headers=h, timeout=60)
    body = [
        {"id": f"d{i}", "variables": [{"name": "air_temp"}, {"name": "wind_speed"}]}
        for i in range(DEVICES)
    ]
    r = httpx.post(f"{base}/api/v1/projects/bench/devices", json=body, headers=h, timeout=60)
    r.raise_for_status()


def _rows(start: int, n: int) -> list[dict[str, Any]]:
    """``n`` observations after time ``start`` (ms), spread over the devices."""
    return [
        {
            "device": f"d{i % DEVICES}",
            "variable": "air_temp",
            "time": start + (i // DEVICES) * 1000,
            "value": float(i % 40),
        }
        for i in range(n)
    ]


def _mqtt_round(
    base: str, client: mqtt.Client, prefix: str, items: list[tuple[str, bytes]]
) -> float:
    """Publish ``items`` at most ``WINDOW`` ahead of what the server has ingested: Mosquitto
    drops QoS 1 messages for a subscriber that has more than ``max_queued_messages`` (1,000 by
    default) waiting, so an unpaced publisher measures the broker's drops, not streamgauge."""
    pattern = r'streamgauge_mqtt_messages_total\{outcome="ingested",reason="ok"\}'
    before = _metric(base, pattern)
    started = time.perf_counter()
    for k in range(0, len(items), WINDOW):
        infos = [client.publish(topic, body, qos=1) for topic, body in items[k : k + WINDOW]]
        for info in infos:
            info.wait_for_publish()
        target = before + k + len(infos) - WINDOW // 2

        def caught_up(t: float = target) -> bool:
            return _metric(base, pattern) >= t

        _wait(caught_up, "the MQTT messages")
    _wait(lambda: _metric(base, pattern) >= before + len(items), "the MQTT messages")
    return time.perf_counter() - started


def _post_round(base: str, path: str, bodies: list[bytes], headers: dict[str, str]) -> float:
    with httpx.Client(base_url=base, headers=headers, timeout=600) as c:
        started = time.perf_counter()
        for body in bodies:
            r = c.post(path, content=body)
            if r.status_code >= 300:
                raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20_000, help="one-observation messages")
    ap.add_argument("--durability", default="normal", choices=["full", "normal"])
    args = ap.parse_args(argv)
    prefix = "sgbench-" + uuid.uuid4().hex[:8]
    env = {"STREAMGAUGE_MQTT": f"mqtt://{BROKER[0]}:{BROKER[1]}"}
    env["STREAMGAUGE_MQTT_TOPIC_PREFIX"] = prefix
    results: dict[str, list[float]] = {"single": [], "array": [], "array_obs": [], "line": []}
    results["ndjson"] = []
    with StreamgaugeServer(args.durability, env) as srv:
        base = f"http://{HOST}:{srv.port}"
        _setup(base)
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect(*BROKER)
        client.loop_start()
        start = T0
        arrays = max(1, args.messages // 50)
        for r in range(args.rounds):
            single = [
                (
                    f"{prefix}/bench/d{i % DEVICES}/air_temp",
                    orjson.dumps({"time": start + (i // DEVICES) * 1000, "value": float(i % 40)}),
                )
                for i in range(args.messages)
            ]
            start += (args.messages // DEVICES + 1) * 1000
            secs = _mqtt_round(base, client, prefix, single)
            results["single"].append(len(single) / secs)
            obs = arrays * 500
            rows = _rows(start, obs)
            start += (obs // DEVICES + 1) * 1000
            items = [
                (f"{prefix}/bench/observations", orjson.dumps(rows[k : k + 500]))
                for k in range(0, obs, 500)
            ]
            secs = _mqtt_round(base, client, prefix, items)
            results["array"].append(len(items) / secs)
            results["array_obs"].append(obs / secs)
            rows = _rows(start, obs)
            start += (obs // DEVICES + 1) * 1000
            lines = [
                f"m,device={x['device']} air_temp={x['value']} {x['time']}".encode() for x in rows
            ]
            bodies = [b"\n".join(lines[k : k + BATCH]) for k in range(0, obs, BATCH)]
            headers = {"Authorization": f"Token {TOKEN}"}
            path = "/api/v2/write?bucket=bench&org=o&precision=ms"
            results["line"].append(obs / _post_round(base, path, bodies, headers))
            rows = _rows(start, obs)
            start += (obs // DEVICES + 1) * 1000
            nd = [orjson.dumps(x) for x in rows]
            bodies = [b"\n".join(nd[k : k + BATCH]) for k in range(0, obs, BATCH)]
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
            path = "/api/v1/projects/bench/observations"
            results["ndjson"].append(obs / _post_round(base, path, bodies, headers))
            log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items()))
        client.loop_stop()
        client.disconnect()

    def show(name: str, values: list[float], unit: str) -> None:
        med = statistics.median(values)
        print(f"  {name:<44} {med:>10,.0f} {unit}  (spread {min(values):,.0f}-{max(values):,.0f})")

    print(
        f"\nports benchmark: {args.rounds} rounds, durability={args.durability}, "
        f"{os.cpu_count()} cores, {machine_speed()}"
    )
    show(f"MQTT, 1 obs/message ({args.messages} msgs)", results["single"], "msg/s")
    show(f"MQTT, 500-row arrays ({arrays} msgs)", results["array"], "msg/s")
    show("  the same, observations", results["array_obs"], "obs/s")
    show(f"line protocol /api/v2/write ({BATCH} lines/req)", results["line"], "points/s")
    show(f"yardstick: native NDJSON ({BATCH} rows/req)", results["ndjson"], "obs/s")


if __name__ == "__main__":
    main()
