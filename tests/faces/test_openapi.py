"""Operations endpoints: the OpenAPI document and Swagger UI, health, Prometheus metrics."""

from __future__ import annotations

import re

import httpx

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
