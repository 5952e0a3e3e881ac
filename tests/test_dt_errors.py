"""The DT face's error shapes, and hostile input on every /v2 route: a 4xx in DT's shape, never a
500, never a partial write."""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import quote

import httpx

from tests.conftest import Server, settle

HOSTILE_IDS = ["-", "nope", "..", "%00", "a" * 300, "ü\u2028", "emu" + "0" * 20, "' OR 1=1 --"]
HOSTILE_QUERIES: list[dict[str, Any]] = [
    {},
    {"pageToken": "garbage"},
    {"pageToken": "eyJxIjoiYSIsImsiOlsxLDJdfQ"},  # a token of another query
    {"pageSize": "0"},
    {"page_size": "99999999999999999999"},
    {"startTime": "yesterday", "endTime": "2024-13-45T00:00:00Z"},
    {"startTime": "9999-12-31T23:59:59Z", "endTime": "0001-01-01T00:00:00Z"},
    {"eventTypes": "nope"},
    {"label_filters": "="},
    {"order_by": "reported.__class__"},
    {"ping_interval": "0s"},
    {"pingInterval": "1e9h"},
    {"since": "-1"},
    {"since": "99999999999999999999"},
    {"unknown": "x"},
    {"device_ids": "\u2028"},
]
HOSTILE_BODIES: list[bytes] = [
    b"",
    b"not json",
    b"[]",
    b"null",
    b'"str"',
    b'{"devices": "x"}',
    b'{"devices": [1, 2]}',
    b'{"addLabels": {"k": 1}, "devices": []}',
    b'{"type": "temperature", "labels": {"": "x"}}',
    b'{"type": "temperature", "labels": "x"}',
    b'{"temperature": {"value": 1e999}}',
    b'{"temperature": {"value": 1, "updateTime": "x"}}',
    b'{"touch": {}, "co2": {}}',
    b'{"displayName": 5, "enableBasicAuth": "yes", "role": "god"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"httpConfig": {"url": "ftp://x"}, "type": "HTTP_PUSH"}',
    b'{"events": ["nope"], "labels": 3}',
]


def dt_routes(server: Server) -> list[tuple[str, str]]:
    """Every documented /v2 route (from the OpenAPI schema)."""
    paths = server.app.openapi()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v2") for m in ops]


def fill(path: str, value: str) -> str:
    for name in ("project", "device", "sa", "key_id", "connector"):
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


def check_shape(r: httpx.Response, stream: bool) -> None:
    settle(r)
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])
    if r.status_code < 400:
        return
    if stream:
        line = r.text.strip()
        if line.startswith("event: error"):
            line = line.split("data: ", 1)[1]
        obj = json.loads(line)
        assert set(obj) == {"error"} and obj["error"]["code"] == r.status_code
        assert obj["error"]["message"]
        return
    body = r.json()
    if "oauth2" in str(r.request.url):
        assert body["error"] and body["error_description"]
        return
    assert set(body) == {"error", "code", "help"}, body
    assert body["code"] == r.status_code and body["error"]


def test_unknown_paths_and_methods_get_the_dt_shape(client: httpx.Client) -> None:
    for method, path in [("GET", "/v2/nothing"), ("DELETE", "/v2/projects"), ("PUT", "/v2/x/y")]:
        r = client.request(method, path)
        assert r.status_code == 404
        check_shape(r, stream=False)


def test_auth_errors(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer a.b.c"},
            {"Authorization": "Basic !!!"},
            {"Authorization": "Basic " + "eDp5"},  # x:y
            {"Authorization": "Digest x"},
        ):
            r = c.get("/v2/projects/p1/devices", headers=headers)
            assert r.status_code == 401
            check_shape(r, stream=False)
            r = c.get("/v2/projects/p1/devices:stream", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == 401


def test_no_500_on_hostile_input_to_any_v2_route(server: Server, client: httpx.Client) -> None:
    assert client.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
    r = client.post("/v2/projects/p1/devices", json={"type": "temperature"})
    assert r.status_code == 200
    device = r.json()["name"].split("/")[-1]
    routes = dt_routes(server)
    assert len(routes) >= 19
    ids = [*HOSTILE_IDS, "p1", device]
    for (method, path), value in itertools.product(routes, ids):
        real = value in ("p1", device)
        if method == "DELETE" and real:
            continue  # deleting what exists is not hostile
        url = fill(path, value)
        stream = path.endswith("devices:stream")
        cases: list[tuple[dict[str, Any], bytes]] = [({}, b"")]
        if real:
            cases += [(q, b"") for q in HOSTILE_QUERIES]
            if method in ("POST", "PATCH"):
                cases += [({}, b) for b in HOSTILE_BODIES]
        for params, body in cases:
            if stream:
                with client.stream(
                    method, url, params=params, timeout=httpx.Timeout(10, read=2)
                ) as r:
                    if r.status_code >= 400:
                        r.read()
                    check_shape(r, stream=True)
                continue
            r = client.request(
                method,
                url,
                params=params,
                content=body,
                headers={"Content-Type": "application/json"},
            )
            check_shape(r, stream=False)
    # Nothing half-written: the device is unchanged and the log holds nothing.
    got = client.get(f"/v2/projects/p1/devices/{device}").json()
    assert got["labels"] == {} and got["reported"] == {}
    assert server.engine.store.head == 0
