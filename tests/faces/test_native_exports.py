"""History formats (paged and ``all=true`` exports), stations as GeoJSON, ``plot.png``."""

from __future__ import annotations

import io

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import expect_error, make_station, rows

OBS = "/api/v1/projects/p1/observations"


@pytest.fixture
def data(client: httpx.Client) -> httpx.Client:
    make_station(client)
    r = client.post(OBS, json=rows(25_000))  # more than two export pages
    assert r.status_code == 200, r.text
    return client


def test_export_streams_every_page_in_each_format(data: httpx.Client) -> None:
    r = data.get(OBS, params={"all": "true", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert len(lines) == 25_001 and lines[1].startswith("1,d0,air_temp,1,")
    assert orjson.loads(r.headers["x-units"]) == {"air_temp": "Celsius", "wind_speed": "m/s"}
    r = data.get(OBS, params={"all": "true", "format": "ndjson", "device": "d1"})
    got = [orjson.loads(x)["cursor"] for x in r.content.splitlines()]
    assert got == list(range(2, 25_001, 2))
    r = data.get(OBS, params={"all": "true", "format": "parquet", "units": "english"})
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 25_000
    assert table.column("cursor").to_pylist() == list(range(1, 25_001))
    assert table.column("value").to_pylist()[:2] == [32.0, 33.8]  # air_temp in Fahrenheit
    assert orjson.loads(table.schema.metadata[b"units"])["air_temp"] == "Fahrenheit"


def test_paged_parquet_and_accept_header(data: httpx.Client) -> None:
    r = data.get(OBS, params={"format": "parquet", "limit": 7})
    assert pq.read_table(io.BytesIO(r.content)).num_rows == 7 and r.headers["x-next-page"]
    r = data.get(OBS, params={"limit": 2}, headers={"Accept": "text/csv"})
    assert r.text.splitlines()[0] == "cursor,device,variable,set,time,value,qc"
    r = data.get(
        OBS, params={"limit": 2, "all": "true"}, headers={"Accept": "application/x-ndjson"}
    )
    assert len(r.content.splitlines()) == 25_000


def test_an_empty_export_is_a_valid_file(data: httpx.Client) -> None:
    r = data.get(OBS, params={"all": "true", "format": "parquet", "start": "2030-01-01T00:00:00Z"})
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 0 and "value_text" in table.schema.names


def test_export_errors_are_4xx(data: httpx.Client) -> None:
    expect_error(data.get(OBS, params={"all": "true"}), 400)
    expect_error(data.get(OBS, params={"all": "maybe", "format": "csv"}), 422)
    expect_error(data.get(OBS, params={"all": "true", "format": "csv", "start": "x"}), 400)
    expect_error(data.get("/api/v1/projects/nope/observations", params={"all": "true"}), 404)


def test_sites_geojson(data: httpx.Client) -> None:
    data.post("/api/v1/projects/p1/sites", json={"id": "s2", "name": "no coordinates"})
    r = data.get("/api/v1/projects/p1/sites.geojson")
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    geo = r.json()
    assert [f["id"] for f in geo["features"]] == ["s1", "s2"]
    assert geo["features"][0]["geometry"] == {"type": "Point", "coordinates": [-111.9, 40.7]}
    assert geo["features"][0]["properties"]["network"] == "N1"
    assert geo["features"][1]["geometry"] is None


def test_plot_png(data: httpx.Client) -> None:
    params = {"device": "d0", "variable": "air_temp", "units": "english", "qc": "none"}
    r = data.get("/api/v1/projects/p1/plot.png", params=params)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    img.verify()
    assert img.format == "PNG" and img.size == (800, 400)
    r = data.get(
        "/api/v1/projects/p1/plot.png",
        params={"device": "d0", "variable": "air_temp", "start": "2030-01-01T00:00:00Z"},
    )
    assert r.status_code == 200  # an empty period is an empty plot


def test_plot_errors_name_the_parameter(data: httpx.Client) -> None:
    path = "/api/v1/projects/p1/plot.png"
    err = expect_error(data.get(path, params={"device": "zz", "variable": "air_temp"}), 404)
    assert err["details"][0]["field"] == "device"
    err = expect_error(data.get(path, params={"device": "d0", "variable": "zz"}), 404)
    assert err["details"][0]["field"] == "variable"
    expect_error(data.get(path, params={"device": "d0"}), 422)
    err = expect_error(
        data.get(path, params={"device": "d0", "variable": "air_temp", "start": "10", "end": "5"}),
        400,
    )
    assert err["details"][0]["field"] == "start"
    err = expect_error(
        data.get(path, params={"device": "d0", "variable": "air_temp", "units": "m**9**9"}), 400
    )
    assert err["details"][0]["field"] == "units"
