"""The Synoptic-compatible push feed (``/feed``) against a real server on loopback, with the real
``websockets`` client: feed tokens and their permissions, the ``auth`` messages, every argument
alone and combined, and metadata ordering.

What each session receives is compared with an expectation computed here from the observations
the test posted (domain, sensors, QC removal, ``filter_on`` per station report, units), not with
anything the server computes. The helpers here are shared by ``test_feed_*.py``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Server, expect_error, start_server

API = "/api/v1/projects"
TIMEOUT = 30.0  # a bound on waiting for a message, never an expectation of speed

RANGE = "sl_range_check"
RATE = "sl_rate_check"
PERS = "sl_pers_check"
MAXGUST = "sl_windspd_maxgust_check"

# -- the network --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Station:
    stid: str
    state: str
    network: str
    nwszone: str
    nwsfirezone: str
    lat: float
    lon: float
    elevation: float  # metres

    @property
    def device(self) -> str:
        return f"{self.stid.lower()}-wx"


STATIONS = (
    Station("WBB", "UT", "153", "UTZ003", "UTZ478", 40.76623, -111.84755, 1465.0),
    Station("KSLC", "UT", "1", "UTZ003", "UTZ479", 40.77069, -111.96503, 1288.0),
    Station("LOGU1", "UT", "2", "UTZ005", "UTZ478", 41.74, -111.83, 1380.0),
    Station("KDEN", "CO", "1", "COZ039", "COZ214", 39.85, -104.66, 1655.0),
    Station("COS01", "CO", "153", "COZ040", "COZ216", 38.83, -104.82, 1840.0),
    Station("KSFO", "CA", "1", "CAZ006", "CAZ211", 37.62, -122.37, 3.0),
    Station("KLAX", "CA", "2", "CAZ041", "CAZ264", 33.94, -118.41, 38.0),
    Station("KLAS", "NV", "1", "NVZ020", "NVZ461", 36.08, -115.15, 664.0),
)
BY_STID = {s.stid: s for s in STATIONS}
SENSORS = ("air_temp", "wind_speed", "wind_gust", "relative_humidity")
UNITS = {"air_temp": "degC", "wind_speed": "m/s", "wind_gust": "m/s", "relative_humidity": "%"}
LIMITS = {
    "air_temp": (-90.0, 65.0),
    "wind_speed": (0.0, 120.0),
    "wind_gust": (0.0, 120.0),
    "relative_humidity": (0.0, 100.0),
}


def make_network(client: httpx.Client, project: str = "p1") -> None:
    r = client.post(API, json={"id": project})
    assert r.status_code == 201, r.text
    for s in STATIONS:
        site = {
            "id": s.stid,
            "lat": s.lat,
            "lon": s.lon,
            "elevation": s.elevation,
            "state": s.state,
            "network": s.network,
            "nwszone": s.nwszone,
            "nwsfirezone": s.nwsfirezone,
        }
        r = client.post(f"{API}/{project}/sites", json=site)
        assert r.status_code == 201, r.text
    devices = [
        {
            "id": s.device,
            "site": s.stid,
            "variables": [{"name": n, "unit": UNITS[n]} for n in SENSORS],
        }
        for s in STATIONS
    ]
    r = client.post(f"{API}/{project}/devices", json=devices)
    assert r.status_code == 201, r.text


# -- observations -------------------------------------------------------------------------------


def minute_ms(ms: int) -> int:
    return ms - ms % 60_000


def date_of(ms: int) -> int:
    return int(time.strftime("%Y%m%d%H%M", time.gmtime(ms // 1000)))


@dataclass(slots=True)
class Obs:
    stid: str
    sensor: str
    set: int
    time: int
    value: float
    qc: frozenset[str]
    batch: int  # which posted batch (a station report never spans two)
    cursor: int = 0

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.stid, self.sensor, self.set, date_of(self.time))

    def row(self) -> dict[str, Any]:
        return {
            "device": BY_STID[self.stid].device,
            "variable": self.sensor,
            "set": self.set,
            "time": self.time,
            "value": self.value,
        }


def report(i: int, st: Station, minute: int, t: int, batch: int) -> list[Obs]:
    """One station's observations at one time: plausible values with, now and then, an air
    temperature out of range (``sl_range_check``) and a wind speed above its gust (both rows
    get ``sl_windspd_maxgust_check``). Steps between minutes stay far below the rate limits."""
    temp = -5.0 + 3.0 * i + (minute % 4) * 0.5
    if (i + minute) % 7 == 3:
        temp = 70.0
    speed = (2 * i + minute) % 15 + 0.5
    gust = speed - 0.25 if (3 * i + minute) % 5 == 0 else speed * 1.5
    rh = 20.0 + (7 * i + 3 * minute) % 50
    values = {"air_temp": temp, "wind_speed": speed, "wind_gust": gust, "relative_humidity": rh}
    flags: dict[str, set[str]] = {n: set() for n in SENSORS}
    for n, v in values.items():
        lo, hi = LIMITS[n]
        if not lo <= v <= hi:
            flags[n].add(RANGE)
    if speed > gust:
        flags["wind_speed"].add(MAXGUST)
        flags["wind_gust"].add(MAXGUST)
    out = [Obs(st.stid, n, 1, t, values[n], frozenset(flags[n]), batch) for n in SENSORS]
    if i == 0:  # a second air temperature sensor (set 2) at WBB
        second = temp - 1.0
        qc = frozenset({RANGE}) if second > LIMITS["air_temp"][1] else frozenset()
        out.append(Obs(st.stid, "air_temp", 2, t, second, qc, batch))
    return out


def minute_batch(minute: int, t: int, batch: int) -> list[Obs]:
    """Every station's report at ``t`` (one batch: whole station reports)."""
    return [o for i, st in enumerate(STATIONS) for o in report(i, st, minute, t, batch)]


def post(client: httpx.Client, obs: list[Obs], project: str = "p1") -> None:
    """Post ``obs`` as one batch and give each its cursor."""
    r = client.post(f"{API}/{project}/observations", json=[o.row() for o in obs])
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["accepted"] == len(obs), ack
    for n, o in enumerate(obs):
        o.cursor = ack["first_cursor"] + n


def check_flags(client: httpx.Client, obs: list[Obs], project: str = "p1") -> None:
    """The server flagged exactly what the model here expects (so expectations rest on it)."""
    r = client.get(f"{API}/{project}/observations", params={"qc": "none", "limit": 100_000})
    assert r.status_code == 200, r.text
    stored = {o["cursor"]: o for o in r.json()["observations"]}
    for o in obs:
        got = stored[o.cursor]
        assert (got["variable"], got["set"], got["value"]) == (o.sensor, o.set, o.value)
        assert frozenset(got["qc"]) == o.qc, (o, got)


# -- expectations -------------------------------------------------------------------------------


def miles(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 3958.8 * math.asin(math.sqrt(h))


def f_of_c(c: float) -> float:
    return c * 9 / 5 + 32


def mph_of_ms(v: float) -> float:
    return v / 0.44704


Report = dict[str, list[float]]  # sensor -> values (of the rows that pass QC removal)


@dataclass
class Case:
    """A session's arguments and, independently, what they mean."""

    args: dict[str, str]
    stations: set[str] = field(default_factory=lambda: set(BY_STID))
    sensors: set[str] = field(default_factory=lambda: set(SENSORS))
    remove: frozenset[str] = frozenset({RANGE})
    where: Callable[[Report], bool] | None = None  # filter_on, over values in the output units
    english_temp: bool = False
    mph: bool = False
    metadata: bool = True

    @property
    def query(self) -> str:
        return urlencode(self.args, quote_via=quote)

    def out(self, o: Obs) -> float:
        if o.sensor == "air_temp" and self.english_temp:
            return f_of_c(o.value)
        if o.sensor in ("wind_speed", "wind_gust") and self.mph:
            return mph_of_ms(o.value)
        return o.value

    def expect(self, observations: list[Obs]) -> list[Obs]:
        reports: dict[tuple[int, str, int], Report] = {}
        for o in observations:
            if not o.qc & self.remove:
                rep = reports.setdefault((o.batch, o.stid, o.time), {})
                rep.setdefault(o.sensor, []).append(self.out(o))
        return [
            o
            for o in observations
            if o.stid in self.stations
            and o.sensor in self.sensors
            and not o.qc & self.remove
            and (self.where is None or self.where(reports[(o.batch, o.stid, o.time)]))
        ]


def has(sensor: str, test: Callable[[float], bool]) -> Callable[[Report], bool]:
    return lambda rep: any(test(v) for v in rep.get(sensor, ()))


def near(lat: float, lon: float, radius: float) -> set[str]:
    found = {s.stid for s in STATIONS if miles(lat, lon, s.lat, s.lon) <= radius}
    # no station sits near the edge, so rounding cannot decide a case
    assert all(abs(miles(lat, lon, s.lat, s.lon) - radius) > 1 for s in STATIONS)
    return found


def where(**attrs: set[str]) -> set[str]:
    return {s.stid for s in STATIONS if all(getattr(s, k).upper() in v for k, v in attrs.items())}


def cases() -> list[Case]:
    """Every argument alone, and combinations; each selects a real, proper subset."""
    wbb = BY_STID["WBB"]
    kden = BY_STID["KDEN"]
    return [
        Case({}),
        Case({"state": "ut"}, where(state={"UT"})),
        Case({"state": "UT,ca"}, where(state={"UT", "CA"})),
        Case({"network": "1"}, where(network={"1"})),
        Case({"network": "153,2"}, where(network={"153", "2"})),
        Case({"radius": f"{wbb.lat},{wbb.lon},20"}, near(wbb.lat, wbb.lon, 20)),
        Case({"radius": "KDEN,100"}, near(kden.lat, kden.lon, 100)),
        Case({"nwszone": "UTZ003,caz006"}, where(nwszone={"UTZ003", "CAZ006"})),
        Case({"nwsfirezone": "COZ214,UTZ478"}, where(nwsfirezone={"COZ214", "UTZ478"})),
        Case(
            {"bbox": "-112.5,40,-111,42"},
            {s.stid for s in STATIONS if -112.5 <= s.lon <= -111 and 40 <= s.lat <= 42},
        ),
        Case({"stid": "KSLC,wbb"}, {"KSLC", "WBB"}),
        Case({"vars": "air_temp,wind_speed"}, sensors={"air_temp", "wind_speed"}),
        Case({"qc": "none"}, remove=frozenset()),
        Case({"qc": MAXGUST}, remove=frozenset({RANGE, MAXGUST})),
        Case({"qc": "sl_rate_change,sl_persistence"}, remove=frozenset({RANGE, RATE, PERS})),
        Case(
            {"filter_on": "(air_temp < 0) and (wind_speed > 5)"},
            where=lambda r: (
                has("air_temp", lambda v: v < 0)(r) and has("wind_speed", lambda v: v > 5)(r)
            ),
        ),
        Case(
            {
                "filter_on": "(air_temp > 41) or ((wind_gust >= 20) and (wind_speed < 20))",
                "units": "english",
            },
            where=lambda r: (
                has("air_temp", lambda v: v > 41)(r)
                or (
                    has("wind_gust", lambda v: v >= 20)(r)
                    and has("wind_speed", lambda v: v < 20)(r)
                )
            ),
            english_temp=True,
            mph=True,
        ),
        Case({"units": "temp|f,wind|ms"}, english_temp=True),
        Case({"units": "english,speed|mph,temp|C"}, mph=True),
        Case({"metadata": "0"}, metadata=False),
        Case({"metadata": "off", "state": "co"}, where(state={"CO"}), metadata=False),
        Case(
            {"state": "ut", "vars": "air_temp", "qc": "none"},
            where(state={"UT"}),
            {"air_temp"},
            frozenset(),
        ),
        Case(
            {
                "network": "1",
                "vars": "wind_gust,relative_humidity",
                "units": "english",
                "filter_on": "(wind_gust >= 10) or (relative_humidity < 30)",
            },
            where(network={"1"}),
            {"wind_gust", "relative_humidity"},
            where=lambda r: (
                has("wind_gust", lambda v: v >= 10)(r)
                or has("relative_humidity", lambda v: v < 30)(r)
            ),
            english_temp=True,
            mph=True,
        ),
        Case(
            {"bbox": "-125,30,-100,45", "nwsfirezone": "CAZ211,COZ216,NVZ461", "qc": MAXGUST},
            where(nwsfirezone={"CAZ211", "COZ216", "NVZ461"}),
            remove=frozenset({RANGE, MAXGUST}),
        ),
        Case(
            {"radius": "KDEN,100", "stid": "COS01", "vars": "air_temp"},
            {"COS01"},
            {"air_temp"},
        ),
    ]


# -- the client side ----------------------------------------------------------------------------


def ws_base(server: Server) -> str:
    return server.url.replace("http://", "ws://", 1)


def feed_url(server: Server, token: str, query: str = "", session: str | None = None) -> str:
    if session is None:
        return f"{ws_base(server)}/feed/{token}/?{query}"
    return f"{ws_base(server)}/feed/{token}/{session}" + (f"?{query}" if query else "")


def feed_token(client: httpx.Client, project: str = "p1", name: str = "test") -> str:
    r = client.post(f"{API}/{project}/feedtokens", json={"name": name})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


class Feed:
    """One connection, read message by message, checking as it goes that metadata describes
    each station and unit once, before the first data that needs it."""

    def __init__(self, ws: ClientConnection, metadata: bool = True) -> None:
        self.ws = ws
        self.metadata = metadata
        self.auth: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.cursors: list[int] = []  # the ``cursor`` of each data message, in order
        self.stations: dict[str, dict[str, Any]] = {}
        self.units: dict[str, str] = {}
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def open(
        cls,
        server: Server,
        token: str,
        query: str = "",
        session: str | None = None,
        metadata: bool = True,
        **kw: Any,
    ) -> Feed:
        ws = await connect(feed_url(server, token, query, session), open_timeout=TIMEOUT, **kw)
        feed = cls(ws, metadata)
        feed.auth = await feed.next()
        assert feed.auth["type"] == "auth", feed.auth
        return feed

    @property
    def session(self) -> str:
        sid: str = self.auth["session"]
        return sid

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            raw = await self.ws.recv()
        msg: dict[str, Any] = orjson.loads(raw)
        return msg

    def take(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Account for one message; the data rows it carried."""
        if msg["type"] == "metadata":
            assert self.metadata, "metadata was turned off"
            assert set(msg) == {"type", "units", "stations"}
            for st in msg["stations"]:
                assert st["stid"] not in self.stations, f"station {st['stid']} described twice"
                self.stations[st["stid"]] = st
            for u in msg["units"]:
                assert u["sensor"] not in self.units, f"unit of {u['sensor']} described twice"
                self.units[u["sensor"]] = u["unit"]
            return []
        assert msg["type"] == "data", msg
        rows: list[dict[str, Any]] = msg["data"]
        assert rows, "an empty data message"
        if self.cursors:
            assert msg["cursor"] > self.cursors[-1], "data messages out of log order"
        self.cursors.append(msg["cursor"])
        for row in rows:
            assert set(row) == {"stid", "sensor", "set", "date", "value", "qc"}, row
            if self.metadata:
                assert row["stid"] in self.stations, f"data of {row['stid']} before its metadata"
                assert row["sensor"] in self.units, f"data of {row['sensor']} before its unit"
        self.rows.extend(rows)
        return rows

    async def read(self) -> list[dict[str, Any]]:
        """The rows of the next message (none for metadata); raises ConnectionClosed at the end,
        after noting the close code and reason."""
        try:
            msg = await self.next()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            self.close_reason = rcvd.reason if rcvd is not None else ""
            raise
        return self.take(msg)

    async def until(self, keys: set[tuple[str, str, int, int]]) -> None:
        """Read until every one of ``keys`` has arrived."""
        missing = set(keys) - {key_of(r) for r in self.rows}
        while missing:
            for row in await self.read():
                missing.discard(key_of(row))

    async def until_count(self, n: int) -> None:
        while len(self.rows) < n:
            await self.read()

    async def to_close(self) -> int | None:
        """Read everything up to the server's close; the close code."""
        with pytest.raises(ConnectionClosed):
            while True:
                await self.read()
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()


def key_of(row: dict[str, Any]) -> tuple[str, str, int, int]:
    return (row["stid"], row["sensor"], row["set"], row["date"])


def assert_rows(case: Case, feed: Feed, expected: list[Obs]) -> None:
    """The session received exactly ``expected`` (each once, in log order), values in its
    units, QC names as stored, and (unless off) metadata for each station and sensor."""
    got = [key_of(r) for r in feed.rows]
    assert got == [o.key for o in expected], case.args
    for row, o in zip(feed.rows, expected, strict=True):
        assert row["value"] == pytest.approx(case.out(o), abs=1e-6), (case.args, row, o)
        assert sorted(row["qc"]) == sorted(o.qc)
    if case.metadata:
        assert set(feed.stations) == {o.stid for o in expected}
        assert set(feed.units) == {o.sensor for o in expected}
        for sensor, label in feed.units.items():
            assert label == unit_label(case, sensor), (case.args, sensor)
        for stid, st in feed.stations.items():
            assert_station(st, BY_STID[stid])
    else:
        assert not feed.stations and not feed.units


def unit_label(case: Case, sensor: str) -> str:
    if sensor == "air_temp":
        return "Fahrenheit" if case.english_temp else "Celsius"
    if sensor in ("wind_speed", "wind_gust"):
        return "mph" if case.mph else "m/s"
    return "%"


def assert_station(got: dict[str, Any], st: Station) -> None:
    """A station as the reference's metadata example: latitude and longitude as strings,
    elevation a number (feet), network an integer."""
    assert got["stid"] == st.stid
    assert isinstance(got["latitude"], str) and float(got["latitude"]) == st.lat
    assert isinstance(got["longitude"], str) and float(got["longitude"]) == st.lon
    assert got["elevation"] == pytest.approx(st.elevation / 0.3048, abs=0.1)
    assert got["network"] == int(st.network)
    assert got["state"] == st.state
    assert (got["nwszone"], got["nwsfirezone"]) == (st.nwszone, st.nwsfirezone)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "data")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(srv: Server) -> Iterator[httpx.Client]:
    with srv.client() as c:
        make_network(c)
        yield c


def basic(key: dict[str, str]) -> tuple[str, str]:
    return (key["key_id"], key["secret"])


def account(client: httpx.Client, project: str, sa: str, role: str) -> dict[str, str]:
    r = client.post(f"{API}/{project}/serviceaccounts", json={"id": sa, "role": role})
    assert r.status_code == 201, r.text
    r = client.post(f"{API}/{project}/serviceaccounts/{sa}/keys")
    assert r.status_code == 201, r.text
    key: dict[str, str] = r.json()
    return key


# -- feed tokens --------------------------------------------------------------------------------


def test_feed_tokens_crud_shown_once_and_only_for_project_admins(
    srv: Server, api: httpx.Client
) -> None:
    r = api.post(f"{API}/p1/feedtokens", json={"name": "dashboard"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert set(made) == {"id", "name", "project", "created_at", "token"}
    assert (made["name"], made["project"]) == ("dashboard", "p1")
    listed = api.get(f"{API}/p1/feedtokens").json()["feedtokens"]
    assert listed == [{k: v for k, v in made.items() if k != "token"}]  # the token is not kept
    assert made["token"] not in api.get(f"{API}/p1/feedtokens").text

    admin = account(api, "p1", "boss", "admin")
    manager = account(api, "p1", "writer", "manager")
    user = account(api, "p1", "reader", "user")
    with httpx.Client(base_url=srv.url, auth=basic(admin), timeout=10) as c:
        r = c.post(f"{API}/p1/feedtokens", json={"name": "by-admin"})
        assert r.status_code == 201, r.text
        assert len(c.get(f"{API}/p1/feedtokens").json()["feedtokens"]) == 2
    for key in (manager, user):
        with httpx.Client(base_url=srv.url, auth=basic(key), timeout=10) as c:
            expect_error(c.post(f"{API}/p1/feedtokens", json={"name": "x"}), 403)
            expect_error(c.get(f"{API}/p1/feedtokens"), 403)
            expect_error(c.delete(f"{API}/p1/feedtokens/{made['id']}"), 403)
    with httpx.Client(base_url=srv.url, timeout=10) as anonymous:
        expect_error(anonymous.post(f"{API}/p1/feedtokens", json={"name": "x"}), 401)
    # bad bodies: a clear 4xx naming the field
    err = expect_error(api.post(f"{API}/p1/feedtokens", json={"name": ""}), 422)
    assert any(d.get("field") == "name" for d in err["details"]), err
    err = expect_error(api.post(f"{API}/p1/feedtokens", json={"name": "a", "x": 1}), 422)
    expect_error(api.post(f"{API}/nope/feedtokens", json={"name": "a"}), 404)
    expect_error(api.delete(f"{API}/p1/feedtokens/ftnothere"), 404)
    assert len(api.get(f"{API}/p1/feedtokens").json()["feedtokens"]) == 2

    # a token of project p2 is not p1's to revoke
    assert api.post(API, json={"id": "p2"}).status_code == 201
    other = api.post(f"{API}/p2/feedtokens", json={"name": "x"}).json()
    expect_error(api.delete(f"{API}/p1/feedtokens/{other['id']}"), 404)
    assert api.delete(f"{API}/p1/feedtokens/{made['id']}").status_code == 204
    assert [t["name"] for t in api.get(f"{API}/p1/feedtokens").json()["feedtokens"]] == ["by-admin"]


async def test_revoking_a_token_closes_its_sessions_and_invalidates_it(
    srv: Server, api: httpx.Client
) -> None:
    made = api.post(f"{API}/p1/feedtokens", json={"name": "x"}).json()
    token = made["token"]
    kept = feed_token(api, name="kept")
    feed = await Feed.open(srv, token)
    other = await Feed.open(srv, kept)
    assert feed.auth["code"] == "success"
    assert api.delete(f"{API}/p1/feedtokens/{made['id']}").status_code == 204
    assert await feed.to_close() == 1008
    assert "revoked" in feed.close_reason
    again = await Feed.open(srv, token)
    assert again.auth == {
        "type": "auth",
        "code": "failed",
        "messages": ["invalid token"],
        "session": "",
    }
    assert await again.to_close() == 1008
    resumed = await Feed.open(srv, token, session=feed.session)
    assert resumed.auth["code"] == "failed" and resumed.auth["messages"] == ["invalid token"]
    # the other token's session carries on
    post(api, minute_batch(0, minute_ms(int(time.time() * 1000)) - 60_000, 0))
    await other.until_count(1)
    await other.close()


async def test_a_token_sees_only_its_own_project(srv: Server, api: httpx.Client) -> None:
    make_network(api, "p2")
    t1 = feed_token(api, "p1")
    f1 = await Feed.open(srv, t1)
    now = minute_ms(int(time.time() * 1000))
    other = minute_batch(0, now - 120_000, 0)
    post(api, other, "p2")
    mine = minute_batch(1, now - 60_000, 1)
    post(api, mine, "p1")
    expected = Case({}).expect(mine)
    await f1.until({o.key for o in expected})
    assert_rows(Case({}), f1, expected)
    await f1.close()


# -- auth messages ------------------------------------------------------------------------------


async def test_auth_success_and_invalid_token_exactly_as_the_reference(
    srv: Server, api: httpx.Client
) -> None:
    token = feed_token(api)
    feed = await Feed.open(srv, token, "state=ut")
    assert set(feed.auth) == {"type", "code", "messages", "session"}
    assert feed.auth["code"] == "success"
    assert feed.auth["messages"] == ["Starting new session."]
    assert len(feed.session) == 36 and feed.session.count("-") == 4  # a UUID
    await feed.close()
    for bad in ("nonsense", token + "x", "ft_"):
        failed = await Feed.open(srv, bad, "state=ut")
        assert failed.auth == {
            "type": "auth",
            "code": "failed",
            "messages": ["invalid token"],
            "session": "",
        }
        assert await failed.to_close() == 1008
    # the form without the trailing slash works too
    ws = await connect(f"{ws_base(srv)}/feed/{token}", open_timeout=TIMEOUT)
    assert orjson.loads(await ws.recv())["code"] == "success"
    await ws.close()


BAD_ARGUMENTS = [
    ("state", ""),
    ("network", ",,"),
    ("radius", "91,0,5"),
    ("radius", "KSLC,far"),
    ("radius", "1,2,3,4"),
    ("nwszone", ""),
    ("nwsfirezone", ""),
    ("bbox", "1,2,3"),
    ("bbox", "10,0,0,10"),
    ("stid", ""),
    ("vars", ""),
    ("qc", "sl_bogus_check"),
    ("filter_on", "(air_temp <"),
    ("filter_on", "air_temp < 0"),
    ("start", "2024"),
    ("start", "202402301200"),
    ("start", "200001010000"),
    ("end", "209901010000"),
    ("rewind", "soon"),
    ("rewind", "0"),
    ("rewind", "-5"),
    ("rewind", "nan"),
    ("rewind", "100000"),
    ("units", "imperial"),
    ("units", "temp|kelvinish"),
    ("metadata", "maybe"),
    ("colour", "red"),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS)
async def test_bad_arguments_fail_in_the_auth_message_naming_the_argument(
    srv: Server, api: httpx.Client, name: str, value: str
) -> None:
    token = feed_token(api)
    feed = await Feed.open(srv, token, urlencode({name: value}))
    assert feed.auth["type"] == "auth" and feed.auth["code"] == "failed", feed.auth
    assert feed.auth["session"] == ""
    assert all(isinstance(m, str) for m in feed.auth["messages"])
    assert any(name in m for m in feed.auth["messages"]), feed.auth
    assert await feed.to_close() == 1008


async def test_more_bad_arguments(srv: Server, api: httpx.Client) -> None:
    token = feed_token(api)
    now = time.time()
    start = time.strftime("%Y%m%d%H%M", time.gmtime(now - 3600))
    early = time.strftime("%Y%m%d%H%M", time.gmtime(now - 7200))
    for query, name in [
        (f"start={start}&end={early}", "end"),
        (f"start={start}&rewind=5", "rewind"),
        ("end=202401010000", "end"),
        ("rewind=5&rewind=6", "rewind"),
        ("units=english&units=metric", "units"),
        ("state=ut&filter_on=(x>1)&filter_on=(y>1)", "filter_on"),
    ]:
        feed = await Feed.open(srv, token, query)
        assert feed.auth["code"] == "failed", (query, feed.auth)
        assert any(name in m for m in feed.auth["messages"]), (query, feed.auth)
        assert await feed.to_close() == 1008


HOSTILE_FILTERS = [
    "(air_temp > 1); DROP TABLE obs; --",
    "(air_temp > 1) or 1=1",
    "' OR '1'='1",
    "(air_temp > (select 1))",
    "((((air_temp > 1)",
    "(air_temp > 1))))",
    "(" * 2000,  # the nesting limit (a URL of about 6 KB; the server's request line ends at 8 KB)
    "(air_temp > 1) and " * 130 + "(air_temp > 1)",  # the condition limit
    "(" + "a" * 4200 + " > 1)",  # the length limit
    "(température > 1)",
    "(air_temp > 1\u202e)",
    "(air_temp > 1)\x00",
    "\x00",
    "(air_temp > 1e999)",
    "(air_temp > NaN)",
    "(air_temp >= )",
    "",
]


async def test_hostile_filter_on_fails_naming_filter_on_and_the_server_carries_on(
    srv: Server, api: httpx.Client
) -> None:
    token = feed_token(api)
    for text in HOSTILE_FILTERS:
        feed = await Feed.open(srv, token, urlencode({"filter_on": text}, quote_via=quote))
        assert feed.auth["code"] == "failed", (text[:40], feed.auth)
        assert any("filter_on" in m for m in feed.auth["messages"]), feed.auth
        assert await feed.to_close() == 1008
    # raw bytes that are not UTF-8, and a NUL, in the query string itself
    for raw in ("filter_on=%FF%FE", "filter_on=(air_temp%00>1)"):
        feed = await Feed.open(srv, token, raw)
        assert feed.auth["code"] == "failed", feed.auth
        assert await feed.to_close() == 1008
    # the server is fine: a good session still gets its data
    assert api.get("/healthz").status_code == 200
    feed = await Feed.open(srv, token, urlencode({"filter_on": "(air_temp < 100)"}))
    assert feed.auth["code"] == "success"
    obs = minute_batch(0, minute_ms(int(time.time() * 1000)) - 60_000, 0)
    post(api, obs)
    case = Case({"filter_on": "(air_temp < 100)"}, where=has("air_temp", lambda v: v < 100))
    await feed.until({o.key for o in case.expect(obs)})
    assert_rows(case, feed, case.expect(obs))
    await feed.close()


# -- every argument, live -----------------------------------------------------------------------


async def test_every_argument_alone_and_combined_live(srv: Server, api: httpx.Client) -> None:
    token = feed_token(api)
    all_cases = cases()
    feeds = [await Feed.open(srv, token, c.query, metadata=c.metadata) for c in all_cases]
    for c, f in zip(all_cases, feeds, strict=True):
        assert f.auth["code"] == "success", (c.args, f.auth)
    now = minute_ms(int(time.time() * 1000))
    observations: list[Obs] = []
    minutes = 14
    for m in range(minutes):
        batch = minute_batch(m, now - (minutes - m) * 60_000, m)
        post(api, batch)
        observations += batch
    check_flags(api, observations)
    for c, f in zip(all_cases, feeds, strict=True):
        expected = c.expect(observations)
        # every case selects a real, proper subset (or all of it, for the default)
        assert expected, c.args
        if c.args and c.args != {"qc": "none"}:
            assert len(expected) < len(Case({}, remove=frozenset()).expect(observations))
        await f.until({o.key for o in expected})
        assert_rows(c, f, expected)
    for f in feeds:
        await f.close()


# -- start/end, rewind --------------------------------------------------------------------------


async def test_period_sends_the_period_then_closes(srv: Server, api: httpx.Client) -> None:
    token = feed_token(api)
    now = minute_ms(int(time.time() * 1000))
    observations: list[Obs] = []
    for m in range(10):
        batch = minute_batch(m, now - (30 - m) * 60_000, m)
        post(api, batch)
        observations += batch
    t = [now - (30 - m) * 60_000 for m in range(10)]
    start, end = date_of(t[2]), date_of(t[6])
    for case in (
        Case({}),
        Case({"state": "ut", "vars": "air_temp"}, where(state={"UT"}), {"air_temp"}),
        Case({"filter_on": "(air_temp < 0)"}, where=has("air_temp", lambda v: v < 0)),
    ):
        args = {**case.args, "start": str(start), "end": str(end)}
        feed = await Feed.open(srv, token, urlencode(args))
        assert feed.auth["code"] == "success", feed.auth
        assert await feed.to_close() == 1000
        assert "period" in feed.close_reason
        in_period = [o for o in observations if t[2] <= o.time <= t[6]]
        expected = sorted(case.expect(in_period), key=lambda o: (o.time, o.cursor))
        assert_rows(case, feed, expected)
        # resuming a finished period sends nothing more and closes again
        again = await Feed.open(srv, token, session=feed.session)
        assert again.auth["messages"] == ["Restarting from provided session id."]
        assert await again.to_close() == 1000
        assert again.rows == []
    # a period without an end runs to now
    feed = await Feed.open(srv, token, f"start={date_of(t[8])}&stid=KLAX")
    assert await feed.to_close() == 1000
    assert [key_of(r) for r in feed.rows] == [
        o.key for o in Case({}).expect(observations) if o.time >= t[8] and o.stid == "KLAX"
    ]
    # 48 hours back is the limit
    old = time.strftime("%Y%m%d%H%M", time.gmtime(time.time() - 49 * 3600))
    feed = await Feed.open(srv, token, f"start={old}")
    assert feed.auth["code"] == "failed" and any("start" in m for m in feed.auth["messages"])
    ok = time.strftime("%Y%m%d%H%M", time.gmtime(time.time() - 47 * 3600))
    feed = await Feed.open(srv, token, f"start={ok}&end={date_of(t[0])}&stid=KLAX")
    assert feed.auth["code"] == "success"
    assert await feed.to_close() == 1000
    assert {r["date"] for r in feed.rows} == {date_of(t[0])}


# -- metadata -----------------------------------------------------------------------------------


async def test_metadata_once_per_connection_before_its_data(srv: Server, api: httpx.Client) -> None:
    token = feed_token(api)
    feed = await Feed.open(srv, token, "stid=WBB,KDEN&vars=air_temp")
    now = minute_ms(int(time.time() * 1000))
    obs: list[Obs] = []
    for m in range(3):
        # one station first, then both: the second station's metadata comes with its first data
        part = [o for o in minute_batch(m, now - (10 - m) * 60_000, m) if m or o.stid == "WBB"]
        post(api, part)
        obs += part
    case = Case({"stid": "WBB,KDEN", "vars": "air_temp"}, {"WBB", "KDEN"}, {"air_temp"})
    expected = case.expect(obs)
    await feed.until({o.key for o in expected})
    assert_rows(case, feed, expected)  # each station and unit once, before their data
    assert {(r["stid"], r["set"]) for r in feed.rows} == {("WBB", 1), ("WBB", 2), ("KDEN", 1)}
    await feed.close()
    # a new connection (a resume) describes them again before its first data
    post(api, minute_batch(5, now - 4 * 60_000, 5))
    resumed = await Feed.open(srv, token, session=feed.session)
    assert resumed.auth["code"] == "success"
    await resumed.until_count(3)
    assert set(resumed.stations) == {"WBB", "KDEN"} and set(resumed.units) == {"air_temp"}
    await resumed.close()


# -- the simulated mesonet ----------------------------------------------------------------------


async def test_every_domain_argument_selects_a_real_subset_of_the_simulated_mesonet(
    srv: Server,
) -> None:
    """The simulator spreads stations over states, networks, zones and space, so that each
    domain argument selects a real, proper subset (checked through the feed itself)."""
    from streamgauge.sim.runner import setup_network

    headers = {"Authorization": f"Bearer {srv.token}"}
    async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as c:
        net = await setup_network(c, "sim", 40, seed=7)
    meso = net.mesonet
    t = minute_ms(int(time.time() * 1000)) - 5 * 60_000
    with srv.client() as c:
        rows = [
            {"device": s.device_id, "variable": "air_temp", "time": t, "value": 10.0} for s in meso
        ]
        assert c.post(f"{API}/sim/observations", json=rows).status_code == 200
        token = feed_token(c, "sim")
    a, b = meso[0], meso[1]
    lats = sorted(s.lat for s in meso)
    lons = sorted(s.lon for s in meso)
    box = (lons[5], lats[5], lons[30], lats[30])
    arguments = [
        ({"state": a.state}, {s.id for s in meso if s.state == a.state}),
        ({"network": a.network}, {s.id for s in meso if s.network == a.network}),
        ({"nwszone": a.nwszone}, {s.id for s in meso if s.nwszone == a.nwszone}),
        ({"nwsfirezone": a.nwsfirezone}, {s.id for s in meso if s.nwsfirezone == a.nwsfirezone}),
        (
            {"radius": f"{a.id},300"},
            {s.id for s in meso if miles(a.lat, a.lon, s.lat, s.lon) <= 300},
        ),
        (
            {"radius": f"{a.lat},{a.lon},300"},
            {s.id for s in meso if miles(a.lat, a.lon, s.lat, s.lon) <= 300},
        ),
        (
            {"bbox": ",".join(map(str, box))},
            {s.id for s in meso if box[0] <= s.lon <= box[2] and box[1] <= s.lat <= box[3]},
        ),
        ({"stid": f"{a.id},{b.id}"}, {a.id, b.id}),
    ]
    for args, expected in arguments:
        assert expected and len(expected) < len(meso), args  # a real, proper subset
        query = urlencode({**args, "start": str(date_of(t))}, quote_via=quote)
        feed = await Feed.open(srv, token, query)
        assert feed.auth["code"] == "success", feed.auth
        assert await feed.to_close() == 1000
        assert {r["stid"] for r in feed.rows} == expected, args
        assert len(feed.rows) == len(expected)


async def test_per_message_compression_is_off_unless_configured(
    srv: Server, api: httpx.Client, tmp_path: Path
) -> None:
    token = feed_token(api)
    ws = await connect(f"{ws_base(srv)}/feed/{token}/", open_timeout=TIMEOUT)  # offers deflate
    assert ws.response is not None
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    assert orjson.loads(await ws.recv())["code"] == "success"
    await ws.close()
    other = start_server(tmp_path / "other", ws_per_message_deflate=True)
    try:
        with other.client() as c:
            make_network(c)
            token = feed_token(c)
            feed = await Feed.open(other, token, "stid=WBB")
            ws = feed.ws
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            # live messages written straight to the connection are compressed like the rest
            post(c, minute_batch(0, minute_ms(int(time.time() * 1000)) - 60_000, 0))
            await feed.until_count(1)
            assert {r["stid"] for r in feed.rows} == {"WBB"} and "WBB" in feed.stations
        await ws.close()
    finally:
        other.stop()


async def test_an_unexpected_failure_closes_with_1011_and_is_logged(
    srv: Server,
    api: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streamgauge.faces.synoptic import messages

    def broken(self: object, series: object) -> bytes | None:
        raise ValueError("metadata broke")

    token = feed_token(api)
    feed = await Feed.open(srv, token, "stid=WBB")
    assert feed.auth["code"] == "success"
    monkeypatch.setattr(messages.Metadata, "message", broken)
    post(api, minute_batch(0, minute_ms(int(time.time() * 1000)) - 60_000, 0))
    assert await feed.to_close() == 1011
    assert any("failed" in r.getMessage() for r in caplog.records if r.name == "streamgauge.feed")
