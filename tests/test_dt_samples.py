"""DT events with several samples, through the unmodified ``disruptive`` SDK: an event published
with N samples comes back as ONE event with its samples on every path (history, the stream's
catch-up, ``reported``), each sample is an ordinary observation on the native face, and an event
older than the device's latest of its type is backfilled."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import disruptive as dt
import orjson

from tests.conftest import Server
from tests.test_dt_sdk import TokenAuth, emulated, sdk  # noqa: F401 - the fixture

MINUTE = 60_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def test_an_event_with_samples_is_one_event_everywhere(server: Server, sdk: TokenAuth) -> None:  # noqa: F811
    d = emulated(sdk, "temperature")
    base = (int(time.time() * 1000) - 10 * MINUTE) // 1000 * 1000
    samples = [
        dt.events.TemperatureSample(celsius=20.0 + i, timestamp=iso(base + i * MINUTE))
        for i in range(3)
    ]
    event = dt.events.Temperature(celsius=22.0, samples=samples, timestamp=iso(base + 2 * MINUTE))
    dt.Emulator.publish_event(d.device_id, "p1", event, auth=sdk)

    (got,) = dt.EventHistory.list_events(d.device_id, "p1", auth=sdk)
    assert got.event_type == "temperature" and got.data.celsius == 22.0
    assert [s.celsius for s in got.data.samples] == [20.0, 21.0, 22.0]
    assert got.data.is_backfilled is False
    reported = dt.Device.get_device(d.device_id, "p1", auth=sdk).reported.temperature
    assert len(reported.samples) == 3 and reported.celsius == 22.0

    with server.client() as c:
        # Each sample is an ordinary observation: filterable, on every face.
        obs = c.get(
            "/api/v1/projects/p1/observations",
            params={"device": d.device_id, "variable": "temperature"},
        ).json()["observations"]
        assert [(o["time"], o["value"]) for o in obs] == [
            (iso(base + i * MINUTE).replace(".000", ""), 20.0 + i) for i in range(3)
        ]
        # The stream from the start of the log: one event, then a ping (no sample on its own).
        with c.stream(
            "GET",
            "/v2/projects/p1/devices:stream",
            params={"since": 0, "ping_interval": "1s"},
        ) as r:
            lines = r.iter_lines()
            first = orjson.loads(next(lines))["result"]["event"]
            second = orjson.loads(next(lines))["result"]["event"]
    assert first["eventType"] == "temperature"
    assert [s["value"] for s in first["data"]["temperature"]["samples"]] == [20.0, 21.0, 22.0]
    assert second["eventType"] == "ping"

    # Delivered late from the sensor's buffer: older than the latest temperature event.
    late = dt.events.Temperature(celsius=18.0, timestamp=iso(base - MINUTE))
    dt.Emulator.publish_event(d.device_id, "p1", late, auth=sdk)
    history = dt.EventHistory.list_events(d.device_id, "p1", auth=sdk)
    assert [(e.data.celsius, e.data.is_backfilled) for e in history] == [
        (18.0, True),
        (22.0, False),
    ]
    after = dt.Device.get_device(d.device_id, "p1", auth=sdk).reported.temperature
    assert after.celsius == 22.0  # the newest stays reported
