"""Native ingest (POST) and history reads (GET) of observations."""

from __future__ import annotations

import csv
import io
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from streamgauge.faces.native.csv_ingest import csv_to_ndjson
from streamgauge.faces.native.deps import encode_page
from tests.conftest import expect_error as _err
from tests.conftest import make_station, rows, settle, start_server

STORES = ["sqlite", "postgresql"]  # every test here runs on both storage backends

OBS = "/api/v1/projects/p1/observations"
T0 = 1_700_000_000_000
NDJSON = {"Content-Type": "application/x-ndjson"}


def _history(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = client.get(OBS, params={"limit": 10_000, **params})
    assert r.status_code == 200, r.text
    assert r.json()["next"] is None
    obs: list[dict[str, Any]] = r.json()["observations"]
    return obs


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _parse(t: str) -> int:
    return int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000)


def _post(client: httpx.Client, body: Any) -> httpx.Response:
    return client.post(OBS, json=body)


# -- accepted batches -----------------------------------------------------------------------------


def test_ingest_json_reply_and_history_shape(client: httpx.Client) -> None:
    make_station(client)
    r = _post(client, rows(6))
    assert r.status_code == 200, r.text
    reply = r.json()
    assert set(reply) == {"accepted", "duplicates", "first_cursor", "last_cursor"}
    assert reply["accepted"] == 6 and reply["duplicates"] == 0
    assert reply["last_cursor"] - reply["first_cursor"] == 5

    obs = _history(client)
    assert len(obs) == 6
    for o in obs:
        assert set(o) == {"cursor", "device", "variable", "set", "time", "value", "qc"}
        assert o["time"].endswith("Z") or o["time"].endswith("+00:00")
        assert o["set"] == 1
        assert isinstance(o["qc"], list)
    assert [o["value"] for o in obs] == [float(i) for i in range(6)]
    assert [_parse(o["time"]) for o in obs] == [T0 + i * 1000 for i in range(6)]
    assert {o["cursor"] for o in obs} == set(range(reply["first_cursor"], reply["last_cursor"] + 1))
    assert obs[0]["device"] == "d0" and obs[0]["variable"] == "air_temp"


def test_ingest_ndjson_and_rfc3339_times(client: httpx.Client) -> None:
    make_station(client)
    lines = [
        {"device": "d0", "variable": "air_temp", "time": "2024-01-01T00:00:00Z", "value": 1.5},
        {"device": "d1", "variable": "air_temp", "time": "2024-01-01T02:00:01+02:00", "value": 2},
        {"device": "d1", "variable": "wind_speed", "time": 1704067202000, "value": 3, "set": 2},
    ]
    body = b"\n".join(orjson.dumps(x) for x in lines) + b"\n"
    r = client.post(OBS, content=body, headers=NDJSON)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3
    obs = _history(client)
    assert [_parse(o["time"]) for o in obs] == [1704067200000, 1704067201000, 1704067202000]
    assert [o["value"] for o in obs] == [1.5, 2, 3]
    assert [o["set"] for o in obs] == [1, 1, 2]


def test_string_and_null_values_round_trip(client: httpx.Client) -> None:
    make_station(client)
    values: list[Any] = ["12", None, "", 'ünïcode, "quoted"', 0, -1.25, "null"]
    body = [
        {"device": "d0", "variable": "air_temp", "time": T0 + i, "value": v}
        for i, v in enumerate(values)
    ]
    assert _post(client, body).json()["accepted"] == len(values)
    got = [o["value"] for o in _history(client)]
    assert got == values
    assert isinstance(got[0], str) and got[0] == "12"
    assert got[1] is None


def test_resend_counts_duplicates(client: httpx.Client) -> None:
    make_station(client)
    assert _post(client, rows(5)).json()["accepted"] == 5
    r = _post(client, rows(5))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 0 and r.json()["duplicates"] == 5
    assert r.json()["first_cursor"] is None and r.json()["last_cursor"] is None
    # a mix: 5 old + 2 new
    r = _post(client, rows(7))
    assert r.json()["accepted"] == 2 and r.json()["duplicates"] == 5
    assert len(_history(client)) == 7


def test_conflicting_value_is_409_naming_row_nothing_stored(client: httpx.Client) -> None:
    make_station(client)
    assert _post(client, rows(3)).json()["accepted"] == 3
    batch = rows(6, start_ms=T0 + 100_000)  # all new...
    old = rows(3)[1]
    batch.insert(4, {**old, "value": 999.0})  # ...except index 4, a changed stored row
    err = _err(_post(client, batch), 409)
    assert [d["index"] for d in err["details"]] == [4]
    assert len(_history(client)) == 3


def test_within_batch_repeat_with_other_value_is_409(client: httpx.Client) -> None:
    make_station(client)
    row = {"device": "d0", "variable": "air_temp", "time": T0, "value": 1.0}
    err = _err(_post(client, [row, {**row, "time": T0 + 1}, {**row, "value": 2.0}]), 409)
    assert any(d.get("index") == 2 for d in err["details"]), err
    assert _history(client) == []
    # an exact repeat within one batch is a duplicate, not a conflict
    r = _post(client, [row, row])
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["duplicates"] == 1


# -- rejected batches: all or nothing -------------------------------------------------------------


def test_bad_rows_named_by_index_nothing_stored(client: httpx.Client) -> None:
    make_station(client)
    now = int(time.time() * 1000)
    batch = rows(8)
    batch[1] = {**batch[1], "device": "ghost"}
    batch[3] = {**batch[3], "variable": "nope"}
    batch[5] = {**batch[5], "time": now + 10 * 60 * 1000}
    err = _err(_post(client, batch), 422)
    by_index = {d["index"]: d for d in err["details"]}
    assert set(by_index) == {1, 3, 5}
    assert by_index[1]["field"] == "device" and by_index[1]["reason"]
    assert by_index[3]["field"] == "variable"
    assert by_index[5]["field"] == "time"
    assert _history(client) == []


def test_time_slightly_ahead_is_accepted(client: httpx.Client) -> None:
    make_station(client)
    now = int(time.time() * 1000)
    r = _post(client, [{"device": "d0", "variable": "air_temp", "time": now + 60_000, "value": 1}])
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1


WRONG_TYPES: list[tuple[dict[str, Any], str | None]] = [
    ({"variable": "air_temp", "time": T0, "value": 1}, "device"),
    ({"device": "d0", "variable": "air_temp", "time": "yesterday", "value": 1}, "time"),
    ({"device": "d0", "variable": "air_temp", "time": "2024-01-01T00:00:00", "value": 1}, None),
    ({"device": "d0", "variable": "air_temp", "time": "2024-01-01", "value": 1}, None),
    ({"device": "d0", "variable": "air_temp", "time": T0, "value": [1]}, "value"),
    ({"device": "d0", "variable": "air_temp", "time": T0, "value": {"a": 1}}, "value"),
    ({"device": "d0", "variable": "air_temp", "time": T0, "value": True}, "value"),
    ({"device": 5, "variable": "air_temp", "time": T0, "value": 1}, "device"),
    ({"device": "d0", "variable": "air_temp", "time": T0, "value": 1, "set": 0}, "set"),
    ({"device": "d0", "variable": "air_temp", "time": T0, "value": 1, "extra": 1}, "extra"),
    ({"device": "d0", "variable": "air_temp", "time": 1.5, "value": 1}, "time"),
    ({"device": "d0", "variable": "air_temp", "time": None, "value": 1}, "time"),
]


def test_wrong_types_are_422_naming_row(client: httpx.Client) -> None:
    make_station(client)
    for row, field in WRONG_TYPES:
        err = _err(_post(client, [*rows(2), row]), 422)
        bad = [d for d in err["details"] if d.get("index") == 2]
        assert bad, (row, err)
        if field is not None:
            assert field in bad[0]["reason"] or bad[0].get("field") == field, (row, bad)
        # the same row as NDJSON
        body = b"\n".join(orjson.dumps(x) for x in [*rows(2), row])
        err = _err(client.post(OBS, content=body, headers=NDJSON), 422)
        assert [d["index"] for d in err["details"]] == [2], (row, err)
    assert _history(client) == []


def test_time_out_of_range_is_422_naming_row(client: httpx.Client) -> None:
    make_station(client)
    wrong = []
    for t in [10**20, -(10**20), 2**63, 253402300800000, -62135596800001, "10000-01-01T00:00:00Z"]:
        with httpx.Client(base_url=client.base_url, headers=client.headers) as c:  # a 500 drops
            r = _post(c, [*rows(1), {**rows(1)[0], "time": t}])  # the connection
        settle(r)
        if r.status_code != 422 or [d.get("index") for d in r.json()["error"]["details"]] != [1]:
            wrong.append((t, r.status_code, r.text))
    assert not wrong, wrong
    assert _history(client) == []


def test_ndjson_bad_line_named(client: httpx.Client) -> None:
    make_station(client)
    good = orjson.dumps(rows(1)[0])
    body = good + b"\n" + b'{"device": "d0", "variable": "air_temp"}\n' + good + b"\n"
    err = _err(client.post(OBS, content=body, headers=NDJSON), 422)
    assert [d["index"] for d in err["details"]] == [1]
    assert _history(client) == []


def test_non_finite_values_rejected(client: httpx.Client) -> None:
    make_station(client)
    for literal in [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]:
        body = b'[{"device":"d0","variable":"air_temp","time":1700000000000,"value":' + literal
        body += b"}]"
        r = client.post(OBS, content=body, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (literal, r.text)
        assert r.json()["error"]["status"] == r.status_code
        r = client.post(OBS, content=body[1:-1], headers=NDJSON)
        assert 400 <= r.status_code < 500, (literal, r.text)
        assert r.json()["error"]["status"] == r.status_code
    assert _history(client) == []


def test_malformed_json_is_400(client: httpx.Client) -> None:
    make_station(client)
    err = _err(
        client.post(
            OBS, content=b'[{"device": "d0",', headers={"Content-Type": "application/json"}
        ),
        400,
    )
    assert err["message"]
    _err(
        client.post(OBS, content=b'{"device":"d0"}', headers={"Content-Type": "application/json"}),
        400,
    )
    _err(client.post(OBS, json=[]), 400)
    assert _history(client) == []


def test_unsupported_content_type_is_400(client: httpx.Client) -> None:
    make_station(client)
    body = orjson.dumps(rows(2))
    for ctype in ("text/plain", "application/xml", "multipart/form-data"):
        err = _err(client.post(OBS, content=body, headers={"Content-Type": ctype}), 400)
        assert any(d.get("field") == "content-type" for d in err["details"]), err
    assert _history(client) == []
    r = client.post(OBS, content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_unknown_query_parameter_on_ingest_is_400(client: httpx.Client) -> None:
    make_station(client)
    err = _err(client.post(OBS, params={"dryrun": "1"}, json=rows(2)), 400)
    assert any(d.get("field") == "dryrun" for d in err["details"]), err
    assert _history(client) == []


def test_unknown_project_is_404(client: httpx.Client) -> None:
    _err(client.post("/api/v1/projects/nope/observations", json=rows(1)), 404)
    _err(client.get("/api/v1/projects/nope/observations"), 404)


def test_oversized_body_is_413(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d", max_body_bytes=2048)
    try:
        with srv.client() as c:
            make_station(c)
            small = orjson.dumps(rows(3))
            assert len(small) < 2048
            assert (
                c.post(OBS, content=small, headers={"Content-Type": "application/json"}).json()[
                    "accepted"
                ]
                == 3
            )
            big = orjson.dumps(rows(100, start_ms=T0 + 10_000_000))
            assert len(big) > 2048
            err = _err(c.post(OBS, content=big, headers={"Content-Type": "application/json"}), 413)
            assert err["code"] == "too_large"

            # without a content-length (chunked), the limit still holds
            def chunks() -> Any:
                for i in range(0, len(big), 512):
                    yield big[i : i + 512]

            r = c.post(OBS, content=chunks(), headers={"Content-Type": "application/json"})
            _err(r, 413)
            assert len(_history(c)) == 3
    finally:
        srv.stop()


# -- history reads --------------------------------------------------------------------------------


def test_history_filters_and_time_range(client: httpx.Client) -> None:
    make_station(client)
    assert _post(client, rows(20)).json()["accepted"] == 20
    d0 = _history(client, device="d0")
    assert len(d0) == 10 and {o["device"] for o in d0} == {"d0"}
    both = _history(client, variable=["air_temp", "wind_speed"])
    assert len(both) == 20
    air = _history(client, variable="air_temp")
    assert {o["variable"] for o in air} == {"air_temp"} and len(air) == 10

    # start inclusive, end exclusive; epoch ms and RFC 3339 agree
    by_ms = _history(client, start=T0 + 5000, end=T0 + 10_000)
    by_iso = _history(client, start=_iso(T0 + 5000), end=_iso(T0 + 10_000))
    assert by_ms == by_iso
    assert [_parse(o["time"]) for o in by_ms] == [T0 + i * 1000 for i in range(5, 10)]

    off = "2023-11-14T23:13:25+01:00"  # == T0 + 5000 ms
    assert _history(client, start=off, end=T0 + 10_000) == by_ms


def test_history_ordered_by_time_then_cursor_and_paging(client: httpx.Client) -> None:
    make_station(client)
    # later times first, and several rows sharing a time
    b1 = [
        {"device": "d0", "variable": "air_temp", "time": T0 + 5000, "value": 1},
        {"device": "d1", "variable": "air_temp", "time": T0 + 1000, "value": 2},
    ]
    b2 = [
        {"device": "d0", "variable": "wind_speed", "time": T0 + 1000, "value": 3},
        {"device": "d1", "variable": "wind_speed", "time": T0, "value": 4},
    ]
    assert _post(client, b1).status_code == 200
    assert _post(client, b2).status_code == 200
    assert _post(client, rows(23, start_ms=T0 + 100)).status_code == 200
    full = _history(client)
    assert len(full) == 27
    keys = [(_parse(o["time"]), o["cursor"]) for o in full]
    assert keys == sorted(keys)

    for limit in (1, 4, 10):
        seen: list[dict[str, Any]] = []
        page: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if page:
                params["page"] = page
            r = client.get(OBS, params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["observations"]) <= limit
            seen.extend(body["observations"])
            page = body["next"]
            if page is None:
                break
        assert seen == full, limit


def test_history_csv_and_ndjson(client: httpx.Client) -> None:
    make_station(client)
    body = [
        {"device": "d0", "variable": "air_temp", "time": T0, "value": 1.5},
        {"device": "d0", "variable": "air_temp", "time": T0 + 1, "value": "a,b"},
        {"device": "d0", "variable": "air_temp", "time": T0 + 2, "value": None},
    ]
    assert _post(client, body).status_code == 200
    js = _history(client)

    r = client.get(OBS, params={"format": "csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    parsed = list(csv.reader(io.StringIO(r.text)))
    assert parsed[0] == ["cursor", "device", "variable", "set", "time", "value", "qc"]
    assert len(parsed) == 4
    assert [row[0] for row in parsed[1:]] == [str(o["cursor"]) for o in js]
    assert [row[5] for row in parsed[1:]] == ["1.5", "a,b", ""]
    assert [row[4] for row in parsed[1:]] == [o["time"] for o in js]

    r = client.get(OBS, params={"format": "ndjson"})
    assert r.status_code == 200
    lines = [orjson.loads(x) for x in r.content.splitlines() if x.strip()]
    assert lines == js

    _err(client.get(OBS, params={"format": "xml"}), 422)


def test_history_bad_page_or_time_is_400(client: httpx.Client) -> None:
    make_station(client)
    cases = [
        {"page": "!!!"},
        {"page": "bm90LWEta2V5"},  # base64 of "not-a-key"
        {"start": "yesterday"},
        {"end": "2024-13-01T00:00:00Z"},
        {"start": "2024-01-01T00:00:00"},  # no timezone
    ]
    for params in cases:
        err = _err(client.get(OBS, params=params), 400)
        assert any(d.get("field") == next(iter(params)) for d in err["details"]), (params, err)


def test_history_out_of_range_time_or_page_is_400(client: httpx.Client) -> None:
    make_station(client)
    cases = [
        {"start": "99999999999999999999999"},  # epoch ms beyond any time
        {"end": "-99999999999999999999999"},
        {"page": encode_page("99999999999999999999999:1")},  # a forged token
        {"page": encode_page("1:99999999999999999999999")},
    ]
    wrong = []
    for params in cases:
        with httpx.Client(base_url=client.base_url, headers=client.headers) as c:  # a 500 drops
            r = c.get(OBS, params=params)  # the connection
        settle(r)
        if r.status_code != 400 or not any(
            d.get("field") == next(iter(params)) for d in r.json()["error"]["details"]
        ):
            wrong.append((params, r.status_code, r.text))
    assert not wrong, wrong


def test_history_of_deleted_device_is_gone(client: httpx.Client) -> None:
    make_station(client)
    assert _post(client, rows(4)).status_code == 200
    assert client.delete("/api/v1/projects/p1/devices/d1").status_code == 204
    assert {o["device"] for o in _history(client)} == {"d0"}


def test_a_csv_batch_is_converted_without_a_buffer_a_row() -> None:
    """The CSV body becomes the NDJSON rows ingest reads in one buffer: orjson's output of
    each row sits in at least 4 KiB, and a list of them held about a hundred times the body
    (447 MB for a 4 MB CSV of 100,000 rows; 3 GB for one at the 32 MB body limit)."""
    n = 20_000
    body = b"device,variable,time,value,set\n" + b"".join(
        b"ws%d,air_temp,2026-01-01T00:%02d:00Z,%d.5,%d\n" % (k % 7, k % 60, k, 1 + k % 2)
        for k in range(n)
    )
    tracemalloc.start()
    try:
        out = csv_to_ndjson(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    got = [orjson.loads(line) for line in out.split(b"\n")]
    assert len(got) == n
    assert got[0] == {
        "device": "ws0",
        "variable": "air_temp",
        "time": 1767225600000,
        "value": 0.5,
        "set": 1,
    }
    assert got[-1]["device"] == f"ws{(n - 1) % 7}" and got[-1]["value"] == n - 1 + 0.5
    assert peak < 20 * len(body)
