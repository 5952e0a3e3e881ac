"""Issue 15 end to end on a real server: aggregate reads (exact, DST, tz=site, qc, units,
paging), /latest with selections, retention (within a pass, variable override, rollups),
HTTP 410 with ``earliest`` and ``on_gap=earliest`` on the native and DT streams and the feed,
and CSV ingest."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MS, Server, make_station, start_server
from tests.test_feed import Feed, feed_token

API = "/api/v1/projects"
DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DENVER = ZoneInfo("America/Denver")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("ts") / "data", retention_interval_seconds=200 * MS
    )
    yield server
    server.stop()


@pytest.fixture
def c(srv: Server) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


_n = iter(range(1_000_000))


def project(c: httpx.Client, **doc: Any) -> str:
    pid = f"p{next(_n)}"
    r = c.post(API, json={"id": pid, **doc})
    assert r.status_code == 201, r.text
    r = c.post(f"{API}/{pid}/sites", json={"id": "s1", "timezone": "America/Denver"})
    assert r.status_code == 201, r.text
    r = c.post(f"{API}/{pid}/sites", json={"id": "s2", "timezone": "Asia/Kolkata"})
    assert r.status_code == 201, r.text
    r = c.post(
        f"{API}/{pid}/devices",
        json=[
            {
                "id": f"d{i}",
                "site": f"s{i % 2 + 1}",
                "variables": [
                    {"name": "air_temp", "unit": "degC"},
                    {"name": "wind_speed", "unit": "m/s"},
                ],
            }
            for i in range(3)
        ],
    )
    assert r.status_code == 201, r.text
    return pid


def post(c: httpx.Client, pid: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    r = c.post(f"{API}/{pid}/observations", json=rows)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def all_aggregates(c: httpx.Client, pid: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = None
    while True:
        p = dict(params, **({"page": page} if page else {}))
        r = c.get(f"{API}/{pid}/observations", params=p)
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["aggregates"]
        page = body["next"]
        if page is None:
            return out


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(st.integers(0, 3 * DAY), st.floats(-50, 50, allow_nan=False)),
        min_size=1,
        max_size=120,
        unique_by=lambda r: r[0],
    ),
    st.sampled_from(["10m", "1h", "5h", "1d"]),
    st.sampled_from([None, "America/Denver"]),
)
def test_aggregates_are_exact_against_the_rows(
    srv: Server, rows: list[tuple[int, float]], every: str, tz: str | None
) -> None:
    with srv.client() as c:
        pid = project(c)
        post(
            c,
            pid,
            [{"device": "d0", "variable": "air_temp", "time": T0 + t, "value": v} for t, v in rows],
        )
        params: dict[str, Any] = {
            "every": every,
            "agg": "mean,min,max,count,sum,first,last",
            "limit": 7,
        }
        if tz:
            params["tz"] = tz
        got = all_aggregates(c, pid, **params)
    want: dict[int, list[tuple[int, float]]] = {}
    for b in got:
        assert (b["device"], b["variable"], b["set"]) == ("d0", "air_temp", 1)
    for t, v in sorted(rows):
        when = T0 + t
        start = next(ms(b["start"]) for b in got if ms(b["start"]) <= when < ms(b["end"]))
        want.setdefault(start, []).append((when, v))
    assert [ms(b["start"]) for b in got] == sorted(want)
    for b in got:
        vals = [v for _, v in want[ms(b["start"])]]
        assert b["count"] == len(vals)
        assert b["sum"] == pytest.approx(sum(vals), abs=1e-9)
        assert b["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-9)
        assert (b["min"], b["max"], b["first"], b["last"]) == (
            min(vals),
            max(vals),
            vals[0],
            vals[-1],
        )


def test_dst_days_in_denver_and_site_zones(c: httpx.Client) -> None:
    pid = project(c)
    start = int(datetime(2024, 11, 2, tzinfo=DENVER).timestamp() * 1000)
    rows = [
        {"device": d, "variable": "air_temp", "time": start + i * HOUR, "value": 1.0}
        for d in ("d0", "d1")
        for i in range(72)
    ]
    post(c, pid, rows)
    got = all_aggregates(c, pid, every="1d", tz="America/Denver", device="d0", agg="count")
    assert [b["start"] for b in got] == [
        "2024-11-02T00:00:00-06:00",
        "2024-11-03T00:00:00-06:00",
        "2024-11-04T00:00:00-07:00",
    ]
    assert [b["count"] for b in got] == [24, 25, 23]
    assert (ms(got[1]["end"]) - ms(got[1]["start"])) == 25 * HOUR
    site = all_aggregates(c, pid, every="1d", tz="site", agg="count")
    d0 = [b for b in site if b["device"] == "d0"]  # at s1 (Denver)
    d1 = [b for b in site if b["device"] == "d1"]  # at s2 (Kolkata, +05:30)
    assert d0[0]["start"].endswith("-06:00")
    assert all(b["start"].endswith("+05:30") and "T00:00:00" in b["start"] for b in d1)
    assert sum(b["count"] for b in d1) == 72
    assert [(b["device"]) for b in site] == sorted(b["device"] for b in site)


def test_qc_and_units_apply_before_aggregating(c: httpx.Client) -> None:
    pid = project(c)
    rows = [
        {"device": "d0", "variable": "air_temp", "time": T0 + i * 60_000, "value": float(i)}
        for i in range(10)
    ]
    rows.append({"device": "d0", "variable": "air_temp", "time": T0 + 11 * 60_000, "value": 900.0})
    post(c, pid, rows)
    (b,) = all_aggregates(c, pid, every="1h", agg="count,max,sum")
    assert (b["count"], b["max"], b["sum"]) == (10, 9.0, 45.0)  # the range failure removed
    (b,) = all_aggregates(c, pid, every="1h", agg="count,max", qc="none")
    assert (b["count"], b["max"]) == (11, 900.0)
    r = c.get(
        f"{API}/{pid}/observations",
        params={"every": "1h", "agg": "mean,sum,min", "units": "english"},
    )
    (b,) = r.json()["aggregates"]
    assert r.json()["units"] == {"air_temp": "Fahrenheit"}
    f = [x * 1.8 + 32 for x in range(10)]
    assert b["mean"] == pytest.approx(sum(f) / 10)
    assert b["sum"] == pytest.approx(sum(f))  # 1.8 * sum + 32 * count, not 1.8 * sum + 32
    assert b["min"] == pytest.approx(32.0)


def test_paging_and_selection_and_bad_parameters(c: httpx.Client) -> None:
    pid = project(c)
    rows = [
        {"device": f"d{i % 3}", "variable": v, "time": T0 + i * 600_000, "value": 1.0}
        for i in range(300)
        for v in ("air_temp", "wind_speed")
    ]
    post(c, pid, rows)
    whole = all_aggregates(c, pid, every="1h", limit=100_000)
    paged = all_aggregates(c, pid, every="1h", limit=3)
    assert paged == whole
    keys = [(b["device"], b["variable"], b["set"], ms(b["start"])) for b in whole]
    assert keys == sorted(keys)
    only = all_aggregates(c, pid, every="1h", device="d1", variable="wind_speed")
    assert {(b["device"], b["variable"]) for b in only} == {("d1", "wind_speed")}
    window = all_aggregates(
        c, pid, every="1d", start="2024-01-01T06:00:00Z", end="2024-01-01T12:00:00Z", agg="count"
    )
    assert sum(b["count"] for b in window) == 36 * 2
    for params in (
        {"every": "1w"},
        {"every": "1h", "agg": "median"},
        {"every": "1h", "tz": "Nowhere/Land"},
        {"agg": "mean"},
        {"tz": "UTC"},
        {"every": "1h", "page": "garbage"},
    ):
        r = c.get(f"{API}/{pid}/observations", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["details"], r.text


def test_latest_with_selections_from_memory(c: httpx.Client) -> None:
    pid = project(c)
    post(
        c,
        pid,
        [
            {"device": d, "variable": v, "time": T0 + k * 1000, "value": float(k)}
            for k in range(5)
            for d in ("d0", "d1", "d2")
            for v in ("air_temp", "wind_speed")
        ],
    )
    post(
        c, pid, [{"device": "d0", "variable": "air_temp", "time": T0 - 1000, "value": 77.0}]
    )  # backfill
    post(
        c, pid, [{"device": "d1", "variable": "air_temp", "time": T0 + 9000, "value": 999.0}]
    )  # QC fails
    r = c.get(f"{API}/{pid}/latest")
    assert r.status_code == 200, r.text
    latest = r.json()["latest"]
    assert len(latest) == 6
    by = {(o["device"], o["variable"]): o for o in latest}
    assert by[("d0", "air_temp")]["value"] == 4.0  # the backfilled row is older
    assert by[("d1", "air_temp")]["value"] == 4.0  # newest passing QC
    r = c.get(f"{API}/{pid}/latest", params={"qc": "none", "device": "d1", "variable": "air_temp"})
    assert [o["value"] for o in r.json()["latest"]] == [999.0]
    r = c.get(
        f"{API}/{pid}/latest", params={"stid": "s2", "units": "english", "variable": "air_temp"}
    )
    assert [(o["device"], o["value"]) for o in r.json()["latest"]] == [("d1", pytest.approx(39.2))]
    assert c.get(f"{API}/{pid}/latest", params={"bbox": "1,2"}).status_code == 400


def history(c: httpx.Client, pid: str, **params: Any) -> list[dict[str, Any]]:
    r = c.get(f"{API}/{pid}/observations", params={"limit": 100_000, **params})
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["observations"]
    return out


def wait_for(cond: Any) -> None:
    """Poll (retention runs every 200 ms here); a generous bound, not a speed expectation."""
    for _ in range(3000):
        if cond():
            return
        time.sleep(20 * MS)
    raise AssertionError("condition never held")


def test_retention_removes_old_rows_keeps_rollups_and_answers_410(
    srv: Server, c: httpx.Client
) -> None:
    now = int(time.time() * 1000) // HOUR * HOUR
    keep = project(c, rollup={"every": "1h", "agg": ["mean", "count"]})
    drop = project(c)
    for pid in (keep, drop):
        old = [
            {"device": "d0", "variable": v, "time": now - 5 * DAY + i * 60_000, "value": i % 40.0}
            for i in range(120)
            for v in ("air_temp", "wind_speed")
        ]
        post(c, pid, old)
        post(c, pid, [{"device": "d0", "variable": "air_temp", "time": now - 1000, "value": 1.0}])
    # a variable's retention overrides the project's
    r = c.patch(f"{API}/{keep}/devices/d0/variables/wind_speed", json={"retention_days": 30})
    assert r.status_code == 200, r.text
    for pid in (keep, drop):
        r = c.patch(f"{API}/{pid}", json={"retention_days": 2})
        assert r.status_code == 200 and r.json()["retention_days"] == 2, r.text
    wait_for(lambda: len(history(c, drop)) == 1 and len(history(c, keep, variable="air_temp")) == 1)
    assert len(history(c, drop)) == 1
    assert len(history(c, keep, variable="wind_speed")) == 120  # kept 30 days
    # the rollup keeps the hourly aggregates of expired rows; without one they are gone
    kept = all_aggregates(c, keep, every="1h", variable="air_temp", agg="count,mean")
    assert [b["count"] for b in kept] == [60, 60, 1]
    gone = all_aggregates(c, drop, every="1h", variable="air_temp", agg="count")
    assert [b["count"] for b in gone] == [1]
    # resuming from before the removal: 410 with the earliest kept cursor
    r = c.get(f"{API}/{drop}/stream", params={"since": 0})
    assert r.status_code == 410, r.text
    err = r.json()["error"]
    earliest = err["earliest"]
    assert err["code"] == "gone" and isinstance(earliest, int) and earliest > 1
    # on_gap=earliest: says so first, then continues from the earliest kept observation
    with c.stream("GET", f"{API}/{drop}/stream", params={"since": 0, "on_gap": "earliest"}) as s:
        lines = s.iter_lines()
        first = orjson.loads(next(lines))
        assert first["gap"]["earliest"] == earliest and first["gap"]["since"] == 0
        rows = []
        for line in lines:
            obj = orjson.loads(line)
            if "cursor" in obj:
                rows.append(obj)
                break
        assert rows[0]["cursor"] >= earliest
    # DT stream: the same 410 and earliest
    r = c.get(f"/v2/projects/{drop}/devices:stream", params={"since": 0})
    assert r.status_code == 410, r.text
    assert r.json()["error"]["earliest"] == earliest


async def test_feed_resume_older_than_kept_gets_a_closing_message(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", retention_interval_seconds=100 * MS)
    try:
        with srv.client() as c:
            make_station(c, devices=1)
            token = feed_token(c)
            feed = await Feed.open(srv, token, "")
            await feed.close()
            now = int(time.time() * 1000)
            post(
                c,
                "p1",
                [
                    {
                        "device": "d0",
                        "variable": "air_temp",
                        "time": now - 5 * DAY + i,
                        "value": 1.0,
                    }
                    for i in range(5)
                ],
            )
            post(
                c,
                "p1",
                [{"device": "d0", "variable": "air_temp", "time": now - 1000, "value": 2.0}],
            )
            assert c.patch(f"{API}/p1", json={"retention_days": 1}).status_code == 200
        pk = srv.engine.registry.projects["p1"].pk
        while srv.engine.timeseries.earliest(pk) is None:
            await asyncio.sleep(20 * MS)
        earliest = srv.engine.timeseries.earliest(pk)
        assert earliest == 6
        again = await Feed.open(srv, token, "", session=feed.session)
        assert again.auth["code"] == "success"
        closing = await again.next()
        assert closing["type"] == "closed" and closing["error"]["status"] == 410
        assert closing["error"]["earliest"] == earliest
        assert await again.to_close() == 4410
        resumed = await Feed.open(srv, token, "on_gap=earliest", session=feed.session)
        gap = await resumed.next()
        assert gap == {"type": "gap", "since": 0, "earliest": earliest}
        await resumed.close()
    finally:
        srv.stop()


def test_csv_ingest_all_or_nothing_with_row_precise_errors(c: httpx.Client) -> None:
    pid = project(c)
    url = f"{API}/{pid}/observations"
    csv_type = {"content-type": "text/csv"}
    good = (
        b"device,variable,time,value,set\n"
        b"d0,air_temp,2024-01-01T00:00:00Z,1.5,\n"
        b"d0,air_temp,1704067260000,2.5,1\n"
        b"d1,wind_speed,2024-01-01T00:00:00Z,,\n"
    )
    r = c.post(url, content=good, headers=csv_type)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3
    assert [o["value"] for o in history(c, pid, device="d0")] == [1.5, 2.5]
    bad = (
        b"device,variable,time,value\n"
        b"d0,air_temp,2024-01-02T00:00:00Z,1\n"
        b"d0,air_temp,yesterday,1\n"
        b"d0,air_temp,2024-01-02T00:00:00Z\n"
        b"d0,air_temp,2024-01-02T00:01:00Z,inf\n"
    )
    r = c.post(url, content=bad, headers=csv_type)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert [(d["index"], d["line"]) for d in details] == [(1, 3), (2, 4), (3, 5)]
    assert details[0]["field"] == "time" and details[2]["field"] == "value"
    r = c.post(
        url,
        content=b"device,variable,time,value\nd0,air_temp,2024-01-03T00:00:00Z,1\nnope,air_temp,2024-01-03T00:00:00Z,1\n",
        headers=csv_type,
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["index"] == 1, r.text
    assert len(history(c, pid)) == 3  # nothing of a refused batch was stored
    for body in (
        b"",
        b"device,variable,value\nd0,air_temp,1\n",
        b"device,variable,time,value,colour\n",
    ):
        r = c.post(url, content=body, headers=csv_type)
        assert r.status_code == 400, r.text


def test_latest_after_a_restart_has_the_stored_rows_and_those_committed_while_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start the latest rows load in the background: the server answers meanwhile, a batch
    committed during the load is kept (not replaced by the older stored rows), and ``/latest``
    waits for the load."""
    from streamgauge.core.services import timeseries
    from streamgauge.store.postgres.store import PgStore
    from streamgauge.store.sqlite.store import SqliteStore

    data = tmp_path / "data"
    first = start_server(data)
    try:
        with first.client() as c:
            pid = project(c)
            post(c, pid, [{"device": "d0", "variable": "air_temp", "time": T0, "value": 1.0}])
            post(c, pid, [{"device": "d1", "variable": "air_temp", "time": T0, "value": 2.0}])
    finally:
        first.stop()
    gate = threading.Event()
    for cls in (SqliteStore, PgStore):
        original = cls.latest_rows

        async def slow(self: Any, *args: Any, original: Any = original) -> Any:
            await asyncio.to_thread(gate.wait, 30)  # released by the test, after its commit
            return await original(self, *args)

        monkeypatch.setattr(cls, "latest_rows", slow)
    monkeypatch.setattr(timeseries, "LATEST_LOAD_DELAY_S", 0.0)  # loading from the start
    again = start_server(data)
    try:
        with again.client() as c:
            row = {"device": "d0", "variable": "air_temp", "time": T0 + 1000, "value": 3.0}
            post(c, pid, [row])
            gate.set()
            r = c.get(f"{API}/{pid}/latest", params={"qc": "none"})
        assert r.status_code == 200, r.text
        got = {o["device"]: o["value"] for o in r.json()["latest"]}
        assert got == {"d0": 3.0, "d1": 2.0}
    finally:
        again.stop()
