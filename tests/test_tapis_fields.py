"""Every field Tapis accepts is accepted and kept, every field Tapis returns is returned
(issue 11 item 7), checked field by field against tapipy's bundled streams spec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tapipy
import yaml

from tests.conftest import Server
from tests.tapis_helpers import account, envelope, home, tapis_for

SPEC = Path(tapipy.__file__).parent / "resources" / "openapi_v3-streams.yml"
P = "/v3/streams/projects/tproj"
S = P + "/sites/tsite"
I = S + "/instruments/tinst"  # noqa: E741 - the instrument path


def schemas() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return spec["components"]["schemas"]  # type: ignore[no-any-return]


@pytest.fixture
def tapis(server: Server, client: httpx.Client) -> Iterator[httpx.Client]:
    """A raw client holding a Tapis token of an account with no project yet."""
    home(client)
    t = tapis_for(server.url, account(client, "home", "tu"))
    headers = {"X-Tapis-Token": t.get_access_jwt()}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        yield c


def build_as_tapis_tests_do(tapis: httpx.Client) -> None:
    """The payloads of the Tapis service's own tests (streams_test.py): every document repeats
    the ids of the resources it lives in, and instruments and variables carry
    ``topic_category_id``."""
    project = {
        "project_name": "tproj",
        "project_id": "tproj",
        "owner": "testuser2",
        "pi": "testuser2",
        "description": "test project",
        "funding_resource": "tapis",
        "project_url": "test.tacc.utexas.edu",
        "active": True,
    }
    envelope(tapis.post("/v3/streams/projects", json=project), 201)
    envelope(tapis.put(P, json={**project, "description": "changed description"}), 200)
    site = {
        "project_id": "tproj",
        "site_name": "tsite",
        "latitude": 50,
        "longitude": 10,
        "elevation": 2,
        "site_id": "tsite",
        "description": "test_site",
    }
    envelope(tapis.post(P + "/sites", json=[site]), 201)
    envelope(tapis.put(S, json={**site, "description": "description changed"}), 200)
    inst = {
        "project_id": "tproj",
        "topic_category_id": "2",
        "site_id": "tsite",
        "inst_name": "tinst",
        "inst_description": "demo instrument",
        "inst_id": "tinst",
    }
    envelope(tapis.post(S + "/instruments", json=[inst]), 201)
    envelope(tapis.put(I, json={**inst, "inst_description": "description changed"}), 200)
    var = {
        "project_id": "tproj",
        "topic_category_id": "2",
        "site_id": "tsite",
        "inst_id": "tinst",
        "var_name": "battery",
        "shortname": "battery",
        "var_id": "battery",
    }
    envelope(tapis.post(I + "/variables", json=[var]), 201)
    envelope(tapis.put(I + "/variables/battery", json={**var, "topic_category_id": "3"}), 200)


def test_tapis_own_test_payloads_are_accepted_and_kept(tapis: httpx.Client) -> None:
    """issue 11 item 7: ``topic_category_id`` on variables and ``project_id`` on a raw
    ``create_project`` (and the other ids Tapis' tests send) are accepted and kept."""
    build_as_tapis_tests_do(tapis)
    project = envelope(tapis.get(P), 200)["result"]
    assert project["project_id"] == "tproj" and project["description"] == "changed description"
    site = envelope(tapis.get(S), 200)["result"]
    assert site["description"] == "description changed" and site["project_id"] == "tproj"
    inst = envelope(tapis.get(I), 200)["result"]
    assert inst["topic_category_id"] == "2" and inst["inst_description"] == "description changed"
    var = envelope(tapis.get(I + "/variables/battery"), 200)["result"]
    assert var["topic_category_id"] == "3" and var["shortname"] == "battery"
    assert (var["inst_id"], var["site_id"], var["project_id"]) == ("tinst", "tsite", "tproj")


def test_every_field_of_the_spec_is_accepted_and_returned(tapis: httpx.Client) -> None:
    """issue 11 item 7: each property of NewProject/NewSite/NewInstrument/NewVariable and their
    Update schemas is accepted, and each property of the Project/Site/Instrument/Variable
    response schemas is in the reply, with the ``chords_id`` Tapis adds."""
    spec = schemas()
    sample: dict[str, Any] = {
        "string": "x",
        "number": 2.5,
        "boolean": True,
        "object": {"k": "v"},
        "array": ["t"],
    }

    def body(name: str, **ids: Any) -> dict[str, Any]:
        props = spec[name]["properties"]
        out = {k: sample[v["type"]] for k, v in props.items()}
        return {**out, **ids}

    pj = body("NewProject", project_name="allf")
    envelope(tapis.post("/v3/streams/projects", json=pj), 201)
    envelope(tapis.put("/v3/streams/projects/allf", json=pj), 200)
    base = "/v3/streams/projects/allf/sites"
    site = body("NewSite", site_id="s1", latitude=1.5, longitude=2.5)
    envelope(tapis.post(base, json=[site]), 201)
    envelope(tapis.put(base + "/s1", json=body("UpdateSite", latitude=1.5, longitude=2)), 200)
    base += "/s1/instruments"
    envelope(tapis.post(base, json=[body("NewInstrument", inst_id="i1")]), 201)
    envelope(tapis.put(base + "/i1", json=body("UpdateInst")), 200)
    base += "/i1/variables"
    envelope(tapis.post(base, json=[body("NewVariable", var_id="v1", units="m")]), 201)
    envelope(tapis.put(base + "/v1", json=body("UpdateVariable", units="m")), 200)

    got = {
        "Project": envelope(tapis.get("/v3/streams/projects/allf"), 200)["result"],
        "Site": envelope(tapis.get("/v3/streams/projects/allf/sites/s1"), 200)["result"],
        "Instrument": envelope(tapis.get(base.rsplit("/", 1)[0]), 200)["result"],
        "Variable": envelope(tapis.get(base + "/v1"), 200)["result"],
    }
    for name, doc in got.items():
        missing = set(spec[name]["properties"]) - set(doc)
        assert not missing, (name, missing)
    for name in ("Site", "Instrument", "Variable"):
        assert isinstance(got[name]["chords_id"], int)
    assert got["Project"]["bucket"] == "allf"
    assert got["Instrument"]["inst_description"] == "x"
    assert got["Variable"]["measured_property_id"] == 2.5


def test_a_document_read_can_be_sent_back(tapis: httpx.Client) -> None:
    """issue 11 item 7: the fields the server adds (``chords_id``, ``location``,
    ``created_at``, ``instruments``, ...) are accepted back on an update, keeping the server's
    values."""
    build_as_tapis_tests_do(tapis)
    for path in (P, S, I, I + "/variables/battery"):
        doc = envelope(tapis.get(path), 200)["result"]
        again = envelope(tapis.put(path, json=doc), 200)["result"]
        for key in ("chords_id", "created_at", "project_id"):
            assert again.get(key) == doc.get(key), (path, key)


@pytest.mark.parametrize(
    ("path", "field", "body"),
    [
        (
            "/v3/streams/projects",
            "project_id",
            {"project_name": "My Proj", "project_id": "other", "owner": "o", "pi": "p"},
        ),
        (
            S + "/instruments",
            "site_id",
            [{"inst_name": "x", "inst_id": "x2", "inst_description": "d", "site_id": "else"}],
        ),
        (I + "/variables", "inst_id", [{"var_name": "v", "var_id": "v9", "inst_id": "else"}]),
        (I + "/variables", "colour", [{"var_name": "v", "var_id": "v9", "colour": "red"}]),
    ],
)
def test_contradicting_ids_and_unknown_fields_are_named(
    tapis: httpx.Client, path: str, field: str, body: Any
) -> None:
    """issue 11 item 7: an id in the body that contradicts the path (or, for a project, its
    name without spaces) or a field no Tapis schema has is a 400 naming it; nothing is made."""
    build_as_tapis_tests_do(tapis)
    got = envelope(tapis.post(path, json=body), 400)
    assert field in got["message"] or any(
        field in str(d.get("field", "")) for d in got["metadata"]["details"]
    ), got
    assert envelope(tapis.get(I + "/variables"), 200)["result"][0]["var_id"] == "battery"
    assert len(envelope(tapis.get(I + "/variables"), 200)["result"]) == 1
    assert len(envelope(tapis.get(S + "/instruments"), 200)["result"]) == 1


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        (P + "/sites", '[{"site_name": "n", "site_id": "n", "latitude": 1, "longitude": 2, '
         '"elevation": NaN, "description": "d"}]', "elevation"),
        (I + "/variables", '[{"var_name": "v", "var_id": "v9", "measured_property_id": '
         "Infinity}]", "measured_property_id"),
        (I + "/variables", '[{"var_name": "v", "var_id": "v9", "topic_category_id": 1%s}]'
         % ("0" * 400), "topic_category_id"),
    ],
)  # fmt: skip
def test_nan_and_huge_numbers_in_documents_are_refused(
    tapis: httpx.Client, path: str, raw: str, field: str
) -> None:
    """issue 11 items 7 and 9: a NaN, an infinity or a number too large for 64 bits in a
    document is a 400 naming the field, not a null or a number that breaks later listings."""
    build_as_tapis_tests_do(tapis)
    r = tapis.post(path, content=raw, headers={"Content-Type": "application/json"})
    got = envelope(r, 400)
    assert any(field in str(d.get("field", "")) for d in got["metadata"]["details"]), got
    envelope(tapis.get(I + "/variables"), 200)
    envelope(tapis.get(P + "/sites"), 200)
    assert len(envelope(tapis.get(P + "/sites"), 200)["result"]) == 1


@pytest.mark.parametrize("field", ["pi", "owner"])
def test_a_project_field_longer_than_the_native_one_is_a_400(
    tapis: httpx.Client, field: str
) -> None:
    """issue 11 item 13 (found by schemathesis): a 1,000-character ``pi`` passed the Tapis
    model (4,096) but not the native project's (256), and the conversion raised a 500."""
    body = {"project_name": "longpi", "owner": "o", "pi": "p", "description": "d"}
    body[field] = "0" * 1000
    got = envelope(tapis.post("/v3/streams/projects", json=body), 400)
    assert any(field in str(d.get("field", "")) for d in got["metadata"]["details"]), got
