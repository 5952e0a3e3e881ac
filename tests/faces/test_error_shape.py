"""Every error of the native face has one shape:
``{"error": {"status", "code", "message", "details": [...]}}`` with ``status`` equal to the HTTP
status, whoever raised it (our code, FastAPI's validation, Starlette's routing)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from tests.conftest import Server, make_station, rows, start_server

API = "/api/v1/projects"
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
}


def assert_error_shape(r: httpx.Response, status: int) -> None:
    if r.status_code >= 500:  # let the server finish logging it (see test_native_crud.settle)
        httpx.get(r.url.join("/healthz"), timeout=10)
    assert r.status_code == status, (r.request.method, r.request.url, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert list(body) == ["error"], body
    err = body["error"]
    assert set(err) == {"status", "code", "message", "details"}, err
    assert err["status"] == status
    assert err["code"] == CODES[status]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], list)
    for d in err["details"]:
        assert isinstance(d, dict)
        assert isinstance(d.get("reason", ""), str)


def test_error_shape_across_statuses(server: Server, client: httpx.Client) -> None:
    make_station(client, "p1", devices=2)
    make_station(client, "p2", devices=1)
    assert client.post(f"{API}/p1/serviceaccounts", json={"id": "u", "role": "user"}).status_code
    key = client.post(f"{API}/p1/serviceaccounts/u/keys").json()
    auth = base64.b64encode(f"{key['key_id']}:{key['secret']}".encode()).decode()
    user = httpx.Client(base_url=server.url, headers={"Authorization": f"Basic {auth}"})
    anon = httpx.Client(base_url=server.url)
    assert client.post(f"{API}/p1/observations", json=rows(2)).status_code == 200
    changed = [{**rows(2)[0], "value": 42.0}]
    obs = f"{API}/p1/observations"
    json_h = {"Content-Type": "application/json"}

    cases: list[tuple[int, Callable[[], httpx.Response]]] = [
        # 401: missing, bad bearer, malformed basic
        (401, lambda: anon.get(API)),
        (401, lambda: anon.post(obs, json=rows(1))),
        (401, lambda: client.get(API, headers={"Authorization": "Bearer nope"})),
        (401, lambda: client.get(API, headers={"Authorization": "Basic ???"})),
        # 403: role does not allow
        (403, lambda: user.post(obs, json=rows(1))),
        (403, lambda: user.delete(f"{API}/p1/devices/d0")),
        (403, lambda: user.get(f"{API}/p1/serviceaccounts")),
        # 404: our NotFound, an invisible project, unknown routes
        (404, lambda: client.get(f"{API}/nope")),
        (404, lambda: client.get(f"{API}/p1/devices/nope")),
        (404, lambda: user.get(f"{API}/p2")),
        (404, lambda: client.get("/no/such/route")),
        (404, lambda: client.get("/api/v1/nothing-here")),
        (404, lambda: anon.get("/api/v2/projects")),
        # 405: Starlette's method check
        (405, lambda: client.put(API, json={})),
        (405, lambda: client.delete(obs)),
        (405, lambda: client.post("/healthz")),
        # 409
        (409, lambda: client.post(API, json={"id": "p1"})),
        (409, lambda: client.post(obs, json=changed)),
        (409, lambda: client.delete(f"{API}/p1/sites/s1")),
        (409, lambda: client.post(f"{API}/p2/serviceaccounts", json={"id": "u"})),
        # 422: FastAPI's own validation (body, query) and ours
        (422, lambda: client.post(API, json={"id": "bad id"})),
        (422, lambda: client.post(API, json={"unknown": 1})),
        (422, lambda: client.post(API, content=b"[1, 2]", headers=json_h)),
        (422, lambda: client.get(API, params={"limit": "many"})),
        (422, lambda: client.get(obs, params={"format": "xml"})),
        (422, lambda: client.post(obs, json=[{**rows(1)[0], "device": "ghost"}])),
        (422, lambda: client.put(f"{API}/p1/roles/u", json={})),
        (422, lambda: client.patch(f"{API}/p1", content=b"not json", headers=json_h)),
        # 400
        (400, lambda: client.get(API, params={"bogus": "1"})),
        (400, lambda: client.post(obs, content=b"[{", headers=json_h)),
        (400, lambda: client.post(obs, content=b"x", headers={"Content-Type": "text/csv"})),
        (400, lambda: client.get(obs, params={"start": "soon"})),
        (400, lambda: client.get(obs, params={"page": "%%"})),
        (400, lambda: client.get(f"{API}/p1/stream", params={"since": "abc"})),
    ]
    try:
        for status, call in cases:
            assert_error_shape(call(), status)
    finally:
        user.close()
        anon.close()


def test_validation_error_details_name_field_and_index(client: httpx.Client) -> None:
    r = client.post(API, json=[{"id": "ok"}, {"id": "fine", "nmae": "x"}])
    assert_error_shape(r, 422)
    details = r.json()["error"]["details"]
    assert any(d.get("index") == 1 and d.get("field") == "nmae" for d in details), details

    r = client.get(API, params={"limit": "-3"})
    assert_error_shape(r, 422)
    details = r.json()["error"]["details"]
    assert any(d.get("in") == "query" and d.get("field") == "limit" for d in details), details


def test_413_shape(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d", max_body_bytes=2048)
    try:
        with srv.client() as c:
            make_station(c)
            big = orjson.dumps(rows(200))
            r = c.post(
                f"{API}/p1/observations", content=big, headers={"Content-Type": "application/json"}
            )
            assert_error_shape(r, 413)
    finally:
        srv.stop()


def test_401_carries_www_authenticate(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anon:
        r = anon.get(API)
    assert_error_shape(r, 401)
    assert "Basic" in r.headers["www-authenticate"]
