"""Operations endpoints: the OpenAPI document and Swagger UI, health, Prometheus metrics."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from fastapi.routing import APIRoute

from streamgauge.app import create_app
from streamgauge.config import Settings
from tests.conftest import Server, make_station, rows


def test_docs_serves_swagger_ui(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anon:
        r = anon.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in r.text.lower()
    assert "/openapi.json" in r.text


def test_openapi_lists_native_paths(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anon:
        r = anon.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] == "streamgauge"
    paths = doc["paths"]
    expected = {
        "/api/v1/projects": {"get", "post"},
        "/api/v1/projects/{project}": {"get", "patch", "delete"},
        "/api/v1/projects/{project}/sites": {"get", "post"},
        "/api/v1/projects/{project}/sites/{site}": {"get", "patch", "delete"},
        "/api/v1/projects/{project}/devices": {"get", "post"},
        "/api/v1/projects/{project}/devices/{device}": {"get", "patch", "delete"},
        "/api/v1/projects/{project}/devices/{device}/variables": {"get", "post"},
        "/api/v1/projects/{project}/devices/{device}/variables/{variable}": {
            "get",
            "patch",
            "delete",
        },
        "/api/v1/projects/{project}/observations": {"get", "post"},
        "/api/v1/projects/{project}/stream": {"get"},
        "/api/v1/projects/{project}/serviceaccounts": {"get", "post"},
        "/api/v1/projects/{project}/serviceaccounts/{sa}": {"get", "patch", "delete"},
        "/api/v1/projects/{project}/serviceaccounts/{sa}/keys": {"get", "post"},
        "/api/v1/projects/{project}/serviceaccounts/{sa}/keys/{key_id}": {"delete"},
        "/api/v1/projects/{project}/roles": {"get"},
        "/api/v1/projects/{project}/roles/{sa}": {"put", "delete"},
        "/healthz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))

    ingest = paths["/api/v1/projects/{project}/observations"]["post"]
    content = ingest["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(content)
    history = paths["/api/v1/projects/{project}/observations"]["get"]
    names = {p["name"] for p in history["parameters"]}
    assert {"device", "variable", "start", "end", "limit", "page", "format"} <= names


def test_healthz(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anon:
        r = anon.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert isinstance(body["head"], int)


def _counter(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


def test_metrics_count_ingested_observations(client: httpx.Client) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE streamgauge_ingest_observations_total counter" in r.text
    before = _counter(r.text, "streamgauge_ingest_observations_total")

    make_station(client)
    assert client.post("/api/v1/projects/p1/observations", json=rows(7)).json()["accepted"] == 7
    after = _counter(client.get("/metrics").text, "streamgauge_ingest_observations_total")
    assert after == before + 7

    # duplicates are not counted as new observations
    assert client.post("/api/v1/projects/p1/observations", json=rows(7)).json()["duplicates"] == 7
    again = _counter(client.get("/metrics").text, "streamgauge_ingest_observations_total")
    assert again == after


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def _face_schema(path: str) -> str:
    if path.startswith("/v2/"):
        return "DTStreamError" if path.endswith("devices:stream") else "DTError"
    if path == "/write":
        return "InfluxV1Error"
    if path.startswith("/api/v2/"):
        return "InfluxV2Error"
    return "TapisError" if path.startswith("/v3/") else "NativeError"


def test_every_operation_declares_its_errors_in_its_face_shape(server: Server) -> None:
    """issue 11 item 16: every operation of /openapi.json declares the 4xx it can answer (400
    everywhere, 401/403 where it authenticates, 404 where it looks something up, 413 where it
    takes a body, 422 on the native face), each referring to its own face's error schema; no
    operation keeps FastAPI's validation shape, which no face answers."""
    with httpx.Client(base_url=server.url) as anon:
        doc = anon.get("/openapi.json").json()
    public = {"/healthz", "/metrics", "/v3/streams/hello", "/v3/streams/ready"}
    public |= {"/v3/streams/healthcheck"}
    tokens = {"/v3/oauth2/tokens", "/v2/oauth2/token"}
    count = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            count += 1
            errors = {int(s): r for s, r in op["responses"].items() if int(s) >= 400}
            where = f"{method.upper()} {path}"
            assert {400, 431, 503} <= set(errors), where
            authenticated = path not in public and not path.startswith(("/v3/tenants", "/v3/sites"))
            if authenticated:
                assert {401, 429} <= set(errors), where
                if path not in tokens:
                    assert 403 in errors, where
            if "{" in path:
                assert 404 in errors, where
            if method in ("post", "put", "patch"):
                assert {409, 413} <= set(errors), where
            if path.startswith("/api/v1/") and (op.get("parameters") or op.get("requestBody")):
                assert 422 in errors, where
            if path.startswith(("/v2/", "/v3/")):
                assert 422 not in errors, where  # those faces answer 400
            for status, response in errors.items():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == f"#/components/schemas/{_face_schema(path)}", (where, status)
    assert count > 100
    assert "HTTPValidationError" not in str(doc)


def test_real_errors_match_the_declared_schemas(server: Server) -> None:
    """issue 11 item 16: what each face really answers validates against the error schema its
    operations declare."""
    with httpx.Client(base_url=server.url) as anon:
        doc = anon.get("/openapi.json").json()
    with server.client() as c:
        cases = [
            ("get", "/api/v1/projects/{project}", c.get("/api/v1/projects/nope"), 404),
            ("get", "/api/v1/projects", c.get("/api/v1/projects?bogus=1"), 400),
            ("post", "/api/v1/projects", c.post("/api/v1/projects", json={"id": 5}), 422),
            ("get", "/v3/streams/projects/{project_id}", c.get("/v3/streams/projects/nope"), 404),
            ("get", "/v2/projects/{project}/devices", c.get("/v2/projects/nope/devices"), 404),
            (
                "get",
                "/v2/projects/{project}/devices:stream",
                c.get("/v2/projects/nope/devices:stream"),
                404,
            ),
        ]
        anon_r = httpx.get(server.url + "/api/v1/projects")
        cases.append(("get", "/api/v1/projects", anon_r, 401))
    for method, path, r, status in cases:
        assert r.status_code == status, (path, r.text)
        declared = doc["paths"][path][method]["responses"][str(status)]
        schema = _resolve(doc, declared["content"]["application/json"]["schema"]["$ref"])
        jsonschema.validate(r.json(), schema)


def test_an_unexpected_error_answers_in_the_faces_shape(tmp_path: Path) -> None:
    """issue 11 item 16: even a 500 (a bug) answers in the error shape of the face whose path
    it is, as the document declares for that face: the Tapis envelope under /v3."""

    async def boom() -> None:
        raise RuntimeError("a bug")

    app = create_app(Settings(data=tmp_path / "d"), admin_token="t")
    for path in ("/v3/boom-for-test", "/api/v1/boom-for-test"):
        app.router.routes.insert(0, APIRoute(path, boom))  # before the faces' catch-alls
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def call(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get(path)

    r = asyncio.run(call("/v3/boom-for-test"))
    assert r.status_code == 500
    body = r.json()
    assert body["status"] == "error" and body["result"] is None
    assert "RuntimeError" in body["message"]
    r = asyncio.run(call("/api/v1/boom-for-test"))
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
