"""MQTT topics and payloads to rows (ports/mqtt_codec.py), and the rejection log: pure calls."""

from __future__ import annotations

import orjson

from streamgauge.ports import mqtt_codec as codec
from streamgauge.ports.mqtt import RejectLog, parse_url

P = "streamgauge"
T = 1_700_000_000_000


def test_subscriptions_and_shared_group() -> None:
    assert codec.subscriptions(P) == ["streamgauge/+/+/+", "streamgauge/+/observations"]
    assert codec.subscriptions("a/b", "g") == ["$share/g/a/b/+/+/+", "$share/g/a/b/+/observations"]
    assert codec.errors_topic(P, "p1") == "streamgauge/p1/errors"


def test_split() -> None:
    assert codec.split("streamgauge/p/d/v", P) == ("p", "d", "v")
    assert codec.split("streamgauge/p/observations", P) == ("p", None, None)
    assert codec.split("streamgauge/p/errors", P) is None
    assert codec.split("other/p/d/v", P) is None
    assert codec.split("streamgauge/p//v", P) is None


def test_bare_number_is_timed_on_arrival() -> None:
    got = codec.decode("streamgauge/p/d/air_temp", b"21.5", prefix=P, arrival_ms=T)
    assert isinstance(got, codec.Decoded) and got.arrival and got.project == "p"
    (row,) = got.rows
    assert (row.device, row.variable, row.time, row.value) == ("d", "air_temp", T, 21.5)
    got = codec.decode("streamgauge/p/d/v", b"3", prefix=P, arrival_ms=T)
    assert isinstance(got, codec.Decoded) and got.rows[0].value == 3.0


def test_object_with_time_value_and_set() -> None:
    body = b'{"time": "2023-11-14T22:13:20Z", "value": 1.5, "set": 2}'
    got = codec.decode("streamgauge/p/d/v", body, prefix=P, arrival_ms=T)
    assert isinstance(got, codec.Decoded) and not got.arrival
    assert got.rows[0].set == 2 and got.rows[0].value == 1.5
    got = codec.decode("streamgauge/p/d/v", b'{"value": "text"}', prefix=P, arrival_ms=T)
    assert isinstance(got, codec.Decoded) and got.arrival and got.rows[0].time == T


def test_rows_array_and_ndjson() -> None:
    rows = [{"device": "d", "variable": "v", "time": T + i, "value": i} for i in range(3)]
    got = codec.decode("streamgauge/p/observations", orjson.dumps(rows), prefix=P, arrival_ms=T)
    assert isinstance(got, codec.Decoded) and len(got.rows) == 3
    nd = b"\n".join(orjson.dumps(r) for r in rows)
    got = codec.decode("streamgauge/p/observations", nd, prefix=P, arrival_ms=T)
    assert isinstance(got, codec.Decoded) and [r.time for r in got.rows] == [T, T + 1, T + 2]


def reason(topic: str, payload: bytes) -> str:
    got = codec.decode(topic, payload, prefix=P, arrival_ms=T)
    assert isinstance(got, codec.Rejected), got
    assert got.message
    return got.reason


def test_rejections_name_their_reason() -> None:
    one = "streamgauge/p/d/v"
    assert reason(one, b"not json") == codec.NOT_JSON
    assert reason(one, b"\xff") == codec.NOT_JSON
    assert reason(one, b"true") == codec.BAD_VALUE
    assert reason(one, b'"text"') == codec.BAD_VALUE
    assert reason(one, b"[1]") == codec.BAD_VALUE
    assert reason(one, b'{"value": [1]}') == codec.BAD_VALUE
    assert reason(one, b'{"value": 1, "extra": 2}') == codec.BAD_VALUE
    assert reason(one, b'{"value": 1, "time": "yesterday"}') == codec.BAD_TIME
    assert reason(one, b"1e999") in (codec.BAD_VALUE, codec.NOT_JSON)
    rows = "streamgauge/p/observations"
    assert reason(rows, b"[{") == codec.NOT_JSON
    assert reason(rows, b'[{"device": "d"}]') == codec.BAD_ROWS
    assert reason(rows, b"[]") == codec.BAD_ROWS
    assert reason("x/y", b"1") == codec.BAD_TOPIC
    assert set(codec.REASONS) >= {codec.NOT_JSON, codec.UNKNOWN_PROJECT, codec.CONFLICT}


def test_reject_log_once_per_reason_per_interval() -> None:
    now = [0.0]
    rejects = RejectLog(60.0, clock=lambda: now[0])
    assert rejects("not_json", "t", "m")
    assert not rejects("not_json", "t", "m")
    assert rejects("bad_value", "t", "m")
    now[0] = 61.0
    assert rejects("not_json", "t", "m")


def test_parse_url() -> None:
    u = parse_url("mqtt://user:p%40ss@127.0.0.1:1884")
    assert (u.host, u.port, u.tls, u.username, u.password) == (
        "127.0.0.1",
        1884,
        False,
        "user",
        "p@ss",
    )
    u = parse_url("mqtts://broker.local")
    assert (u.port, u.tls, u.username) == (8883, True, None)
    for bad in ("http://x", "mqtt://", "mqtt://h:99999"):
        try:
            parse_url(bad)
        except ValueError as exc:
            assert bad in str(exc)
        else:
            raise AssertionError(bad)
