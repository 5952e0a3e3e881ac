"""Hostile input on every face (issue 11 items 12, 13, 17 and 21): a clear 4xx in the face's own
error shape, never a 500, never a partial write, and never a request that holds the server."""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from streamgauge.config import DB_NAME
from tests.conftest import MS, Server, make_station, settle, start_server
from tests.tapis_helpers import account

API = "/api/v1/projects"
BAD_TOKENS = ["9r5%ED%9F%B5", "%C2%B2", "!!!", "YWJj", "9" * 5000, "%FF%FE", "_" * 2000]
BAD_NUMBERS = ["%C2%B2", "9" * 5000, "-" + "9" * 400, "1e999", "%EF%BC%91"]  # ², fullwidth 1


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with a station, a channel, a service account, a DT device and a Tapis
    project, shared by the read-only checks of this module."""
    srv = start_server(tmp_path_factory.mktemp("hostile") / "data")
    try:
        with srv.client() as c:
            make_station(c, "p1", devices=2)
            r = c.post(
                f"{API}/p1/channels",
                json={
                    "id": "c1",
                    "triggers": [
                        {"device": "d0", "variable": "air_temp", "operator": ">", "value": 50}
                    ],
                },
            )
            assert r.status_code == 201, r.text
            account(c, "p1", "sa1", "user")
            assert c.post(f"{API}/p1/feedtokens", json={"name": "f"}).status_code == 201
            r = c.post("/v2/projects/p1/devices", json={"type": "temperature"})
            assert r.status_code == 200, r.text
        yield srv
    finally:
        srv.stop()


def get(srv: Server, path: str, query: str) -> httpx.Response:
    """GET with a raw (already percent-encoded) query string, sent exactly as written."""
    with srv.client(timeout=httpx.Timeout(60 * MS * 1000, read=10)) as c:
        r = c.get(httpx.URL(srv.url + path, query=query.encode()))
        r.read()
    settle(r)
    return r


def native_400(r: httpx.Response, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == 400, (str(r.request.url)[:200], r.status_code, r.text[:300])
    err: dict[str, Any] = r.json()["error"]
    assert err["status"] == 400 and err["code"] == "bad_request" and err["message"]
    if field is not None:
        assert any(d.get("field") == field for d in err["details"]), err
    return err


def dt_400(r: httpx.Response) -> None:
    assert r.status_code == 400, (str(r.request.url)[:200], r.status_code, r.text[:300])
    text = r.text.strip()
    body = orjson.loads(text.split("data: ", 1)[-1]) if text.startswith("event:") else r.json()
    if isinstance(body["error"], dict):  # a stream's error line
        assert body["error"]["code"] == 400 and body["error"]["message"]
    else:
        assert set(body) == {"error", "code", "help"} and body["code"] == 400


def tapis_400(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 400, (str(r.request.url)[:200], r.status_code, r.text[:300])
    body: dict[str, Any] = r.json()
    assert body["status"] == "error" and body["result"] is None and body["message"]
    return body


def native_list_paths(srv: Server) -> list[str]:
    """Every GET route of the native face that pages with a `page` token (from OpenAPI)."""
    ids = {"project": "p1", "device": "d0", "channel": "c1", "sa": "sa1"}
    out = []
    for path, ops in srv.app.openapi()["paths"].items():
        get_op = ops.get("get")
        if not path.startswith("/api/v1") or get_op is None:
            continue
        if not any(p["name"] == "page" for p in get_op.get("parameters", [])):
            continue
        for name, value in ids.items():
            path = path.replace("{" + name + "}", value)
        assert "{" not in path, path
        out.append(path)
    return out


def test_bad_page_tokens_on_every_native_list(hostile: Server) -> None:
    """issue 11 item 13: a page token that is not base64 or not UTF-8 inside
    (`?page=9r5%ED%9F%B5`) was a ValueError, a 500, on every list endpoint."""
    paths = native_list_paths(hostile)
    assert {f"{API}", f"{API}/p1/sites", f"{API}/p1/devices", f"{API}/p1/observations"} <= set(
        paths
    ), paths
    assert len(paths) >= 7, paths
    for path in paths:
        for token in BAD_TOKENS:
            if token == "YWJj" and path != f"{API}/p1/observations":
                continue  # "abc" is a fine key for the lists paged by id
            native_400(get(hostile, path, f"page={token}"), "page")
    # a token the server gave still works
    with hostile.client() as c:
        r = c.get(f"{API}/p1/devices", params={"limit": 1})
        assert r.status_code == 200 and r.json()["next"]
        r = c.get(f"{API}/p1/devices", params={"limit": 1, "page": r.json()["next"]})
        assert r.status_code == 200 and [d["id"] for d in r.json()["devices"]] == ["d1"]


def test_bad_times_and_cursors_on_the_native_face(hostile: Server) -> None:
    """issue 11 item 13: `since`/`start`/`end` given as `²` or as a 5,000-digit number were a
    ValueError (Python refuses to convert more than 4,300 digits), a 500."""
    for value in BAD_NUMBERS:
        for name in ("start", "end"):
            native_400(get(hostile, f"{API}/p1/observations", f"{name}={value}"), name)
        native_400(get(hostile, f"{API}/p1/stream", f"since={value}"), "since")
        err = native_400(get(hostile, f"{API}/p1/observations", f"page={_token(value)}"), "page")
        assert "token" in err["message"]
    with hostile.client(timeout=10) as c:
        r = c.get(f"{API}/p1/stream", headers={"Last-Event-ID": "²".encode()})
        native_400(r, "last-event-id")
        r = c.get(f"{API}/p1/observations", params={"start": "2024-01-01T00:00:00Z"})
        assert r.status_code == 200


def _token(value: str) -> str:
    """A well-formed page token around a bad key."""
    key = f"{value}:1".replace("%C2%B2", "²").replace("%EF%BC%91", "１")
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def test_invalid_utf8_query_is_400_on_every_face(hostile: Server) -> None:
    """issue 11 item 13: Starlette decodes query strings leniently, so invalid UTF-8 in a
    query value was read as other text (an empty 200); it is a 400 in each face's shape."""
    for query in ("device=%FF", "vars=%ED%A0%80", "x%FF=1", "site=ok&type=%C3"):
        err = native_400(get(hostile, f"{API}/p1/devices", query))
        assert "UTF-8" in err["message"]
        native_400(get(hostile, f"{API}/p1/observations", query))
        native_400(get(hostile, "/healthz", query))
        dt_400(get(hostile, "/v2/projects/p1/devices", query))
        dt_400(get(hostile, "/v2/projects/p1/devices:stream", query))
        body = tapis_400(get(hostile, "/v3/streams/projects", query))
        assert "UTF-8" in body["message"]
    native_400(get(hostile, f"{API}/p1/devices", "type=%ED%A0%80"), "type")  # a surrogate
    # valid UTF-8, percent-encoded or not, is fine
    assert get(hostile, f"{API}/p1/devices", "type=%C3%BC").status_code == 200
    assert get(hostile, f"{API}/p1/devices", "type=9r5%ED%9F%B5").status_code == 200  # U+D7F5


def test_dt_page_size_tokens_and_cursors(hostile: Server) -> None:
    """issue 11 item 13: DT `pageSize=²` was `int("²")`, a 500; page tokens, `since` and times
    that are not what the server gave are a 400 in DT's shape."""
    with hostile.client() as c:
        device = c.get("/v2/projects/p1/devices").json()["devices"][0]["name"].split("/")[-1]
    lists = [
        "/v2/projects/p1/devices",
        f"/v2/projects/p1/devices/{device}/events",
        "/v2/projects/p1/serviceaccounts",
        "/v2/projects/p1/dataconnectors",
    ]
    for path in lists:
        for value in BAD_NUMBERS:
            dt_400(get(hostile, path, f"pageSize={value}"))
            dt_400(get(hostile, path, f"page_size={value}"))
        for token in BAD_TOKENS:
            dt_400(get(hostile, path, f"pageToken={token}"))
    for value in BAD_NUMBERS:
        dt_400(get(hostile, "/v2/projects/p1/devices:stream", f"since={value}"))
        for name in ("startTime", "endTime"):
            dt_400(get(hostile, f"/v2/projects/p1/devices/{device}/events", f"{name}={value}"))


def test_tapis_numbers_and_times(hostile: Server) -> None:
    """issue 11 item 13: on every Tapis list, paging arguments (`limit`, `skip`, `offset`) and
    measurement times given as `²` or 5,000 digits are a 400 in the Tapis envelope."""
    ids = {"project_id": "p1", "site_id": "s1", "inst_id": "d0", "channel_id": "c1"}
    checked = 0
    for path, ops in hostile.app.openapi()["paths"].items():
        get_op = ops.get("get")
        if not path.startswith("/v3") or get_op is None:
            continue
        names = {p["name"] for p in get_op.get("parameters", []) if p["in"] == "query"}
        names &= {"limit", "skip", "offset", "start_date", "end_date"}
        for name, value in ids.items():
            path = path.replace("{" + name + "}", value)
        for name in names:
            for value in BAD_NUMBERS:
                tapis_400(get(hostile, path, f"{name}={value}"))
            checked += 1
    assert checked >= 16, checked


def test_big_numbers_in_native_ingest(hostile: Server) -> None:
    """issue 11 item 13: a 400-digit (or 5,000-digit) value or time on native ingest is a 4xx
    naming the row; nothing is stored."""
    with hostile.client() as c:
        head = c.get("/healthz").json()["head"]
        for field in ("value", "time"):
            for digits in (400, 5000):
                row = b'{"device":"d0","variable":"air_temp","time":1700000000000,"value":1}'
                row = row.replace(
                    b'"time":1700000000000' if field == "time" else b'"value":1',
                    f'"{field}":'.encode() + b"9" * digits,
                )
                r = c.post(
                    f"{API}/p1/observations",
                    content=b"["
                    + b'{"device":"d0","variable":"air_temp","time":1,"value":1},'
                    + row
                    + b"]",
                    headers={"Content-Type": "application/json"},
                )
                settle(r)
                assert r.status_code in (400, 422), r.text
                assert r.json()["error"]["message"]
        assert c.get("/healthz").json()["head"] == head


# -- item 12: unit expressions ------------------------------------------------------------------


def test_gigantic_exponent_unit_is_refused_and_the_server_keeps_answering(
    tmp_path: Path,
) -> None:
    """issue 11 item 12: a variable defined with the unit `m**9**9**9` made pint compute
    9**(9**9) on the event loop; every later request timed out. It is a 4xx at once, and
    `/healthz` answers while (and after) such requests arrive."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client(timeout=30) as c:
            make_station(c, "p1", devices=1)
            replies: list[httpx.Response] = []

            def hostile_creates() -> None:
                with srv.client(timeout=30) as h:
                    for unit in ("m**9**9**9", "m^9^9^9", "km**(9**9)", "(((m**9)**9)**9)"):
                        replies.append(
                            h.post(
                                f"{API}/p1/devices/d0/variables",
                                json={"id": "v", "name": "v", "unit": unit},
                            )
                        )
                    replies.append(
                        h.post(
                            "/v3/streams/projects/p1/sites/s1/instruments/d0/variables",
                            json={"var_id": "w", "var_name": "w", "units": "m**9**9**9"},
                        )
                    )

            t = threading.Thread(target=hostile_creates)
            t.start()
            for _ in range(5):
                assert c.get("/healthz").status_code == 200
            t.join(timeout=120_000 * MS)  # generous: only a hung server gets near it
            assert not t.is_alive()
            assert len(replies) == 5
            for r in replies[:4]:
                settle(r)
                assert r.status_code == 422, r.text
                assert r.json()["error"]["details"][0]["field"] == "unit", r.text
            settle(replies[4])
            assert 400 <= replies[4].status_code < 500, replies[4].text
            r = c.get(f"{API}/p1/devices/d0/variables")
            assert sorted(v["id"] for v in r.json()["variables"]) == ["air_temp", "wind_speed"]
            assert c.get("/healthz").status_code == 200
    finally:
        srv.stop()


# -- item 17: metadata that no reply can encode --------------------------------------------------

BAD_METADATA: list[bytes] = [
    b'{"n": 18446744073709551616}',
    b'{"n": -9223372036854775809}',
    b'{"n": ' + b"9" * 400 + b"}",
    b'{"n": NaN}',
    b'{"n": [Infinity]}',
    b'{"s": "\\ud800"}',
    b'{"\\udc00": 1}',
    b'{"deep": ' + b"[" * 40 + b"]" * 40 + b"}",
    b'{"big": "' + b"x" * 70_000 + b'"}',
]


def test_unencodable_metadata_is_refused_before_commit(tmp_path: Path) -> None:
    """issue 11 item 17: a user-role account posted `{"metadata": {"n": 18446744073709551616}}`;
    it was committed, the reply failed to serialize, and every listing that included it was a
    500 for good. Every metadata field of every face now refuses it with a 4xx naming it, and
    nothing is stored."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as admin:
            make_station(admin, "p1", devices=1)
            key = account(admin, "p1", "writer", "admin")
            basic = base64.b64encode(f"{key[0]}:{key[1]}".encode()).decode()
            with srv.client(headers={"Authorization": f"Basic {basic}"}) as user:
                for md in BAD_METADATA:
                    bodies = [
                        (f"{API}", b'{"id": "px", "metadata": ' + md + b"}"),
                        (f"{API}/p1/sites", b'{"id": "sx", "metadata": ' + md + b"}"),
                        (f"{API}/p1/devices", b'{"id": "dx", "metadata": ' + md + b"}"),
                        (
                            f"{API}/p1/devices/d0/variables",
                            b'{"id": "vx", "name": "air_temp", "metadata": ' + md + b"}",
                        ),
                    ]
                    for path, body in bodies:
                        r = user.post(
                            path, content=body, headers={"Content-Type": "application/json"}
                        )
                        settle(r)
                        assert r.status_code in (400, 422), (path, md[:60], r.text[:300])
                        assert "metadata" in r.text
                    for path in (f"{API}/p1", f"{API}/p1/sites/s1", f"{API}/p1/devices/d0"):
                        r = user.patch(
                            path,
                            content=b'{"metadata": ' + md + b"}",
                            headers={"Content-Type": "application/json"},
                        )
                        settle(r)
                        assert r.status_code in (400, 422), (path, md[:60], r.text[:300])
                    r = user.post(
                        "/v3/streams/projects",
                        content=b'{"project_name": "tx", "owner": "o", "pi": "p", "metadata": '
                        + md
                        + b"}",
                        headers={"Content-Type": "application/json"},
                    )
                    settle(r)
                    tapis_400(r)
            # the largest accepted integers are fine, and nothing else was stored
            r = admin.post(
                API, json={"id": "ok", "metadata": {"u": 2**64 - 1, "i": -(2**63), "f": 1.5}}
            )
            assert r.status_code == 201, r.text
            projects = admin.get(API).json()["projects"]
            assert sorted(p["id"] for p in projects) == ["ok", "p1"]
            assert projects[0]["metadata"] == {"u": 2**64 - 1, "i": -(2**63), "f": 1.5}
            assert [s["id"] for s in admin.get(f"{API}/p1/sites").json()["sites"]] == ["s1"]
            assert admin.get("/v3/streams/projects").status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("store_mode", ["sqlite"], indirect=True)  # reads the SQLite file
def test_a_stored_row_that_cannot_be_encoded_does_not_take_listings_down(tmp_path: Path) -> None:
    """issue 11 item 17: a row stored before the check (a 65-bit integer in metadata) made
    every listing that included it a 500, across restarts. Listings now encode it (the integer
    as its digits) and every other row as before."""
    data = tmp_path / "data"
    srv = start_server(data)
    try:
        with srv.client() as c:
            assert c.post(API, json={"id": "good", "metadata": {"n": 1}}).status_code == 201
            assert c.post(API, json={"id": "old", "metadata": {"n": 2}}).status_code == 201
    finally:
        srv.stop()
    db = data / DB_NAME
    with sqlite3.connect(db) as conn:
        (doc,) = conn.execute("SELECT doc FROM projects WHERE id = 'old'").fetchone()
        doc = doc.replace('"n":2', '"n":18446744073709551616')
        assert "18446744073709551616" in doc
        conn.execute("UPDATE projects SET doc = ? WHERE id = 'old'", (doc,))
    srv = start_server(data)
    try:
        with srv.client() as c:
            r = c.get(API)
            assert r.status_code == 200, r.text
            got = {p["id"]: p["metadata"] for p in r.json()["projects"]}
            assert got == {"good": {"n": 1}, "old": {"n": "18446744073709551616"}}
            r = c.get("/v3/streams/projects")
            assert r.status_code == 200, r.text
            assert len(r.json()["result"]) == 2
    finally:
        srv.stop()


# -- item 21: finite after conversion -----------------------------------------------------------


def test_values_that_overflow_in_the_canonical_unit_are_refused(tmp_path: Path) -> None:
    """issue 11 item 21: finiteness was checked before unit scaling, so 1e303 MPa was stored as
    +Inf Pa. It is a 4xx naming the row, and nothing of the batch is stored."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            assert c.post(API, json={"id": "p1"}).status_code == 201
            r = c.post(
                f"{API}/p1/devices",
                json={"id": "d0", "variables": [{"name": "pressure", "unit": "MPa"}]},
            )
            assert r.status_code == 201, r.text
            rows = [
                {"device": "d0", "variable": "pressure", "time": 1_700_000_000_000 + i, "value": v}
                for i, v in enumerate([0.1, 1e303, -1e308])
            ]
            r = c.post(f"{API}/p1/observations", json=rows)
            settle(r)
            assert r.status_code == 422, r.text
            details = r.json()["error"]["details"]
            assert [(d["index"], d["field"]) for d in details] == [(1, "value"), (2, "value")]
            assert "MPa" in details[0]["reason"] and "Pa" in details[0]["reason"]
            assert c.get("/healthz").json()["head"] == 0
            r = c.post(f"{API}/p1/observations", json=rows[:1])
            assert r.status_code == 200, r.text
            r = c.get(f"{API}/p1/observations", params={"qc": "none"})
            assert [o["value"] for o in r.json()["observations"]] == [100000.0]
    finally:
        srv.stop()


def test_bodies_nobody_can_parse_are_400_in_each_face_shape(hostile: Server) -> None:
    """issue 11 items 12 and 13: JSON nested 100,000 deep and a 5,000-digit integer (which
    Python refuses to convert) are a 400 that says why, in the face's own shape (the Tapis face
    answered FastAPI's parse error in the native shape)."""
    bodies = {
        b"[" * 100_000 + b"]" * 100_000: "nested too deeply",
        b'{"project_name": "a", "owner": "o", "pi": "p", "metadata": {"n": '
        + b"9" * 5000
        + b"}}": "digits",
    }
    with hostile.client() as c:
        for body, says in bodies.items():
            json_h = {"Content-Type": "application/json"}
            r = c.post("/v3/streams/projects", content=body, headers=json_h)
            assert says in tapis_400(r)["message"]
            r = c.post(API, content=body, headers=json_h)
            assert says in native_400(r)["message"]
            r = c.post("/v2/projects/p1/devices", content=body, headers=json_h)
            dt_400(r)
        assert c.get(API).status_code == 200


def test_channel_action_extras_must_encode(tmp_path: Path) -> None:
    """issue 11 item 17: an action's extra fields are kept as given, so they pass the same
    check as metadata, on the native and the Tapis face; the channel list stays readable."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            make_station(c, "p1", devices=1)
            action = {"method": "HTTP", "http_url": "http://127.0.0.1:9/x", "extra": {}}
            trigger = {"device": "d0", "variable": "air_temp", "operator": ">", "value": 1}
            for extra in ({"n": 2**64}, {"deep": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}):
                body = {
                    "id": "c",
                    "triggers": [{**trigger, "actions": [{**action, "extra": extra}]}],
                }
                r = c.post(f"{API}/p1/channels", json=body)
                settle(r)
                assert r.status_code == 422, r.text
                assert "extra" in r.text
                r = c.post(
                    "/v3/streams/channels",
                    json={
                        "channel_id": "t",
                        "channel_name": "t",
                        "template_id": "default_threshold",
                        "triggers_with_actions": [
                            {
                                "inst_ids": ["d0"],
                                "condition": {"key": "d0.air_temp", "operator": ">", "val": 1},
                                "action": {
                                    "method": "HTTP",
                                    "http_url": "http://127.0.0.1:9/x",
                                    **extra,
                                },
                            }
                        ],
                    },
                )
                settle(r)
                assert "action" in tapis_400(r)["message"], r.text
            assert c.get(f"{API}/p1/channels").json()["channels"] == []
            assert c.get("/v3/streams/channels").status_code == 200
    finally:
        srv.stop()
