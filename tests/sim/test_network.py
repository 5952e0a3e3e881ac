"""Tests of the simulator: the pure layout/generator/scheduler, and the runner on a fake server."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest

from streamgauge.sim import SimStats, SimulationError, run_simulation, setup_network
from streamgauge.sim import runner as runner_mod
from streamgauge.sim.network import (
    MESONET_VARIABLES,
    NETWORKS,
    STATES,
    TAPIS_DEVICE_ID,
    TAPIS_SITE_ID,
    Network,
    Scheduler,
    Station,
    ValueGenerator,
    build_network,
    device_payloads,
    site_payloads,
    solar_hour,
    station_pressure,
)

T0 = 1_750_000_000_000  # 2025-06-15T15:06:40Z
HOUR = 3_600_000
DAY = 86_400_000
MESONET_VARS = {v.id for v in MESONET_VARIABLES}


def _net(n: int = 40, seed: int = 7) -> Network:
    return build_network("demo", n, seed)


# ------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------


def test_tapis_station() -> None:
    net = _net(3)
    st = net.stations[0]
    assert (st.id, st.device_id, st.device_type) == (
        TAPIS_SITE_ID,
        TAPIS_DEVICE_ID,
        "river_gauge",
    )
    assert (st.lat, st.lon, st.state) == (38.65, -82.18, "OH")
    assert {(v.id, v.unit) for v in st.variables} == {("temperature", "degC"), ("rainfall", "mm")}


def test_layout_is_deterministic_and_seed_dependent() -> None:
    assert _net(30, 3) == _net(30, 3)
    assert site_payloads(_net(30, 3)) != site_payloads(_net(30, 4))
    # growing the network keeps the existing stations as they were
    assert _net(10, 3).stations == _net(30, 3).stations[:11]


def test_mesonet_stations() -> None:
    net = _net(40)
    meso = net.mesonet
    assert len(meso) == 40 and len(net.stations) == 41
    assert [s.id for s in meso] == [f"SG{i:04d}" for i in range(1, 41)]
    states = {s.code: s for s in STATES}
    for s in meso:
        info = states[s.state]
        assert s.device_id == s.id and s.device_type == "weather_station"
        assert info.lat[0] <= s.lat <= info.lat[1]
        assert info.lon[0] <= s.lon <= info.lon[1]
        assert info.elevation[0] <= s.elevation <= info.elevation[1]
        assert s.timezone == info.timezone and s.country == "US"
        assert s.nwszone in info.nwszones and s.nwszone.startswith(f"{s.state}Z")
        assert s.nwsfirezone in info.firezones and s.nwsfirezone.startswith(f"{s.state}Z")
        assert s.labels == {"network": s.network, "state": s.state, "kind": "mesonet"}
        assert {(v.id, v.set) for v in s.variables} == {(v, 1) for v in MESONET_VARS}


def test_filters_select_real_subsets() -> None:
    meso = _net(40).mesonet
    for attr, minimum in [("state", 8), ("network", len(NETWORKS)), ("nwszone", 10)]:
        counts = Counter(getattr(s, attr) for s in meso)
        assert len(counts) >= minimum, attr
        assert max(counts.values()) < len(meso) // 2, attr
    assert len({s.nwsfirezone for s in meso}) >= 10
    # the state and network attributes are not the same partition
    assert len({(s.state, s.network) for s in meso}) > len({s.state for s in meso})
    # with a small network, every station still differs in state
    assert len({s.state for s in _net(5).mesonet}) == 5


def test_payloads_follow_the_contract() -> None:
    net = _net(4)
    sites = site_payloads(net)
    assert set(sites[1]) == {
        "id", "name", "lat", "lon", "elevation", "state", "country", "network",
        "nwszone", "nwsfirezone", "timezone", "metadata",
    }  # fmt: skip
    devices = device_payloads(net)
    assert devices[0]["id"] == TAPIS_DEVICE_ID and devices[0]["site"] == TAPIS_SITE_ID
    assert devices[1]["id"] == devices[1]["site"] == "SG0001"
    assert {v["name"] for v in devices[1]["variables"]} == MESONET_VARS
    orjson.dumps(sites)
    orjson.dumps(devices)


def test_station_pressure() -> None:
    assert station_pressure(0) == pytest.approx(101325)
    assert station_pressure(1500) == pytest.approx(84556, rel=0.01)


# ------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------


def _series(
    gen: ValueGenerator, st: Station, start: int, step: int, n: int
) -> list[dict[str, float]]:
    return [gen.report(st, start + i * step) for i in range(n)]


def test_values_are_deterministic() -> None:
    net = _net(5)
    a, b = ValueGenerator(net, origin_ms=T0 - DAY), ValueGenerator(net, origin_ms=T0 - DAY)
    for st in net.stations:
        assert _series(a, st, T0, 60_000, 50) == _series(b, st, T0, 60_000, 50)
    # apart from the cached precipitation sum, values do not depend on the call history
    c = ValueGenerator(net, origin_ms=T0 - DAY)
    st = net.stations[3]
    assert c.report(st, T0 + 49 * 60_000) == a.report(st, T0 + 49 * 60_000)
    other = ValueGenerator(build_network("demo", 5, 8), origin_ms=T0 - DAY)
    assert _series(other, other.network.stations[3], T0, 60_000, 50) != _series(
        a, st, T0, 60_000, 50
    )


def test_values_are_plausible_when_clean() -> None:
    net = _net(20)
    gen = ValueGenerator(net, bad_fraction=0.0)
    for st in net.mesonet:
        p0 = station_pressure(st.elevation)
        for i in range(0, 400):
            v = gen.report(st, T0 + i * 17 * 60_000)
            assert set(v) == MESONET_VARS
            assert all(math.isfinite(x) for x in v.values())
            assert -45 < v["air_temp"] < 50
            assert 0 <= v["relative_humidity"] <= 100
            assert 0 <= v["wind_speed"] < 30
            assert v["wind_gust"] >= v["wind_speed"]
            assert abs(v["pressure"] - p0) < 2000
            assert 0 <= v["precip_accum"] < 500
    tapis = net.stations[0]
    for i in range(400):
        v = gen.report(tapis, T0 + i * 17 * 60_000)
        assert set(v) == {"temperature", "rainfall"}
        assert -30 < v["temperature"] < 45 and 0 <= v["rainfall"] < 10


def test_temperature_peaks_mid_afternoon_and_rh_is_inverse() -> None:
    net = _net(12)
    gen = ValueGenerator(net, bad_fraction=0.0)
    temp_by_hour: dict[int, list[float]] = {h: [] for h in range(24)}
    rh_by_hour: dict[int, list[float]] = {h: [] for h in range(24)}
    for st in net.mesonet:
        for i in range(24 * 20):  # hourly for 20 days
            t = T0 + i * HOUR
            v = gen.report(st, t)
            h = int(solar_hour(st.lon, t))
            temp_by_hour[h].append(v["air_temp"])
            rh_by_hour[h].append(v["relative_humidity"])
    temp = {h: sum(x) / len(x) for h, x in temp_by_hour.items()}
    rh = {h: sum(x) / len(x) for h, x in rh_by_hour.items()}
    assert max(temp, key=temp.__getitem__) in (13, 14, 15, 16)
    assert min(temp, key=temp.__getitem__) in (1, 2, 3, 4, 5)
    assert temp[15] - temp[3] > 8
    assert rh[15] < rh[3] - 10


def test_wind_is_stronger_in_the_afternoon() -> None:
    net = _net(12)
    gen = ValueGenerator(net, bad_fraction=0.0)
    day: list[float] = []
    night: list[float] = []
    for st in net.mesonet:
        for i in range(24 * 20):
            t = T0 + i * HOUR
            h = solar_hour(st.lon, t)
            v = gen.report(st, t)
            if 13 <= h < 17:
                day.append(v["wind_speed"])
            elif 1 <= h < 5:
                night.append(v["wind_speed"])
    assert sum(day) / len(day) > 1.5 * sum(night) / len(night)


def test_precip_accum_is_monotonic_and_it_rains_sometimes() -> None:
    net = _net(20)
    gen = ValueGenerator(net)  # bad values never touch precip_accum
    rained = 0
    for st in net.mesonet:
        prev = -1.0
        for i in range(24 * 6 * 7):  # every 10 minutes for a week
            v = gen.report(st, T0 + i * 600_000 + (i % 7) * 1000)
            assert v["precip_accum"] >= prev
            prev = v["precip_accum"]
        if prev > 0:
            rained += 1
        assert prev < 100  # mm in a week: wet, not absurd
    assert rained >= 5  # it rains somewhere during a week
    # sampling at different instants gives the same totals (no drift from the cache)
    fresh = ValueGenerator(net, origin_ms=gen.origin_ms)
    st = net.mesonet[0]
    t = T0 + 24 * 6 * 7 * 600_000
    assert fresh.report(st, t)["precip_accum"] == gen.report(st, t)["precip_accum"]


def test_bad_values_fraction_and_kinds() -> None:
    net = _net(20)
    gen = ValueGenerator(net)
    clean = ValueGenerator(net, origin_ms=T0, bad_fraction=0.0)
    gen.origin_ms = T0
    total = bad = 0
    kinds: Counter[str] = Counter()
    for st in net.stations:
        for i in range(500):
            t = T0 + i * 61_000
            v, c = gen.report(st, t), clean.report(st, t)
            for var, x in v.items():
                total += 1
                if x != c[var]:
                    bad += 1
                    kinds[var] += 1
            assert all(math.isfinite(x) for x in v.values())
            if "wind_gust" in v and v["wind_gust"] == c["wind_gust"] >= 0:
                if v["wind_speed"] == c["wind_speed"]:
                    assert v["wind_gust"] >= v["wind_speed"]
    assert 0.003 < bad / total < 0.008
    assert {"air_temp", "relative_humidity", "wind_speed", "wind_gust"} <= set(kinds)
    assert "precip_accum" not in kinds and "pressure" not in kinds


def test_bad_values_are_recognisably_bad() -> None:
    net = _net(10)
    gen = ValueGenerator(net, bad_fraction=1.0)
    v = gen.report(net.stations[1], T0)
    assert v["air_temp"] in (150.0, -90.0)
    assert v["relative_humidity"] > 100 or v["relative_humidity"] < 0
    assert v["wind_speed"] < 0 and v["wind_gust"] < 0
    assert gen.report(net.stations[0], T0)["temperature"] in (150.0, -90.0)


# ------------------------------------------------------------------------------------------
# scheduler
# ------------------------------------------------------------------------------------------


def _drive(
    sched: Scheduler, ticks: int, tick_ms: int = 250, start: int = T0
) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for k in range(1, ticks + 1):
        out.append([dict(o) for o in sched.next_batch(k * tick_ms / 1000, start + k * tick_ms)])
    return out


def test_scheduler_paces_to_the_rate() -> None:
    net = _net(10)
    sched = Scheduler(net, ValueGenerator(net), 100.0)
    batches = _drive(sched, 40)  # 10 seconds
    sent = sum(len(b) for b in batches)
    assert 1000 <= sent <= 1000 + 6
    assert all(15 <= len(b) <= 35 for b in batches)


def test_scheduler_reports_whole_stations_with_increasing_times() -> None:
    net = _net(3)  # 20 observations per cycle, so stations report several times a second
    sched = Scheduler(net, ValueGenerator(net), 500.0)
    batches = _drive(sched, 20)
    keys: set[tuple[str, str, int]] = set()
    last: dict[tuple[str, str], int] = {}
    by_report: dict[tuple[str, int], set[str]] = {}
    for b in batches:
        for o in b:
            key = (o["device"], o["variable"], o["time"])
            assert key not in keys
            keys.add(key)
            series = (o["device"], o["variable"])
            assert o["time"] > last.get(series, 0)
            last[series] = o["time"]
            by_report.setdefault((o["device"], o["time"]), set()).add(o["variable"])
            assert isinstance(o["time"], int) and math.isfinite(o["value"])
    for (device, _), variables in by_report.items():
        expected = {"temperature", "rainfall"} if device == TAPIS_DEVICE_ID else MESONET_VARS
        assert variables == expected
    # times stay close to the wall clock
    assert max(t for (_, t) in by_report) <= T0 + 20 * 250 + 1000


def test_scheduler_caps_lead_and_backlog() -> None:
    net = _net(0)  # just the Tapis station: 2 observations per report
    sched = Scheduler(net, ValueGenerator(net), 10_000.0, max_lead_ms=100)
    batch = sched.next_batch(1.0, T0)
    assert all(o["time"] <= T0 + 100 for o in batch)
    assert sched.skipped > 0
    # a long stall does not turn into a huge burst
    sched2 = Scheduler(net, ValueGenerator(net), 100.0, max_backlog_s=2.0)
    sched2.next_batch(0.25, T0)
    assert len(sched2.next_batch(60.0, T0 + 60_000)) <= 202
    assert sched2.dropped > 5000


def test_scheduler_is_deterministic() -> None:
    net = _net(5)
    a = _drive(Scheduler(net, ValueGenerator(net), 200.0), 12)
    b = _drive(Scheduler(net, ValueGenerator(net), 200.0), 12)
    assert a == b


# ------------------------------------------------------------------------------------------
# runner, against a fake server that checks the HTTP contract
# ------------------------------------------------------------------------------------------


class FakeServer:
    def __init__(self, token: str = "tok", fail_first: int = 0) -> None:
        self.token = token
        self.fail_first = fail_first
        self.projects: set[str] = set()
        self.sites: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.variables: dict[tuple[str, str], dict[str, Any]] = {}
        self.obs: dict[tuple[str, str, int, int], float] = {}
        self.requests: list[tuple[str, str]] = []

    def _create(self, store: dict[Any, Any], key: Any, obj: dict[str, Any], skip: bool) -> bool:
        if key in store:
            return skip
        store[key] = obj
        return True

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(
                401,
                json={
                    "error": {"status": 401, "code": "unauthorized", "message": "no", "details": []}
                },
            )
        path = request.url.path.split("/")[3:]  # after /api/v1
        skip = request.url.params.get("if_exists") == "skip"
        conflict = httpx.Response(
            409,
            json={"error": {"status": 409, "code": "conflict", "message": "exists", "details": []}},
        )
        if path == ["projects"]:
            body = orjson.loads(request.content)
            if body["id"] in self.projects and not skip:
                return conflict
            self.projects.add(body["id"])
            return httpx.Response(201, json=body)
        assert path[0] == "projects" and path[1] in self.projects
        if path[2] == "observations":
            assert request.headers["content-type"] == "application/x-ndjson"
            if self.fail_first:
                self.fail_first -= 1
                return httpx.Response(
                    503,
                    json={
                        "error": {"status": 503, "code": "busy", "message": "busy", "details": []}
                    },
                )
            acc = dup = 0
            rows = [orjson.loads(line) for line in request.content.splitlines()]
            for row in rows:
                assert set(row) == {"device", "variable", "time", "value"}
                assert (row["device"], row["variable"]) in self.variables
                key = (row["device"], row["variable"], 1, row["time"])
                if key in self.obs:
                    assert self.obs[key] == row["value"], "conflicting duplicate"
                    dup += 1
                else:
                    self.obs[key] = row["value"]
                    acc += 1
            return httpx.Response(
                200,
                json={
                    "accepted": acc,
                    "duplicates": dup,
                    "first_cursor": "c1",
                    "last_cursor": "c2",
                },
            )
        body = orjson.loads(request.content)
        items = body if isinstance(body, list) else [body]
        if path[2] == "sites":
            for it in items:
                if not self._create(self.sites, it["id"], it, skip):
                    return conflict
        elif path[2] == "devices" and len(path) == 3:
            for it in items:
                assert it["site"] in self.sites
                if not self._create(self.devices, it["id"], it, skip):
                    return conflict
                for v in it.get("variables", []):
                    self.variables[(it["id"], v.get("id", v["name"]))] = v
        elif path[2] == "devices" and path[4] == "variables":
            assert path[3] in self.devices
            for it in items:
                if not self._create(self.variables, (path[3], it.get("id", it["name"])), it, skip):
                    return conflict
        else:
            raise AssertionError(path)
        return httpx.Response(201, json=body)


def _client(server: FakeServer, token: str = "tok") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url="http://127.0.0.1:9",
        headers={"Authorization": f"Bearer {token}"},
        transport=httpx.MockTransport(server.handler),
    )


async def test_setup_network_is_idempotent() -> None:
    server = FakeServer()
    async with _client(server) as client:
        net = await setup_network(client, "demo", 7, 1)
        assert len(server.sites) == 8 and len(server.devices) == 8
        assert len(server.variables) == 2 + 7 * 6
        again = await setup_network(client, "demo", 7, 1)
    assert again == net
    assert len(server.sites) == 8 and len(server.variables) == 44


async def test_setup_network_rejects_bad_token() -> None:
    async with _client(FakeServer(), token="wrong") as client:
        with pytest.raises(SimulationError, match="401"):
            await setup_network(client, "demo", 1, 1)


async def test_run_simulation_posts_valid_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_mod, "RETRY_DELAY_S", 0.0)
    server = FakeServer(fail_first=1)  # the first batch is retried once
    seen: list[SimStats] = []
    stats = await run_simulation(
        "http://127.0.0.1:9",
        "tok",
        project="p1",
        stations=3,
        rate=400.0,
        duration=0.3,
        on_progress=seen.append,
        transport=httpx.MockTransport(server.handler),
    )
    assert stats.posted >= 120 and stats.posted == stats.accepted
    assert stats.posted == len(server.obs)
    assert stats.duplicates == 0 and stats.rejected_batches == 0
    assert stats.batches >= 1 and seen and seen[-1] is stats


async def test_run_simulation_zero_duration_only_sets_up() -> None:
    server = FakeServer()
    stats = await run_simulation(
        "http://127.0.0.1:9", "tok", stations=2, duration=0.0,
        transport=httpx.MockTransport(server.handler),
    )  # fmt: skip
    assert stats.posted == 0 and stats.batches == 0
    assert "demo" in server.projects and len(server.devices) == 3


async def test_rejected_batch_is_counted_not_fatal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422,
            json={
                "error": {
                    "status": 422,
                    "code": "invalid",
                    "message": "bad",
                    "details": [{"row": 0}],
                }
            },
        )

    stats = SimStats()
    async with httpx.AsyncClient(
        base_url="http://127.0.0.1:9", transport=httpx.MockTransport(handler)
    ) as client:
        await runner_mod._post_batch(client, "p", b"{}\n", 1, stats)
    assert stats.rejected_batches == 1 and stats.batches == 1 and stats.accepted == 0
