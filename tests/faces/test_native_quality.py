"""Data quality through /api/v1 on a real server: units at definition and on output, QC flags at
ingest (and across a restart), domain filters and ``filter`` expressions, on history reads and
on streams (``since=0``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from streamgauge.config import DB_NAME
from streamgauge.wire.rows import format_time
from tests.conftest import Server, expect_error, start_server

T0 = 1_700_000_000_000
OBS = "/api/v1/projects/p1/observations"
STREAM = "/api/v1/projects/p1/stream"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    # short keepalives: the first keepalive of a stream read from since=0 comes only after the
    # whole catch-up, which is how these tests know they have seen every matching row
    s = start_server(tmp_path / "data", keepalive_seconds=0.1)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(srv: Server) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


def create(c: httpx.Client, path: str, body: Any) -> None:
    r = c.post(f"/api/v1/projects{path}", json=body)
    assert r.status_code == 201, r.text


def project(c: httpx.Client) -> None:
    create(c, "", {"id": "p1"})


def site(c: httpx.Client, sid: str, **attrs: Any) -> None:
    create(c, "/p1/sites", {"id": sid, **attrs})


def device(c: httpx.Client, did: str, site_id: str | None, variables: list[dict[str, Any]]) -> None:
    body: dict[str, Any] = {"id": did, "variables": variables}
    if site_id is not None:
        body["site"] = site_id
    create(c, "/p1/devices", body)


def var(name: str, unit: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "unit": unit, **extra}


def ob(dev: str, variable: str, t: int, value: Any) -> dict[str, Any]:
    return {"device": dev, "variable": variable, "time": t, "value": value}


def post(c: httpx.Client, batch: list[dict[str, Any]]) -> dict[str, Any]:
    r = c.post(OBS, json=batch)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def history(c: httpx.Client, **params: Any) -> dict[str, Any]:
    r = c.get(OBS, params={"limit": 10_000, **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["next"] is None
    return body


def hist_rows(c: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = history(c, **params)["observations"]
    return rows


def stream_all(srv: Server, **params: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The opening line and every row of a stream from ``since=0`` up to its first keepalive."""
    rows: list[dict[str, Any]] = []
    with (
        srv.client(timeout=httpx.Timeout(10, read=5)) as c,
        c.stream("GET", STREAM, params={"since": "0", **params}) as resp,
    ):
        assert resp.status_code == 200
        it = (orjson.loads(line) for line in resp.iter_lines() if line.strip())
        first = next(it)
        for obj in it:
            if "keepalive" in obj:
                break
            assert "cursor" in obj, obj
            rows.append(obj)
    return first, rows


def key(o: dict[str, Any]) -> tuple[str, str, str, Any]:
    return (o["device"], o["variable"], o["time"], o["value"])


def keys(rows: list[dict[str, Any]]) -> set[tuple[str, str, str, Any]]:
    return {key(o) for o in rows}


def iso(ms: int) -> str:
    return format_time(ms)


# --- 1. units at definition -------------------------------------------------------------------


def test_units_at_definition(api: httpx.Client) -> None:
    project(api)
    site(api, "s1")
    for bad in (var("banana_level", "banana"), var("air_temp", "m/s")):
        r = api.post("/api/v1/projects/p1/devices", json={"id": "bad", "variables": [bad]})
        err = expect_error(r, 422)
        assert any(str(d.get("field", "")).endswith("unit") for d in err["details"]), err
    # neither bad definition left a device behind
    assert api.get("/api/v1/projects/p1/devices/bad").status_code == 404
    device(api, "d1", "s1", [var("leaf_wetness", "mV"), var("air_temp", "degF")])
    post(api, [ob("d1", "air_temp", T0, 212), ob("d1", "leaf_wetness", T0, 412.5)])
    post(api, [ob("d1", "air_temp", T0 + 1000, 32.0), ob("d1", "air_temp", T0 + 2000, 50)])
    # stored in degC: 100 C fails the catalog's range (max 65), so ask for every row
    body = history(api, qc="none")
    got = [(o["variable"], o["value"]) for o in body["observations"]]
    assert got == [
        ("air_temp", 100.0),
        ("leaf_wetness", 412.5),
        ("air_temp", 0.0),
        ("air_temp", 10.0),
    ]
    assert body["observations"][0]["qc"] == ["sl_range_check"]
    assert body["units"] == {"air_temp": "Celsius", "leaf_wetness": "mV"}
    assert [o["value"] for o in hist_rows(api)] == [412.5, 0.0, 10.0]
    eng = history(api, units="english", qc="none")
    assert [o["value"] for o in eng["observations"]] == [212.0, 412.5, 32.0, 50.0]
    assert eng["units"] == {"air_temp": "Fahrenheit", "leaf_wetness": "mV"}


# --- 2. QC at ingest --------------------------------------------------------------------------


def qc_network(c: httpx.Client) -> None:
    project(c)
    site(c, "s1", lat=40.7, lon=-111.9, state="UT")
    device(
        c,
        "w1",
        "s1",
        [
            var("air_temp", "degC"),
            var("wind_speed", "m/s"),
            var("wind_gust", "m/s"),
            var("x", "m", limits={"max_persist_s": 10}),
        ],
    )
    device(c, "w2", "s1", [var("air_temp", "degC", limits={"min": 0, "max": 5})])


QC_BATCHES: list[list[dict[str, Any]]] = [
    [ob("w1", "air_temp", T0, 150.0), ob("w1", "x", T0, 1.0)],
    [ob("w1", "air_temp", T0 + 1000, 10.0), ob("w1", "x", T0 + 5000, 1.0)],
    [ob("w1", "air_temp", T0 + 2000, 30.0)],
    [ob("w1", "wind_speed", T0 + 3000, 10.0), ob("w1", "wind_gust", T0 + 3000, 5.0)],
    [ob("w2", "air_temp", T0 + 60_000, 3.0), ob("w2", "air_temp", T0 + 600_000, 6.0)],
    [ob("w1", "x", T0 + 20_000, 1.0), ob("w2", "air_temp", T0 + 1_200_000, -1.0)],
]

QC_EXPECTED = {
    ("w1", "air_temp", T0): ["sl_range_check"],
    ("w1", "x", T0): [],
    ("w1", "air_temp", T0 + 1000): [],
    ("w1", "x", T0 + 5000): [],
    ("w1", "air_temp", T0 + 2000): ["sl_rate_check"],
    ("w1", "wind_speed", T0 + 3000): ["sl_windspd_maxgust_check"],
    ("w1", "wind_gust", T0 + 3000): ["sl_windspd_maxgust_check"],
    ("w2", "air_temp", T0 + 60_000): [],
    ("w2", "air_temp", T0 + 600_000): ["sl_range_check"],  # catalog max is 65; limits say 5
    ("w1", "x", T0 + 20_000): ["sl_pers_check"],
    ("w2", "air_temp", T0 + 1_200_000): ["sl_range_check"],
}


def flags(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[str]]:
    return {(o["device"], o["variable"], o["time"]): o["qc"] for o in rows}


def expected_flags(keep: Any = lambda f: True) -> dict[tuple[str, str, str], list[str]]:
    return {(d, v, iso(t)): f for (d, v, t), f in QC_EXPECTED.items() if keep(f)}


def test_qc_flags_at_ingest(srv: Server, api: httpx.Client) -> None:
    qc_network(api)
    for b in QC_BATCHES:
        post(api, b)
    everything = hist_rows(api, qc="none")
    assert flags(everything) == expected_flags()
    # default: range failures are left out, everything else stays (with its flags)
    default = expected_flags(lambda f: "sl_range_check" not in f)
    assert flags(hist_rows(api)) == default
    _, streamed = stream_all(srv)
    assert flags(streamed) == default
    # qc=sl_rate_check: range failures come back, rate failures go
    rate = expected_flags(lambda f: "sl_rate_check" not in f)
    assert flags(hist_rows(api, qc="sl_rate_check")) == rate
    assert flags(stream_all(srv, qc="sl_rate_check")[1]) == rate
    both = expected_flags(lambda f: not {"sl_rate_check", "sl_range_check"} & set(f))
    assert flags(hist_rows(api, qc="sl_rate_check,sl_range_check")) == both
    assert flags(stream_all(srv, qc="none")[1]) == expected_flags()
    err = expect_error(api.get(OBS, params={"qc": "sl_bogus_check"}), 400)
    assert err["details"][0]["field"] == "qc"


# --- 3. QC across a restart -------------------------------------------------------------------


@pytest.mark.parametrize("store_mode", ["sqlite"], indirect=True)  # reads the SQLite file
def test_qc_identical_across_clean_restart(tmp_path: Path) -> None:
    half = len(QC_BATCHES) // 2
    # a further batch per series, so every carried state (rate, persistence) is used after the
    # restart too
    tail = [
        [
            ob("w1", "air_temp", T0 + 2500, 31.0),  # +1 C in 0.5 s after 30 before the restart
            ob("w1", "x", T0 + 30_000, 1.0),
            ob("w1", "wind_speed", T0 + 4000, 40.0),  # +30 m/s in 1 s: rate
        ],
    ]
    batches = QC_BATCHES + tail
    one = start_server(tmp_path / "one")
    try:
        with one.client() as c:
            qc_network(c)
            for b in batches:
                post(c, b)
            throughout = hist_rows(c, qc="none")
    finally:
        one.stop()

    path = tmp_path / "two"
    two = start_server(path)
    try:
        with two.client() as c:
            qc_network(c)
            for b in batches[:half]:
                post(c, b)
    finally:
        two.stop()  # clean: the writer checkpoints the QC state as it closes
    db = path / DB_NAME
    with closing(sqlite3.connect(db)) as conn:
        (qc_cursor,) = conn.execute("SELECT value FROM state WHERE key='qc_cursor'").fetchone()
        (head,) = conn.execute("SELECT max(cursor) FROM obs").fetchone()
        (states,) = conn.execute("SELECT count(*) FROM qc_state").fetchone()
    assert int(qc_cursor) == head  # the restart replays nothing: the checkpoint carries it all
    assert states == 2  # w1's air_temp and x
    again = start_server(path)
    try:
        with again.client() as c:
            for b in batches[half:]:
                post(c, b)
            restarted = hist_rows(c, qc="none")
    finally:
        again.stop()

    assert flags(restarted) == flags(throughout)
    assert [key(o) for o in restarted] == [key(o) for o in throughout]
    f = flags(throughout)
    assert f[("w1", "x", iso(T0 + 30_000))] == ["sl_pers_check"]
    assert f[("w1", "wind_speed", iso(T0 + 4000))] == ["sl_rate_check"]
    assert f[("w1", "air_temp", iso(T0 + 2500))] == ["sl_rate_check"]


# --- 4. units on output -----------------------------------------------------------------------


def test_units_on_output(srv: Server, api: httpx.Client) -> None:
    project(api)
    site(api, "s1")
    device(
        api,
        "d1",
        "s1",
        [var("air_temp", "degC"), var("wind_speed", "m/s"), var("pressure", "Pa")],
    )
    post(
        api,
        [
            ob("d1", "air_temp", T0, 30.0),
            ob("d1", "wind_speed", T0, 10.0),
            ob("d1", "pressure", T0, 101325.0),
        ],
    )

    def values(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {o["variable"]: o["value"] for o in rows}

    metric = history(api)
    assert values(metric["observations"]) == {
        "air_temp": 30.0,
        "wind_speed": 10.0,
        "pressure": 101325.0,
    }
    assert metric["units"] == {"air_temp": "Celsius", "wind_speed": "m/s", "pressure": "Pascals"}

    eng = history(api, units="english")
    v = values(eng["observations"])
    assert v["air_temp"] == pytest.approx(86.0)
    assert v["wind_speed"] == pytest.approx(22.369363, abs=1e-5)
    assert v["pressure"] == pytest.approx(29.9213, abs=1e-3)
    assert eng["units"] == {"air_temp": "Fahrenheit", "wind_speed": "mph", "pressure": "INHG"}
    opening, rows = stream_all(srv, units="english")
    assert opening["units"]["temp"] == "Fahrenheit"
    assert opening["units"]["speed"] == "mph"
    assert opening["units"]["pres"] == "INHG"
    assert values(rows) == v

    kts = history(api, units="english,speed|kts")
    v = values(kts["observations"])
    assert v["wind_speed"] == pytest.approx(19.438445, abs=1e-5)
    assert v["air_temp"] == pytest.approx(86.0)
    assert kts["units"]["wind_speed"] == "knots"
    opening, rows = stream_all(srv, units="english,speed|kts")
    assert opening["units"]["speed"] == "knots"
    assert opening["units"]["temp"] == "Fahrenheit"
    assert values(rows) == v

    opening, _ = stream_all(srv)
    assert opening["units"]["temp"] == "Celsius"

    for path in (OBS, STREAM):
        err = expect_error(api.get(path, params={"units": "english,speed|furlong"}), 400)
        d = err["details"][0]
        assert d["field"] == "units"
        assert d["index"] == 1
        assert "furlong" in d["reason"]


def test_integer_values_convert_on_output(api: httpx.Client) -> None:
    project(api)
    site(api, "s1")
    device(api, "d1", "s1", [var("air_temp", "degC"), var("wind_speed", "m/s")])
    post(api, [ob("d1", "air_temp", T0, 0), ob("d1", "wind_speed", T0, 10)])
    v = {o["variable"]: o["value"] for o in hist_rows(api, units="english")}
    assert v["air_temp"] == pytest.approx(32.0)
    assert v["wind_speed"] == pytest.approx(22.369363, abs=1e-5)


# --- 5. domain filters ------------------------------------------------------------------------

SITES = {
    # id: state, network, nwszone, nwsfirezone, lat, lon
    "a1": ("UT", "A", "UTZ001", "UTZ401", 40.76, -111.89),  # Salt Lake City
    "a2": ("UT", "B", "UTZ002", "UTZ402", 41.22, -111.97),  # Ogden, ~32 miles north
    "b1": ("CO", "A", "COZ001", "COZ201", 39.74, -104.99),  # Denver
    "c1": ("NV", "C", "NVZ001", "NVZ601", 36.17, -115.14),  # Las Vegas
}


def domain_network(c: httpx.Client) -> None:
    project(c)
    for sid, (state, network, zone, fire, lat, lon) in SITES.items():
        attrs = {"state": state, "network": network, "nwszone": zone, "nwsfirezone": fire}
        site(c, sid, lat=lat, lon=lon, **attrs)
        device(c, f"dev_{sid}", sid, [var("air_temp", "degC")])
    device(c, "loose", None, [var("air_temp", "degC")])  # no site: no domain selects it
    post(
        c,
        [ob(f"dev_{s}", "air_temp", T0 + i * 1000, 10.0) for i, s in enumerate(SITES)]
        + [ob("loose", "air_temp", T0, 10.0)],
    )


DOMAIN_CASES: list[tuple[dict[str, str], set[str]]] = [
    ({"state": "ut"}, {"a1", "a2"}),
    ({"state": "Ut,nv"}, {"a1", "a2", "c1"}),
    ({"network": "A,B"}, {"a1", "a2", "b1"}),
    ({"network": "c"}, {"c1"}),
    ({"stid": "a1,C1"}, {"a1", "c1"}),
    ({"nwszone": "utz002"}, {"a2"}),
    ({"nwsfirezone": "COZ201,UTZ401"}, {"a1", "b1"}),
    ({"radius": "40.76,-111.89,10"}, {"a1"}),
    ({"radius": "40.76,-111.89,50"}, {"a1", "a2"}),
    ({"radius": "A1,50"}, {"a1", "a2"}),
    ({"radius": "b1,5"}, {"b1"}),
    ({"radius": "nosuch,5000"}, set()),
    ({"bbox": "-112.5,40,-111,41.5"}, {"a1", "a2"}),
    ({"bbox": "-116,35,-104,40"}, {"b1", "c1"}),
    ({"state": "UT", "network": "B"}, {"a2"}),
    ({"state": "CO", "bbox": "-112.5,40,-111,41.5"}, set()),
]


def test_domain_filters(srv: Server, api: httpx.Client) -> None:
    domain_network(api)
    assert {o["device"] for o in hist_rows(api)} == {f"dev_{s}" for s in SITES} | {"loose"}
    for params, sites in DOMAIN_CASES:
        want = {f"dev_{s}" for s in sites}
        hist = hist_rows(api, **params)
        assert {o["device"] for o in hist} == want, params
        assert len(hist) == len(want), params
        _, streamed = stream_all(srv, **params)
        assert sorted(o["cursor"] for o in streamed) == sorted(o["cursor"] for o in hist), params


BAD_DOMAIN: list[tuple[dict[str, str], str, int]] = [
    ({"radius": "40,-111"}, "radius", 3),  # stid,miles with negative miles
    ({"radius": "abc"}, "radius", 0),
    ({"radius": "91,-111,10"}, "radius", 0),
    ({"radius": "40,-111,x"}, "radius", 8),
    ({"radius": "a1;drop,5"}, "radius", 0),
    ({"bbox": "1,2,3"}, "bbox", 0),
    ({"bbox": "-100,40,-110,41"}, "bbox", 8),
    ({"bbox": "-112,40,-111,lat"}, "bbox", 13),
    ({"state": "UT,,CO"}, "state", 3),
]


def test_bad_domain_arguments(srv: Server, api: httpx.Client) -> None:
    domain_network(api)
    for params, field, position in BAD_DOMAIN:
        for path in (OBS, STREAM):
            err = expect_error(api.get(path, params=params), 400)
            d = err["details"][0]
            assert d["field"] == field, (params, err)
            assert d["position"] == position, (params, err)


# --- 6. filter expressions --------------------------------------------------------------------

M = 60_000


def filter_network(c: httpx.Client) -> None:
    project(c)
    site(c, "f1", lat=40.7, lon=-111.9)
    site(c, "f2", lat=40.8, lon=-111.8)
    met = [var("air_temp", "degC"), var("wind_speed", "m/s"), var("relative_humidity", "%")]
    device(c, "fa", "f1", met)
    device(c, "fc", "f1", [var("wind_speed", "m/s")])
    device(c, "fb", "f2", [var("air_temp", "degC"), var("relative_humidity", "%")])
    reports = [
        # passes: cold and windy
        [ob("fa", "air_temp", T0, -5.0), ob("fa", "wind_speed", T0, 12.0)]
        + [ob("fa", "relative_humidity", T0, 80.0)],
        # fails: calm
        [ob("fa", "air_temp", T0 + M, -5.0), ob("fa", "wind_speed", T0 + M, 5.0)]
        + [ob("fa", "relative_humidity", T0 + M, 80.0)],
        # fails: warm
        [ob("fa", "air_temp", T0 + 2 * M, 3.0), ob("fa", "wind_speed", T0 + 2 * M, 15.0)],
        # fails: no wind_speed in the report (another site has one at this time)
        [ob("fb", "air_temp", T0, -5.0), ob("fb", "relative_humidity", T0, 50.0)],
        # passes: the report spans two devices of one site
        [ob("fa", "air_temp", T0 + 3 * M, -10.0), ob("fa", "relative_humidity", T0 + 3 * M, 90.0)]
        + [ob("fc", "wind_speed", T0 + 3 * M, 20.0)],
        # for the english comparison: 12 C is 53.6 F, 8 C is 46.4 F
        [ob("fb", "air_temp", T0 + 4 * M, 12.0), ob("fb", "relative_humidity", T0 + 4 * M, 40.0)],
        [ob("fb", "air_temp", T0 + 5 * M, 8.0), ob("fb", "relative_humidity", T0 + 5 * M, 45.0)],
        # fails: its air_temp is a range failure, left out before the filter judges the report
        [ob("fa", "air_temp", T0 + 6 * M, -200.0), ob("fa", "wind_speed", T0 + 6 * M, 30.0)],
    ]
    for r in reports:
        post(c, r)


COLD_WINDY = "(air_temp < 0) and (wind_speed > 10)"


def test_filter_expressions(srv: Server, api: httpx.Client) -> None:
    filter_network(api)
    got = hist_rows(api, filter=COLD_WINDY)
    assert keys(got) == {
        ("fa", "air_temp", iso(T0), -5.0),
        ("fa", "wind_speed", iso(T0), 12.0),
        ("fa", "relative_humidity", iso(T0), 80.0),
        ("fa", "air_temp", iso(T0 + 3 * M), -10.0),
        ("fa", "relative_humidity", iso(T0 + 3 * M), 90.0),
        ("fc", "wind_speed", iso(T0 + 3 * M), 20.0),
    }
    assert len(got) == 6
    _, streamed = stream_all(srv, filter=COLD_WINDY)
    assert streamed == got

    # vars (comma list) narrows the output; the filter still judges the whole report
    narrowed = hist_rows(api, filter=COLD_WINDY, vars="air_temp,wind_speed")
    assert keys(narrowed) == {k for k in keys(got) if k[1] != "relative_humidity"}
    assert stream_all(srv, filter=COLD_WINDY, vars="air_temp,wind_speed")[1] == narrowed
    plain = hist_rows(api, vars="air_temp,wind_speed")
    assert {o["variable"] for o in plain} == {"air_temp", "wind_speed"}
    assert len(plain) == 12  # every air_temp and wind_speed row but the range failure

    # comparison values are in the request's units
    assert hist_rows(api, filter="(air_temp > 50)") == []
    warm = hist_rows(api, units="english", filter="(air_temp > 50)")
    assert keys(warm) == {
        ("fb", "air_temp", iso(T0 + 4 * M), 53.6),
        ("fb", "relative_humidity", iso(T0 + 4 * M), 40.0),
    }
    assert stream_all(srv, units="english", filter="(air_temp > 50)")[1] == warm
    assert hist_rows(api, units="metric", filter="(air_temp > 10)") == hist_rows(
        api, filter="(air_temp > 10)"
    )

    # or, and with qc=none the range failure joins its report again
    either = hist_rows(api, filter="(wind_speed >= 20) or (relative_humidity < 41)")
    assert {(o["device"], o["time"]) for o in either} == {
        ("fa", iso(T0 + 3 * M)),
        ("fc", iso(T0 + 3 * M)),
        ("fb", iso(T0 + 4 * M)),
        ("fa", iso(T0 + 6 * M)),  # wind_speed 30 passes; its air_temp is a range failure
    }
    assert ("fa", "air_temp", iso(T0 + 6 * M), -200.0) not in keys(either)
    with_bad = hist_rows(api, filter=COLD_WINDY, qc="none")
    assert ("fa", "air_temp", iso(T0 + 6 * M), -200.0) in keys(with_bad)
    assert stream_all(srv, filter=COLD_WINDY, qc="none")[1] == with_bad


HOSTILE = [
    ("(air_temp < 0); DROP TABLE obs", 14),
    ("' OR 1=1 --", 0),
    ("((air_temp < 0)", 15),
    ("(air_temp < 0))", 14),
    ("air_temp < 0", 0),
    ("(air_temp < 0) and", 18),
    ("(air_temp < x)", 12),
    ("(air_temp ~ 0)", 10),
    ("", 0),
]


def test_hostile_filters(srv: Server, api: httpx.Client) -> None:
    filter_network(api)
    before = hist_rows(api, qc="none")
    for text, position in HOSTILE:
        for path in (OBS, STREAM):
            err = expect_error(api.get(path, params={"filter": text}), 400)
            d = err["details"][0]
            assert d["field"] == "filter", (text, err)
            assert d["position"] == position, (text, err)
    assert hist_rows(api, qc="none") == before


def test_history_filter_judges_reports_of_series_created_after_an_earlier_read(
    api: httpx.Client,
) -> None:
    project(api)
    site(api, "s1")
    device(api, "d1", "s1", [var("air_temp", "degC"), var("wind_speed", "m/s")])
    device(api, "d2", None, [var("air_temp", "degC")])  # a station of its own
    t0 = 1_700_000_000_000
    post(api, [ob("d1", "air_temp", t0, 5.0), ob("d2", "air_temp", t0, 6.0)])
    assert len(hist_rows(api, filter="(air_temp > 0)")) == 2  # the database keys are built
    # New series (wind_speed of d1) after that read: their reports are judged too.
    post(
        api,
        [
            ob("d1", "air_temp", t0 + 60_000, 7.0),
            ob("d1", "wind_speed", t0 + 60_000, 12.0),
            ob("d2", "air_temp", t0 + 60_000, 8.0),
        ],
    )
    got = hist_rows(api, filter="(wind_speed > 10) and (air_temp > 6)")
    assert [(o["device"], o["variable"], o["value"]) for o in got] == [
        ("d1", "air_temp", 7.0),
        ("d1", "wind_speed", 12.0),
    ]  # d2 is another station: its air_temp is not in d1's report
    assert hist_rows(api, filter="(wind_speed > 10) and (air_temp > 7)") == []
