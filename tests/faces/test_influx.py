"""The InfluxDB write face (faces/influx.py) through the unmodified ``influxdb`` (1.x) and
``influxdb-client`` (2.x) packages, against a real server on loopback: 204 after commit, one
observation per field, every credential form, 401/404, all or nothing with InfluxDB's error
shapes naming the line, autocreate with catalog units, the device tag and tags as labels."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError
from influxdb_client import InfluxDBClient as InfluxDB2
from influxdb_client import Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from tests.conftest import Server, make_station


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def stored(client: httpx.Client, project: str = "p1") -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/projects/{project}/observations", params={"limit": 10000})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["observations"]
    return rows


@pytest.fixture
def station(server: Server, client: httpx.Client) -> Server:
    make_station(client, "p1")
    return server


@pytest.fixture
def v2(station: Server) -> Iterator[InfluxDB2]:
    with InfluxDB2(url=station.url, token=station.token, org="any") as c:
        yield c


def key(client: httpx.Client, role: str = "manager") -> tuple[str, str]:
    """A service account of p1 with ``role``, and its key (id, secret)."""
    r = client.post("/api/v1/projects/p1/serviceaccounts", json={"role": role})
    assert r.status_code == 201, r.text
    account = r.json()["id"]
    r = client.post(f"/api/v1/projects/p1/serviceaccounts/{account}/keys")
    assert r.status_code == 201, r.text
    return r.json()["key_id"], r.json()["secret"]


def test_v1_client_writes_points(station: Server, client: httpx.Client) -> None:
    db = InfluxDBClient("127.0.0.1", port_of(station), "", station.token, "p1")
    points = [
        {
            "measurement": "weather",
            "tags": {"device": "d0", "room": "x"},
            "fields": {"air_temp": 21.5, "wind_speed": 3},
            "time": 1_700_000_000_000 + i,
        }
        for i in range(3)
    ]
    assert db.write_points(points, time_precision="ms") is True
    got = stored(client)
    assert len(got) == 6
    assert {(r["variable"], r["value"]) for r in got} == {("air_temp", 21.5), ("wind_speed", 3.0)}
    assert got[0]["time"] == "2023-11-14T22:13:20Z"
    # Re-sent points are duplicates, not stored twice.
    assert db.write_points(points, time_precision="ms") is True
    assert len(stored(client)) == 6


@pytest.mark.parametrize("precision", ["s", "ms", "u", "n", "m", "h"])
def test_v1_precisions(station: Server, client: httpx.Client, precision: str) -> None:
    db = InfluxDBClient("127.0.0.1", port_of(station), "", station.token, "p1")
    scale = {"s": 1, "ms": 10**3, "u": 10**6, "n": 10**9, "m": 1 / 60, "h": 1 / 3600}[precision]
    stamp = int(1_699_999_200 * scale)  # a whole hour
    line = f"weather,device=d1 air_temp=5 {stamp}"
    assert db.write_points([line], protocol="line", time_precision=precision)
    (row,) = stored(client)
    assert row["time"] == "2023-11-14T22:00:00Z"


def test_v1_credentials(station: Server, client: httpx.Client) -> None:
    key_id, secret = key(client)
    port = port_of(station)
    line = ["weather,device=d0 air_temp=1 1700000000"]
    # Basic auth with the key (the client's username and password).
    db = InfluxDBClient("127.0.0.1", port, key_id, secret, "p1")
    assert db.write_points(line, protocol="line", time_precision="s")
    # u and p parameters, and Authorization: Token.
    url = f"{station.url}/write"
    r = httpx.post(
        url, params={"db": "p1", "u": key_id, "p": secret}, content=b"m,device=d0 air_temp=2"
    )
    assert r.status_code == 204, r.text
    r = httpx.post(
        url,
        params={"db": "p1"},
        content=b"m,device=d0 air_temp=3",
        headers={"Authorization": f"Token {station.token}"},
    )
    assert r.status_code == 204, r.text
    r = httpx.post(
        url,
        params={"db": "p1"},
        content=b"m,device=d0 air_temp=4",
        headers={"Authorization": f"Token {key_id}:{secret}"},
    )
    assert r.status_code == 204, r.text
    assert len(stored(client)) == 4
    # A wrong credential is a 401 in the 1.x shape; so is none.
    bad = InfluxDBClient("127.0.0.1", port, key_id, "wrong", "p1")
    with pytest.raises(InfluxDBClientError) as caught:
        bad.write_points(line, protocol="line")
    assert caught.value.code == 401
    r = httpx.post(url, params={"db": "p1"}, content=b"m,device=d0 air_temp=5")
    assert r.status_code == 401 and set(r.json()) == {"error"}
    # A read-only role is refused; an unknown database is a 404.
    ro_id, ro_secret = key(client, "user")
    r = httpx.post(url, params={"db": "p1", "u": ro_id, "p": ro_secret}, content=line[0].encode())
    assert r.status_code == 403 and "error" in r.json()
    r = httpx.post(url, params={"db": "nope", "p": station.token}, content=line[0].encode())
    assert r.status_code == 404 and r.json() == {"error": 'database not found: "nope"'}
    r = httpx.post(url, params={"p": station.token}, content=line[0].encode())
    assert r.status_code == 400 and "database is required" in r.json()["error"]
    assert len(stored(client)) == 4


def test_v1_bad_line_stores_nothing(station: Server, client: httpx.Client) -> None:
    db = InfluxDBClient("127.0.0.1", port_of(station), "", station.token, "p1")
    lines = ["weather,device=d0 air_temp=1 1", "weather,device=d0 air_temp=oops 2"]
    with pytest.raises(InfluxDBClientError) as caught:
        db.write_points(lines, protocol="line")
    assert caught.value.code == 400
    assert "line 2" in caught.value.content and "unable to parse" in caught.value.content
    with pytest.raises(InfluxDBClientError) as caught:
        db.write_points(
            ["weather,device=d0 air_temp=1 1", "weather,device=zz air_temp=1 2"], protocol="line"
        )
    assert caught.value.code == 400
    assert "line 2" in caught.value.content and "unknown device 'zz'" in caught.value.content
    assert stored(client) == []


def test_v2_client_writes(station: Server, client: httpx.Client, v2: InfluxDB2) -> None:
    write = v2.write_api(write_options=SYNCHRONOUS)
    write.write(
        bucket="p1",
        record=[
            Point("weather")
            .tag("device", "d1")
            .field("air_temp", 5.5)
            .field("wind_speed", 2)
            .time(1_700_000_001_000, WritePrecision.MS),
            "weather,device=d0 air_temp=7i 1700000002000000000",
        ],
    )
    write.write(
        bucket="p1",
        record={
            "measurement": "w",
            "tags": {"device": "d0"},
            "fields": {"air_temp": 8.0},
            "time": 1_700_000_003,
        },
        write_precision=WritePrecision.S,
    )
    got = stored(client)
    assert {(r["device"], r["variable"], r["value"], r["time"]) for r in got} == {
        ("d1", "wind_speed", 2.0, "2023-11-14T22:13:21Z"),
        ("d1", "air_temp", 5.5, "2023-11-14T22:13:21Z"),
        ("d0", "air_temp", 7.0, "2023-11-14T22:13:22Z"),
        ("d0", "air_temp", 8.0, "2023-11-14T22:13:23Z"),
    }
    assert len(got) == 4


def test_v2_errors(station: Server, client: httpx.Client, v2: InfluxDB2) -> None:
    write = v2.write_api(write_options=SYNCHRONOUS)
    with pytest.raises(ApiException) as caught:
        write.write(
            bucket="p1", record="w,device=d0 air_temp=1 1\nw,device=d0 nope=2 2\nw air_temp=1"
        )
    assert caught.value.status == 400
    body = json.loads(caught.value.body)
    assert body["code"] == "invalid"
    assert "line 3" in body["message"] and "'device' tag" in body["message"]
    with pytest.raises(ApiException) as caught:
        write.write(bucket="p1", record="w,device=d0 air_temp=1 1\nw,device=d0 nope=2 2")
    body = json.loads(caught.value.body)
    assert caught.value.status == 400 and "line 2" in body["message"] and "nope" in body["message"]
    with pytest.raises(ApiException) as caught:
        write.write(bucket="nope", record="w,device=d0 air_temp=1 1")
    assert caught.value.status == 404
    assert json.loads(caught.value.body) == {
        "code": "not found",
        "message": 'bucket "nope" not found',
    }
    with InfluxDB2(url=station.url, token="wrong", org="o") as other:
        with pytest.raises(ApiException) as caught:
            other.write_api(write_options=SYNCHRONOUS).write(
                bucket="p1", record="w,device=d0 air_temp=1"
            )
    assert caught.value.status == 401
    assert json.loads(caught.value.body)["code"] == "unauthorized"
    assert stored(client) == []


def test_v2_conflict_names_the_line(station: Server, client: httpx.Client) -> None:
    headers = {"Authorization": f"Token {station.token}"}
    url = f"{station.url}/api/v2/write"
    params = {"bucket": "p1", "org": "o", "precision": "s"}
    r = httpx.post(
        url, params=params, headers=headers, content=b"w,device=d0 air_temp=1 1700000000"
    )
    assert r.status_code == 204
    body = b"w,device=d0 air_temp=5 1700000001\nw,device=d0 air_temp=2 1700000000"
    r = httpx.post(url, params=params, headers=headers, content=body)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid" and "line 2" in r.json()["message"]
    assert len(stored(client)) == 1  # all or nothing: line 1 was not stored either


def test_gzip_body_and_bad_precision(station: Server, client: httpx.Client) -> None:
    headers = {"Authorization": f"Token {station.token}", "Content-Encoding": "gzip"}
    url = f"{station.url}/api/v2/write"
    body = gzip.compress(b"w,device=d0 air_temp=1 1700000000000")
    r = httpx.post(url, params={"bucket": "p1", "precision": "ms"}, headers=headers, content=body)
    assert r.status_code == 204, r.text
    assert len(stored(client)) == 1
    r = httpx.post(url, params={"bucket": "p1", "precision": "x"}, headers=headers, content=body)
    assert r.status_code == 400 and "precision" in r.json()["message"]
    r = httpx.post(url, params={"bucket": "p1"}, headers=headers, content=b"not gzip")
    assert r.status_code == 400 and "gzip" in r.json()["message"]


def test_autocreate_with_catalog_units_and_labels(server: Server, client: httpx.Client) -> None:
    r = client.post(
        "/api/v1/projects",
        json={"id": "auto", "autocreate": True, "device_tag": "host", "tags_as_labels": True},
    )
    assert r.status_code == 201, r.text
    assert r.json()["autocreate"] is True
    db = InfluxDBClient("127.0.0.1", port_of(server), "", server.token, "auto")
    lines = [
        "cpu,host=h1,rack=r7 air_temp=20.5,load=0.7 1700000000",
        "cpu,host=h2 relative_humidity=40i 1700000000",
    ]
    assert db.write_points(lines, protocol="line", time_precision="s")
    r = client.get("/api/v1/projects/auto/devices/h1")
    assert r.status_code == 200 and r.json()["labels"] == {"rack": "r7"}
    r = client.get("/api/v1/projects/auto/devices/h1/variables/air_temp")
    assert r.json()["unit"] == "degC"  # the catalog's unit
    r = client.get("/api/v1/projects/auto/devices/h1/variables/load")
    assert r.status_code == 200 and r.json()["unit"] is None  # not in the catalog
    assert len(stored(client, "auto")) == 3
    # A new tag value updates the label; a bad id is refused before anything is created.
    assert db.write_points(
        ["cpu,host=h1,rack=r8 load=0.5 1700000001"], protocol="line", time_precision="s"
    )
    assert client.get("/api/v1/projects/auto/devices/h1").json()["labels"] == {"rack": "r8"}
    with pytest.raises(InfluxDBClientError) as caught:
        db.write_points(
            ["cpu,host=h3 load=1 1700000002", "cpu,host=-bad load=1 1"], protocol="line"
        )
    assert caught.value.code == 400 and "line 2" in caught.value.content
    assert client.get("/api/v1/projects/auto/devices/h3").status_code == 404


def test_without_autocreate_unknown_variable_is_refused(
    station: Server, client: httpx.Client
) -> None:
    r = httpx.post(
        f"{station.url}/write",
        params={"db": "p1", "p": station.token},
        content=b"w,device=d0,rack=r1 humidity=1",
    )
    assert r.status_code == 400
    assert (
        r.json()["error"].startswith("line 1: ") and "no variable 'humidity'" in r.json()["error"]
    )
    assert client.get("/api/v1/projects/p1/devices/d0").json()["labels"] == {
        "parity": "even",
        "n": "0",
    }


def test_autocreate_is_undone_when_the_body_is_refused(
    server: Server, client: httpx.Client
) -> None:
    """Regression (issue 16): the devices, variables and labels a body autocreated were
    committed before its points, so a body refused for a conflict with a stored value left
    them behind. Now they commit in the points' transaction, or not at all."""
    r = client.post(
        "/api/v1/projects",
        json={"id": "auto", "autocreate": True, "device_tag": "host", "tags_as_labels": True},
    )
    assert r.status_code == 201, r.text
    db = InfluxDBClient("127.0.0.1", port_of(server), "", server.token, "auto")
    assert db.write_points(
        ["cpu,host=h1,rack=r1 air_temp=20 1700000000"], protocol="line", time_precision="s"
    )
    before = client.get("/api/v1/projects/auto/devices").json()
    body = [
        "cpu,host=h2,rack=r9 air_temp=1,load=2 1700000001",  # a new device, two variables
        "cpu,host=h1,rack=r2 load=3 1700000001",  # a new variable and label on h1
        "cpu,host=h1 air_temp=21 1700000000",  # conflicts with the stored 20
    ]
    with pytest.raises(InfluxDBClientError) as caught:
        db.write_points(body, protocol="line", time_precision="s")
    assert caught.value.code == 400 and "line 3" in caught.value.content
    assert "air_temp" in caught.value.content
    assert client.get("/api/v1/projects/auto/devices/h2").status_code == 404
    assert client.get("/api/v1/projects/auto/devices/h1/variables/load").status_code == 404
    h1 = client.get("/api/v1/projects/auto/devices/h1").json()
    assert h1["labels"] == {"rack": "r1"}
    assert client.get("/api/v1/projects/auto/devices").json() == before
    assert [(r["device"], r["value"]) for r in stored(client, "auto")] == [("h1", 20.0)]
    # The same body without the conflicting line is stored whole, what it creates with it.
    assert db.write_points(body[:2], protocol="line", time_precision="s")
    assert client.get("/api/v1/projects/auto/devices/h2").json()["labels"] == {"rack": "r9"}
    assert client.get("/api/v1/projects/auto/devices/h1").json()["labels"] == {"rack": "r2"}
    assert client.get("/api/v1/projects/auto/devices/h2/variables/air_temp").json()["unit"] == (
        "degC"
    )
    assert len(stored(client, "auto")) == 4
