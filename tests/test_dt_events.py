"""The DT event codec without I/O: every event type stores and renders back into a payload the
real SDK parses, timestamps and ids have DT's shapes, and every line is safe for the SDK's
``iter_lines`` + ``json.loads`` framing (U+2028, non-ASCII)."""

from __future__ import annotations

import json
import re
import tracemalloc
from typing import Any

import disruptive as dt
import numpy as np
import pytest
from disruptive.events.events import Event

from streamgauge.core.units import METRIC
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import BadRequest, Invalid
from streamgauge.domain.events import ProjectPut
from streamgauge.domain.model import Project
from streamgauge.faces.dt.events import (
    EVENT_TYPES,
    TEMPERATURE_EVENT,
    dumps_ascii,
    encode_rows,
    event_id,
    event_obj,
    format_ts,
    parse_event,
    parse_ts,
    ping_event,
)
from streamgauge.faces.dt.http import stream_error_line
from streamgauge.faces.dt.stream import _ndjson_row, parse_duration, ping_interval
from tests.core.test_filters import Builder

STORES = ["sqlite", "postgresql"]  # every test here runs on both storage backends

T0 = 1_716_979_243_970
TS = "2024-05-29T10:40:43.970000Z"

SAMPLES: dict[str, dict[str, Any]] = {
    "touch": {},
    "temperature": {"value": 24.9, "samples": [{"value": 24.9, "sampleTime": TS}]},
    "objectPresent": {"state": "PRESENT"},
    "humidity": {"temperature": 21.5, "relativeHumidity": 40.0},
    "objectPresentCount": {"total": 12},
    "touchCount": {"total": 7},
    "waterPresent": {"state": "NOT_PRESENT"},
    "networkStatus": {
        "signalStrength": 80,
        "rssi": -70,
        "cloudConnectors": [{"id": "ccon1", "signalStrength": 80, "rssi": -70}],
        "transmissionMode": "HIGH_POWER_BOOST_MODE",
    },
    "batteryStatus": {"percentage": 90},
    "labelsChanged": {"added": {"a": "1"}, "modified": {"b": "2"}, "removed": ["c"]},
    "connectionStatus": {"connection": "ETHERNET", "available": ["ETHERNET", "CELLULAR"]},
    "ethernetStatus": {"macAddress": "f0:b5:b7:00:0a:08", "ipAddress": "10.0.0.1", "errors": []},
    "cellularStatus": {"signalStrength": 55, "errors": []},
    "co2": {"ppm": 450},
    "pressure": {"pascal": 101325.0},
    "motion": {"state": "MOTION_DETECTED"},
    "deskOccupancy": {"state": "OCCUPIED", "remarks": ["INCORRECT_DETECTION"]},
    "contact": {"state": "CLOSED"},
    "probeWireStatus": {"state": "FOUR_WIRE"},
}


def _events(
    event_type: str, data: dict[str, Any], previous_ms: int | None = None
) -> list[dict[str, Any]]:
    """The events the rows of one published event render as (a device with temperature event
    rows renders its ``temperature`` rows, the samples, as nothing)."""
    rows = parse_event(event_type, {**data, "updateTime": TS}, 0, previous_ms)
    claimed = any(r.variable == TEMPERATURE_EVENT for r in rows)
    out = []
    for cursor, row in enumerate(rows, 1):
        if claimed and row.variable == "temperature":
            continue
        obj = event_obj("p1", "emu" + "0" * 20, row.variable, row.value, row.time, cursor)
        if obj is not None:
            out.append(obj)
    return out


def test_the_table_has_every_sdk_event_type() -> None:
    assert set(EVENT_TYPES) == set(dt.events.EVENT_TYPES)
    assert set(SAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_event_type_round_trips_through_the_sdk(event_type: str) -> None:
    events = _events(event_type, SAMPLES[event_type])
    assert len(events) == 1  # companion rows (humidity's numbers) render as nothing
    obj = events[0]
    line = _ndjson_row(1, json.dumps(obj).encode())
    payload = json.loads(line.decode())
    ev = Event(payload["result"]["event"])  # the SDK's own parser: KeyError if a key is missing
    assert ev.event_type == event_type
    assert ev.device_id == "emu" + "0" * 20 and ev.project_id == "p1"
    assert ev.data is not None
    assert obj["timestamp"] == TS
    if event_type != "labelsChanged":
        assert obj["data"][event_type]["updateTime"] == TS
    for key, value in SAMPLES[event_type].items():
        inner = obj["data"] if event_type == "labelsChanged" else obj["data"][event_type]
        assert inner[key] == value, key


def test_required_keys_are_always_present() -> None:
    temp = _events("temperature", {"value": 1.5})[0]["data"]["temperature"]
    assert temp["isBackfilled"] is False and temp["samples"] == [{"value": 1.5, "sampleTime": TS}]
    desk = _events("deskOccupancy", {"state": "NOT_OCCUPIED"})[0]["data"]["deskOccupancy"]
    assert desk["remarks"] == []
    hum = _events("humidity", {"temperature": 20, "relativeHumidity": 30})[0]["data"]["humidity"]
    assert hum["samples"][0]["temperature"] == 20.0 and hum["isBackfilled"] is False


def test_numeric_quantities_are_ordinary_rows() -> None:
    rows = parse_event("humidity", {"temperature": 20, "relativeHumidity": 30}, T0)
    assert {(r.variable, r.name, r.value) for r in rows if type(r.value) is float} == {
        ("humidity.relativeHumidity", "humidity", 30.0),
        ("humidity.temperature", "temperature", 20.0),
    }
    assert parse_event("co2", {"ppm": 450}, T0)[0].value == 450.0
    samples = [{"value": 1.0, "sampleTime": TS}, {"value": 2.0, "sampleTime": format_ts(T0 + 9)}]
    rows = parse_event("temperature", {"value": 2.0, "samples": samples}, T0)
    numbers = [(r.variable, r.name, r.time, r.value) for r in rows if type(r.value) is float]
    assert numbers == [
        ("temperature", "temperature", T0, 1.0),
        ("temperature", "temperature", T0 + 9, 2.0),
    ]
    assert [r.variable for r in rows if type(r.value) is not float] == [TEMPERATURE_EVENT]


def test_an_event_with_several_samples_is_one_event() -> None:
    """Regression: a temperature or humidity event with N samples came back as N events."""
    later = format_ts(T0 + 60_000)
    samples = [{"value": 20.5, "sampleTime": TS}, {"value": 21.0, "sampleTime": later}]
    (ev,) = _events("temperature", {"value": 21.0, "samples": samples})
    assert ev["data"]["temperature"] == {
        "value": 21.0,
        "samples": samples,
        "isBackfilled": False,
        "updateTime": TS,
    }
    parsed = Event(ev)
    assert [s.celsius for s in parsed.data.samples] == [20.5, 21.0]
    hum = [
        {"temperature": 20.0, "relativeHumidity": 40.0, "sampleTime": TS},
        {"temperature": 21.0, "relativeHumidity": 41.0, "sampleTime": later},
    ]
    (ev,) = _events("humidity", {"temperature": 21.0, "relativeHumidity": 41.0, "samples": hum})
    assert ev["data"]["humidity"]["samples"] == hum
    assert (ev["data"]["humidity"]["temperature"], ev["data"]["humidity"]["relativeHumidity"]) == (
        21.0,
        41.0,
    )
    # Without a top-level value, the newest sample is the event's value.
    (ev,) = _events("temperature", {"samples": list(reversed(samples))})
    assert ev["data"]["temperature"]["value"] == 21.0


def test_an_event_older_than_the_latest_of_its_type_is_backfilled() -> None:
    for event_type in ("temperature", "humidity"):
        data = SAMPLES[event_type]
        (ev,) = _events(event_type, data, previous_ms=T0 + 1)
        assert ev["data"][event_type]["isBackfilled"] is True
        (ev,) = _events(event_type, data, previous_ms=T0)  # not older: the same time
        assert ev["data"][event_type]["isBackfilled"] is False
        (ev,) = _events(event_type, {**data, "isBackfilled": True})  # as the publisher said
        assert ev["data"][event_type]["isBackfilled"] is True
    with pytest.raises(Invalid) as err:
        parse_event("temperature", {"value": 1, "isBackfilled": "yes"}, T0)
    assert err.value.details[0]["field"] == "temperature.isBackfilled"


def test_the_sdk_humidity_sample_key_celsius_is_accepted() -> None:
    rows = parse_event(
        "humidity",
        {"samples": [{"celsius": 19.0, "relativeHumidity": 50.0, "sampleTime": TS}]},
        0,
    )
    assert rows[0].variable == "humidity" and "19.0" in str(rows[0].value)
    assert ("humidity.temperature", T0, 19.0) in [(r.variable, r.time, r.value) for r in rows]


@pytest.mark.parametrize(
    ("event_type", "data", "field"),
    [
        ("nope", {}, "eventType"),
        ("temperature", {"value": "hot"}, "temperature.value"),
        ("temperature", {"value": float("nan")}, "temperature.value"),
        ("temperature", {"value": True}, "temperature.value"),
        ("objectPresent", {"state": "MAYBE"}, "objectPresent.state"),
        ("touch", {"updateTime": "yesterday"}, "touch.updateTime"),
        ("touch", {"updateTime": "2024-05-29T10:40:43"}, "touch.updateTime"),
        ("labelsChanged", {"added": {"a": 1}}, "labelsChanged.added"),
        ("networkStatus", {"signalStrength": 1, "rssi": 1, "cloudConnectors": 3}, None),
        ("humidity", {"temperature": 1}, "humidity.relativeHumidity"),
        ("temperature", [], "temperature"),
    ],
)
def test_bad_events_name_the_field(event_type: str, data: Any, field: str | None) -> None:
    with pytest.raises(Invalid) as err:
        parse_event(event_type, data, 0)
    if field is not None:
        assert err.value.details[0]["field"] == field


def test_timestamps_have_six_fraction_digits_and_the_sdk_accepts_them() -> None:
    assert format_ts(T0) == TS
    assert format_ts(0) == "1970-01-01T00:00:00.000000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", format_ts(T0 + 1))
    assert dt.transforms.validate_iso8601_format(TS)
    assert parse_ts("2024-05-29T10:40:43.970415999Z", "t") == T0 + 0  # nanoseconds cut
    assert parse_ts("2024-05-29T12:40:43.97+02:00", "t") == T0


def test_event_ids_are_twenty_xid_characters_and_stable() -> None:
    a, b = event_id(T0, 1), event_id(T0, 2)
    assert re.fullmatch(r"[0-9a-v]{20}", a) and a != b and a == event_id(T0, 1)
    ping = ping_event("p1", T0)
    assert ping["data"] is None and ping["targetName"] == "projects/p1"
    assert re.fullmatch(r"[0-9a-v]{20}", ping["eventId"])


HOSTILE = ["tëst", "line\u2028sep", "para\u2029", "nel\x85", "vt\x0bff\x0c", "fs\x1c\x1d\x1e", "😀"]


def test_lines_survive_str_splitlines_with_hostile_labels() -> None:
    """Regression: a label holding U+2028 must not split the SDK's NDJSON line."""
    for text in HOSTILE:
        obj = _events("labelsChanged", {"added": {text: text}, "modified": {}, "removed": [text]})[
            0
        ]
        line = _ndjson_row(1, dumps_ascii(obj))
        assert line.isascii() and line.endswith(b"\n") and b"\n" not in line[:-1]
        decoded = line.decode("utf-8")
        parts = [p for p in decoded.splitlines() if p]
        assert len(parts) == 1
        ev = Event(json.loads(parts[0])["result"]["event"])
        assert ev.data.added == {text: text} and ev.data.removed == [text]


def test_stream_error_lines_have_the_nested_shape_and_never_200_or_429() -> None:
    for status in (400, 401, 404, 200, 429, 503):
        obj = json.loads(stream_error_line(status, "nope ü\u2028"))
        assert set(obj) == {"error"} and obj["error"]["message"] == "nope ü\u2028"
        assert obj["error"]["code"] not in (200, 429) and obj["error"]["code"] >= 100
        assert obj["error"]["details"][0]["help"].startswith("https://")


def test_ping_interval_is_a_go_duration_from_one_second_up_to_ten() -> None:
    assert parse_duration("10s") == 10 and parse_duration("1m30s") == 90
    assert parse_duration("1500ms") == 1.5
    assert ping_interval(None) == 10 and ping_interval("1s") == 1 and ping_interval("1h") == 10
    for bad in ("", "10", "s", "10x", "-1s", "500ms"):
        with pytest.raises(BadRequest):
            ping_interval(bad)


def test_encoded_rows_hold_their_length_not_orjsons_buffer() -> None:
    """A batch keeps its rows encoded as DT events for as long as it is fanned out: each at
    its length, not in orjson's buffer of at least 4 KiB (``core.batch.kept_json``)."""
    b = Builder()
    b.reg.apply(ProjectPut(1, Project(id="p1", name="P", created_at="2026-01-01T00:00:00Z")))
    dev = b.device(1, "dev1", "temperature", {})
    pk = b.series(dev, b.variable(dev, "temperature"))
    n = 500
    batch = Batch(
        1,
        np.arange(1, n + 1, dtype=np.int64),
        np.full(n, pk, np.int64),
        T0 + 1000 * np.arange(n, dtype=np.int64),
        [20.0 + k / 10 for k in range(n)],
        np.zeros(n, np.int64),
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rows = encode_rows(batch, b.reg, METRIC)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(rows) == n and all(rows)
    first = json.loads(rows[0])
    assert first["eventType"] == "temperature"
    assert first["data"]["temperature"]["value"] == 20.0
    assert held < n * 1024  # about 400 bytes a row; over 4 KiB in orjson's buffers
