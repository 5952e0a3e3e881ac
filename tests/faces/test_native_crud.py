"""The native metadata API: projects, sites, devices (with labels) and variables.

Create (one or a bulk array), list with paging, get, PATCH, delete; user-chosen or generated ids;
all-or-nothing bulk creates; ``if_exists=skip``; strict bodies.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import expect_error as _err
from tests.conftest import make_station, settle

P = "/api/v1/projects"


def _list_all(client: httpx.Client, url: str, name: str, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit}
        if page is not None:
            params["page"] = page
        r = client.get(url, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {name, "next"}
        assert len(body[name]) <= limit
        out.extend(body[name])
        pages += 1
        page = body["next"]
        if page is None:
            return out
        assert pages < 100


# -- projects -------------------------------------------------------------------------------------


def test_project_crud_cycle(client: httpx.Client) -> None:
    r = client.post(P, json={"id": "alpha", "name": "Alpha", "description": "first", "pi": "Ann"})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["id"] == "alpha" and doc["name"] == "Alpha" and doc["pi"] == "Ann"
    assert doc["created_at"]

    r = client.get(f"{P}/alpha")
    assert r.status_code == 200
    assert r.json() == doc

    # PATCH: only the sent fields change
    r = client.patch(f"{P}/alpha", json={"description": "changed"})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["description"] == "changed"
    assert patched["name"] == "Alpha" and patched["pi"] == "Ann"
    assert patched["created_at"] == doc["created_at"]
    assert client.get(f"{P}/alpha").json() == patched

    r = client.delete(f"{P}/alpha")
    assert r.status_code == 204
    _err(client.get(f"{P}/alpha"), 404)
    assert "alpha" not in [p["id"] for p in client.get(P).json()["projects"]]


def test_project_generated_id_and_name_default(client: httpx.Client) -> None:
    r = client.post(P, json={})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["id"]
    assert doc["name"] == doc["id"]
    assert client.get(f"{P}/{doc['id']}").status_code == 200


def test_project_list_paging_every_item_once(client: httpx.Client) -> None:
    ids = [f"p{i:02d}" for i in range(7)]
    r = client.post(P, json=[{"id": i} for i in ids])
    assert r.status_code == 201, r.text
    assert [d["id"] for d in r.json()] == ids

    r = client.get(P, params={"limit": 3})
    body = r.json()
    assert len(body["projects"]) == 3
    assert isinstance(body["next"], str)

    got = _list_all(client, P, "projects", 3)
    assert sorted(p["id"] for p in got) == ids
    assert len(got) == len(ids)

    full = client.get(P, params={"limit": 100}).json()
    assert full["next"] is None
    assert len(full["projects"]) == 7


BAD_IDS = ["-lead", "_x", ".dot", ":c", "has space", "a/b", "x" * 129, "", "ümlaut", "semi;colon"]


def test_bad_project_ids_are_422_naming_the_field(client: httpx.Client) -> None:
    for bad in BAD_IDS:
        err = _err(client.post(P, json={"id": bad}), 422)
        assert any(d.get("field") == "id" for d in err["details"]), (bad, err)
    assert client.get(P).json()["projects"] == []


def test_valid_id_alphabet_and_length(client: httpx.Client) -> None:
    for good in ["a", "9", "A.b-c_d:e", "x" * 128]:
        r = client.post(P, json={"id": good})
        assert r.status_code == 201, (good, r.text)
        assert r.json()["id"] == good


def test_duplicate_project_id_409_and_if_exists_skip(client: httpx.Client) -> None:
    assert client.post(P, json={"id": "dup", "name": "orig"}).status_code == 201
    _err(client.post(P, json={"id": "dup", "name": "other"}), 409)
    r = client.post(P, params={"if_exists": "skip"}, json={"id": "dup", "name": "other"})
    assert r.status_code == 201, r.text
    assert client.get(f"{P}/dup").json()["name"] == "orig"  # left as it was


def test_bulk_projects_all_or_nothing(client: httpx.Client) -> None:
    err = _err(client.post(P, json=[{"id": "ok1"}, {"id": "ok2"}, {"id": "bad id"}]), 422)
    assert any(d.get("index") == 2 and d.get("field") == "id" for d in err["details"]), err
    ids = {p["id"] for p in client.get(P).json()["projects"]}
    assert not ids & {"ok1", "ok2"}

    # one existing id in a bulk → 409, nothing new created
    assert client.post(P, json={"id": "exists"}).status_code == 201
    err = _err(client.post(P, json=[{"id": "new1"}, {"id": "exists"}]), 409)
    ids = {p["id"] for p in client.get(P).json()["projects"]}
    assert "new1" not in ids

    # with skip, the new one is created and the existing one kept
    r = client.post(P, params={"if_exists": "skip"}, json=[{"id": "new1"}, {"id": "exists"}])
    assert r.status_code == 201, r.text
    ids = {p["id"] for p in client.get(P).json()["projects"]}
    assert {"new1", "exists"} <= ids


def test_unknown_field_in_body_is_422_naming_it(client: httpx.Client) -> None:
    err = _err(client.post(P, json={"id": "x1", "colour": "red"}), 422)
    assert any(d.get("field") == "colour" for d in err["details"]), err
    assert client.get(f"{P}/x1").status_code == 404
    assert client.post(P, json={"id": "x1"}).status_code == 201
    err = _err(client.patch(f"{P}/x1", json={"nmae": "typo"}), 422)
    assert any(d.get("field") == "nmae" for d in err["details"]), err


# -- sites ----------------------------------------------------------------------------------------


def test_site_crud_cycle(client: httpx.Client) -> None:
    assert client.post(P, json={"id": "p"}).status_code == 201
    base = f"{P}/p/sites"
    r = client.post(base, json={"id": "s1", "name": "Site 1", "lat": 40.5, "lon": -111.0})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["id"] == "s1" and doc["project"] == "p" and doc["lat"] == 40.5

    assert client.get(f"{base}/s1").json() == doc

    r = client.patch(f"{base}/s1", json={"state": "UT"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "UT"
    assert r.json()["lat"] == 40.5 and r.json()["name"] == "Site 1"

    r = client.post(base, json={"lat": 1.0})
    assert r.status_code == 201
    gen = r.json()["id"]
    assert gen and gen != "s1"

    listed = client.get(base).json()
    assert {s["id"] for s in listed["sites"]} == {"s1", gen}
    assert listed["next"] is None

    assert client.delete(f"{base}/s1").status_code == 204
    _err(client.get(f"{base}/s1"), 404)


def test_site_validation_and_bulk(client: httpx.Client) -> None:
    assert client.post(P, json={"id": "p"}).status_code == 201
    base = f"{P}/p/sites"
    err = _err(client.post(base, json={"id": "s", "lat": 91}), 422)
    assert any(d.get("field") == "lat" for d in err["details"]), err
    err = _err(client.post(base, json=[{"id": "a"}, {"id": "b", "lon": 500}]), 422)
    assert any(d.get("index") == 1 and d.get("field") == "lon" for d in err["details"]), err
    # repeated id inside one bulk request
    err = _err(client.post(base, json=[{"id": "a"}, {"id": "a"}]), 422)
    assert any(d.get("index") == 1 for d in err["details"]), err
    assert client.get(base).json()["sites"] == []

    many = [{"id": f"s{i}"} for i in range(5)]
    r = client.post(base, json=many)
    assert r.status_code == 201 and len(r.json()) == 5
    got = _list_all(client, base, "sites", 2)
    assert sorted(s["id"] for s in got) == [f"s{i}" for i in range(5)]
    _err(client.post(base, json={"id": "s0"}), 409)
    r = client.post(base, params={"if_exists": "skip"}, json=[{"id": "s0"}, {"id": "s9"}])
    assert r.status_code == 201, r.text
    assert len(client.get(base).json()["sites"]) == 6


def test_deleting_site_with_devices_is_409(client: httpx.Client) -> None:
    make_station(client, "p1", devices=1)
    err = _err(client.delete(f"{P}/p1/sites/s1"), 409)
    assert err["message"]
    assert client.get(f"{P}/p1/sites/s1").status_code == 200
    assert client.delete(f"{P}/p1/devices/d0").status_code == 204
    assert client.delete(f"{P}/p1/sites/s1").status_code == 204


# -- devices --------------------------------------------------------------------------------------


def test_device_crud_with_labels_and_inline_variables(client: httpx.Client) -> None:
    make_station(client, "p1", devices=0 + 1)
    base = f"{P}/p1/devices"
    r = client.post(
        base,
        json={
            "id": "dx",
            "site": "s1",
            "type": "buoy",
            "labels": {"env": "lake", "n": "7"},
            "variables": [{"name": "water_temp", "unit": "degC"}, {"id": "wt2", "name": "wt"}],
        },
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["id"] == "dx" and doc["labels"] == {"env": "lake", "n": "7"}
    assert doc["site"] == "s1" and doc["type"] == "buoy" and doc["project"] == "p1"
    assert "variables" not in doc

    assert client.get(f"{base}/dx").json() == doc
    vars_ = client.get(f"{base}/dx/variables").json()["variables"]
    assert {v["id"] for v in vars_} == {"water_temp", "wt2"}
    wt = client.get(f"{base}/dx/variables/water_temp").json()
    assert wt["name"] == "water_temp" and wt["unit"] == "degC" and wt["set"] == 1

    r = client.patch(f"{base}/dx", json={"labels": {"env": "river"}})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"env": "river"}
    assert r.json()["type"] == "buoy" and r.json()["site"] == "s1"

    r = client.patch(f"{base}/dx", json={"name": "Renamed"})
    assert r.json()["name"] == "Renamed" and r.json()["labels"] == {"env": "river"}

    # list with filters
    ids = {d["id"] for d in client.get(base, params={"type": "buoy"}).json()["devices"]}
    assert ids == {"d0", "dx"}  # make_station's d0 is a buoy
    ids = {d["id"] for d in client.get(base, params={"site": "nowhere"}).json()["devices"]}
    assert ids == set()

    assert client.delete(f"{base}/dx").status_code == 204
    _err(client.get(f"{base}/dx"), 404)
    _err(client.get(f"{base}/dx/variables/water_temp"), 404)


def test_device_unknown_site_and_generated_id(client: httpx.Client) -> None:
    assert client.post(P, json={"id": "p"}).status_code == 201
    base = f"{P}/p/devices"
    err = _err(client.post(base, json={"id": "d", "site": "ghost"}), 422)
    assert err["details"]
    assert client.get(base).json()["devices"] == []
    r = client.post(base, json={"type": "t"})
    assert r.status_code == 201
    assert r.json()["id"] and r.json()["site"] is None


def test_device_bulk_all_or_nothing_names_index(client: httpx.Client) -> None:
    assert client.post(P, json={"id": "p"}).status_code == 201
    base = f"{P}/p/devices"
    body = [
        {"id": "a", "variables": [{"name": "v"}]},
        {"id": "b"},
        {"id": "c", "labelz": {}},
    ]
    err = _err(client.post(base, json=body), 422)
    assert any(d.get("index") == 2 and d.get("field") == "labelz" for d in err["details"]), err
    assert client.get(base).json()["devices"] == []
    # a bad inline variable also fails the whole batch
    body = [{"id": "a"}, {"id": "b", "variables": [{"name": "bad name"}]}]
    err = _err(client.post(base, json=body), 422)
    assert any(d.get("index") == 1 for d in err["details"]), err
    assert client.get(base).json()["devices"] == []

    r = client.post(base, json=[{"id": f"d{i}"} for i in range(5)])
    assert r.status_code == 201
    got = _list_all(client, base, "devices", 2)
    assert sorted(d["id"] for d in got) == [f"d{i}" for i in range(5)]
    err = _err(client.post(base, json=[{"id": "d9"}, {"id": "d1"}]), 409)
    assert client.get(f"{base}/d9").status_code == 404
    r = client.post(base, params={"if_exists": "skip"}, json=[{"id": "d9"}, {"id": "d1"}])
    assert r.status_code == 201, r.text
    assert client.get(f"{base}/d9").status_code == 200


def test_bad_device_id_names_field(client: httpx.Client) -> None:
    assert client.post(P, json={"id": "p"}).status_code == 201
    err = _err(client.post(f"{P}/p/devices", json={"id": ".dot"}), 422)
    assert any(d.get("field") == "id" for d in err["details"]), err


# -- variables ------------------------------------------------------------------------------------


def test_variable_crud_cycle(client: httpx.Client) -> None:
    make_station(client, "p1", devices=1)
    base = f"{P}/p1/devices/d0/variables"
    r = client.post(base, json={"name": "rh", "unit": "%"})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["id"] == "rh" and doc["name"] == "rh" and doc["set"] == 1
    assert doc["device"] == "d0" and doc["project"] == "p1"

    r = client.post(base, json={"id": "rh2", "name": "rh", "unit": "%", "set": 2})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "rh2" and r.json()["set"] == 2

    assert client.get(f"{base}/rh").json() == doc
    r = client.patch(f"{base}/rh", json={"unit": "percent"})
    assert r.status_code == 200, r.text
    assert r.json()["unit"] == "percent" and r.json()["name"] == "rh" and r.json()["set"] == 1

    got = _list_all(client, base, "variables", 2)
    assert sorted(v["id"] for v in got) == ["air_temp", "rh", "rh2", "wind_speed"]

    _err(client.post(base, json={"name": "rh"}), 409)
    assert client.post(base, params={"if_exists": "skip"}, json={"name": "rh"}).status_code == 201
    assert client.get(f"{base}/rh").json()["unit"] == "percent"

    err = _err(client.post(base, json={"name": "x", "set": 0}), 422)
    assert any(d.get("field") == "set" for d in err["details"]), err
    err = _err(client.post(base, json={"name": "x", "scale": 2}), 422)
    assert any(d.get("field") == "scale" for d in err["details"]), err
    err = _err(client.post(base, json=[{"name": "ok"}, {"name": "no good"}]), 422)
    assert any(d.get("index") == 1 for d in err["details"]), err
    _err(client.get(f"{base}/ok"), 404)

    assert client.delete(f"{base}/rh").status_code == 204
    _err(client.get(f"{base}/rh"), 404)
    _err(client.post(f"{P}/p1/devices/nodev/variables", json={"name": "a"}), 404)


# -- paging and query strictness -----------------------------------------------------------------


def test_bad_page_token_and_limit(client: httpx.Client) -> None:
    _err(client.get(P, params={"page": "%%%not-base64"}), 400)
    err = _err(client.get(P, params={"limit": 0}), 422)
    assert any(d.get("field") == "limit" for d in err["details"]), err


def test_unknown_query_parameter_is_400_naming_it(client: httpx.Client) -> None:
    make_station(client, "p1", devices=1)
    urls = [
        P,
        f"{P}/p1",
        f"{P}/p1/sites",
        f"{P}/p1/sites/s1",
        f"{P}/p1/devices",
        f"{P}/p1/devices/d0",
        f"{P}/p1/devices/d0/variables",
        f"{P}/p1/devices/d0/variables/air_temp",
        f"{P}/p1/observations",
        f"{P}/p1/serviceaccounts",
        f"{P}/p1/roles",
    ]
    for url in urls:
        err = _err(client.get(url, params={"limt": "5"}), 400)
        assert any(d.get("field") == "limt" for d in err["details"]), (url, err)
        assert "limt" in err["message"]
    # writes too, and nothing is done
    err = _err(client.post(P, params={"dry_run": "1"}, json={"id": "new"}), 400)
    assert any(d.get("field") == "dry_run" for d in err["details"]), err
    _err(client.patch(f"{P}/p1", params={"force": "1"}, json={"pi": "X"}), 400)
    _err(client.delete(f"{P}/p1/devices/d0", params={"cascade": "1"}), 400)
    _err(client.put(f"{P}/p1/roles/nobody", params={"x": "1"}, json={"role": "user"}), 400)
    assert client.get(f"{P}/new").status_code == 404
    assert client.get(f"{P}/p1").json()["pi"] is None
    assert client.get(f"{P}/p1/devices/d0").status_code == 200


def test_patch_null_for_a_required_field_is_a_client_error(client: httpx.Client) -> None:
    """`{"name": null}` must not be a 500: reject it (422 naming the field) or reset the default."""
    make_station(client, "p1", devices=1)
    urls = [
        f"{P}/p1",
        f"{P}/p1/sites/s1",
        f"{P}/p1/devices/d0",
        f"{P}/p1/devices/d0/variables/air_temp",
    ]
    wrong = []
    for url in urls:
        before = client.get(url).json()
        with httpx.Client(base_url=client.base_url, headers=client.headers) as c:  # a 500 drops
            r = c.patch(url, json={"name": None})  # the connection; keep `client`'s alive
        settle(r)
        if r.status_code == 422:
            err = r.json()["error"]
            if not any(d.get("field") == "name" for d in err["details"]):
                wrong.append((url, r.status_code, r.text))
            if client.get(url).json() != before:
                wrong.append((url, "changed", client.get(url).text))
        elif r.status_code == 200:
            if r.json()["name"] != before["id"]:
                wrong.append((url, r.status_code, r.text))
        else:
            wrong.append((url, r.status_code, r.text))
    assert not wrong, wrong


def test_patch_id_does_not_rename(client: httpx.Client) -> None:
    assert client.post(P, json={"id": "keep"}).status_code == 201
    r = client.patch(f"{P}/keep", json={"id": "other", "pi": "Bo"})
    settle(r)
    assert r.status_code in (200, 422), r.text
    assert client.get(f"{P}/keep").status_code == 200
    assert client.get(f"{P}/other").status_code == 404
