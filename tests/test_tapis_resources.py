"""The Tapis face with the real tapipy client: tokens, projects, sites, instruments, variables,
measurements (JSON and CSV, every read parameter), errors in the envelope."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import httpx
import pytest
from tapipy.errors import BadRequestError, NotFoundError, UnauthorizedError
from tapipy.tapis import Tapis

from tests.conftest import Server
from tests.tapis_helpers import TENANT, account, envelope, home, tapis_for


@pytest.fixture
def t(server: Server, client: httpx.Client) -> Iterator[Tapis]:
    home(client)
    yield tapis_for(server.url, account(client, "home", "alice"))


def build(t: Tapis) -> None:
    t.streams.create_project(
        project_name="Tutorial Proj", owner="alice", pi="alice", description="demo"
    )
    t.streams.create_site(
        project_id="TutorialProj",
        request_body=[
            {
                "site_name": "Ohio River",
                "site_id": "ohio",
                "latitude": 38.68,
                "longitude": -82.18,
                "elevation": 170,
                "description": "Robert C Byrd Locks",
            }
        ],
    )
    t.streams.create_instrument(
        project_id="TutorialProj",
        site_id="ohio",
        request_body=[{"inst_name": "Buoy", "inst_id": "buoy1", "inst_description": "a buoy"}],
    )
    t.streams.create_variable(
        project_id="TutorialProj",
        site_id="ohio",
        inst_id="buoy1",
        request_body=[
            {"var_name": "Temperature", "var_id": "temp", "units": "degF"},
            {"var_name": "Battery", "var_id": "batv"},
        ],
    )


def test_tokens_and_metadata_round_trip(t: Tapis, server: Server) -> None:
    build(t)
    projects = t.streams.list_projects()
    assert [p.project_id for p in projects] == ["TutorialProj", "home"]
    p = t.streams.get_project(project_id="TutorialProj")
    assert p.project_name == "Tutorial Proj" and p.pi == "alice"
    assert p.permissions.users == ["alice"]
    site = t.streams.get_site(project_id="TutorialProj", site_id="ohio")
    assert site.location.coordinates == [-82.18, 38.68]
    assert site.description == "Robert C Byrd Locks"
    inst = t.streams.get_instrument(project_id="TutorialProj", site_id="ohio", inst_id="buoy1")
    assert inst.inst_description == "a buoy"
    assert sorted(v.var_id for v in inst.variables) == ["batv", "temp"]
    v = t.streams.get_variable(
        project_id="TutorialProj", site_id="ohio", inst_id="buoy1", var_id="temp"
    )
    assert v.var_name == "Temperature" and v.units == "degF"
    t.streams.update_site(
        project_id="TutorialProj",
        site_id="ohio",
        site_name="Ohio River 2",
        latitude=38.7,
        longitude=-82.2,
        elevation=171,
        description="moved",
    )
    assert t.streams.get_site(project_id="TutorialProj", site_id="ohio").site_name == "Ohio River 2"
    t.streams.update_instrument(
        project_id="TutorialProj", site_id="ohio", inst_id="buoy1", inst_name="Buoy 1"
    )
    assert t.streams.list_instruments(project_id="TutorialProj", site_id="ohio")[0].inst_name == (
        "Buoy 1"
    )
    # the same project through the native face
    with server.client() as c:
        native = c.get("/api/v1/projects/TutorialProj/devices/buoy1").json()
        assert native["site"] == "ohio"
    with pytest.raises(NotFoundError):
        t.streams.get_site(project_id="TutorialProj", site_id="nope")
    # duplicate var_id in one instrument is skipped, as in Tapis 1.5.1
    again = t.streams.create_variable(
        project_id="TutorialProj",
        site_id="ohio",
        inst_id="buoy1",
        request_body=[{"var_name": "Temperature", "var_id": "temp"}],
    )
    assert again[0].var_id == "temp"


def test_measurements_json_csv_and_every_read_parameter(t: Tapis, server: Server) -> None:
    build(t)
    saved = t.streams.create_measurement(
        inst_id="buoy1",
        vars=[
            {"datetime": "2024-07-20T23:19:25Z", "temp": 90, "batv": 10},
            {"datetime": "2024-07-20T23:20:25Z", "temp": 91.5, "batv": "11"},
            {"datetime": "2024-07-20T23:21:25Z", "temp": 92},
            {"datetime": "2024-07-20T23:22:25+00:00", "batv": 12.5},
        ],
    )
    assert saved.temp[0].get("2024-07-20T23:19:25Z") == 90
    got = t.streams.download_measurements(inst_id="buoy1")
    assert got.measurements_in_file == 4
    temp = vars(got.temp)
    assert temp == {
        "2024-07-20T23:19:25Z": 90.0,
        "2024-07-20T23:20:25Z": 91.5,
        "2024-07-20T23:21:25Z": 92.0,
    }  # values come back in the unit the variable was defined in (degF), not the stored degC
    assert vars(got.batv)["2024-07-20T23:20:25Z"] == 11.0
    path = {"project_id": "TutorialProj", "site_id": "ohio", "inst_id": "buoy1"}
    window = t.streams.list_measurements(
        **path, start_date="2024-07-20T23:20:00Z", end_date="2024-07-20T23:21:25Z"
    )
    assert window.measurements_in_file == 2  # end_date is inclusive
    only = t.streams.list_measurements(**path, var_ids="batv")
    assert not hasattr(only, "temp") and only.measurements_in_file == 3
    paged = t.streams.list_measurements(**path, limit=2, _tapis_query_parameters={"offset": 1})
    assert sorted(vars(paged.temp)) == ["2024-07-20T23:20:25Z", "2024-07-20T23:21:25Z"]
    skipped = t.streams.list_measurements(**path, limit=1, skip=3)
    assert vars(skipped.batv) == {"2024-07-20T23:22:25Z": 12.5}
    meta = t.streams.download_measurements(inst_id="buoy1", with_metadata=True)
    assert meta.instrument.inst_id == "buoy1" and meta.site.site_id == "ohio"
    raw = t.streams.download_measurements(inst_id="buoy1", format="csv")
    table = list(csv.reader(io.StringIO(raw.decode())))
    assert table[0] == ["time", "batv", "temp"]
    assert table[1] == ["2024-07-20T23:19:25Z", "10.0", "90.0"]
    assert table[4] == ["2024-07-20T23:22:25Z", "12.5", ""]
    r = httpx.get(
        f"{server.url}/v3/streams/measurements/buoy1",
        params={"format": "csv"},
        headers={"X-Tapis-Token": t.get_access_jwt()},
    )
    assert r.headers["content-disposition"] == 'attachment; filename="export.csv"'
    assert r.headers["content-type"].startswith("text/csv")
    # the same observations on the native face, stored canonical (degC)
    with server.client() as c:
        obs = c.get(
            "/api/v1/projects/TutorialProj/observations", params={"variable": "temp"}
        ).json()["observations"]
        assert obs[0]["value"] == pytest.approx((90 - 32) / 1.8)


def test_bad_measurements_name_row_and_field_and_store_nothing(t: Tapis) -> None:
    build(t)
    with pytest.raises(BadRequestError) as exc:
        t.streams.create_measurement(inst_id="buoy1", vars=[{"temp": 1}])
    assert "Datetime field required and it is missing!" in str(exc.value)
    with pytest.raises(BadRequestError) as exc:
        t.streams.create_measurement(
            inst_id="buoy1",
            vars=[{"datetime": "2024-01-01T00:00:00Z", "temp": 1, "bogus": 2}],
        )
    assert "Variable ID: bogus is invalid!" in str(exc.value)
    with pytest.raises(NotFoundError):
        t.streams.create_measurement(
            inst_id="nope", vars=[{"datetime": "2024-01-01T00:00:00Z", "temp": 1}]
        )
    assert t.streams.download_measurements(inst_id="buoy1").measurements_in_file == 0


def test_errors_are_tapis_envelopes(server: Server, client: httpx.Client, t: Tapis) -> None:
    build(t)
    token = {"X-Tapis-Token": t.get_access_jwt()}
    body = envelope(httpx.get(f"{server.url}/v3/streams/projects/nope", headers=token), 404)
    assert body["status"] == "error" and body["result"] is None
    body = envelope(httpx.get(f"{server.url}/v3/streams/projects"), 401)
    assert "X-Tapis-Token" in body["message"]
    bad = httpx.post(
        f"{server.url}/v3/streams/projects/TutorialProj/sites",
        headers=token,
        json=[{"site_name": "x", "site_id": "x", "latitude": 99}],
    )
    body = envelope(bad, 400)
    fields = {(d.get("index"), d.get("field")) for d in body["metadata"]["details"]}
    assert (0, "latitude") in fields and (0, "longitude") in fields
    body = envelope(httpx.get(f"{server.url}/v3/streams/projects?bogus=1", headers=token), 400)
    assert "bogus" in body["message"]
    body = envelope(httpx.get(f"{server.url}/v3/streams/nothing", headers=token), 404)
    with pytest.raises(UnauthorizedError):
        Tapis(base_url=server.url, username="kbad", password="nope", tenant_id=TENANT).get_tokens()
    forged = httpx.get(f"{server.url}/v3/streams/projects", headers={"X-Tapis-Token": "a.b.c"})
    envelope(forged, 401)
