"""tapipy built from a base_url alone: ``GET /v3/tenants`` and ``GET /v3/sites``
(issue 11 item 5)."""

from __future__ import annotations

import httpx
from tapipy.tapis import Tapis

from tests.conftest import Server
from tests.tapis_helpers import TENANT, account, envelope, home


def test_tapipy_without_tenant_id_logs_in_and_calls(server: Server, client: httpx.Client) -> None:
    """issue 11 item 5: ``Tapis(base_url, username, password)`` without ``tenant_id`` (the
    CI-TRACS notebook's form) finds its tenant through /v3/sites and /v3/tenants, then
    ``get_tokens()`` and a real call work."""
    home(client)
    key_id, secret = account(client, "home", "nb")
    t = Tapis(base_url=server.url, username=key_id, password=secret)
    assert t.tenant_id == TENANT
    t.get_tokens()
    project = t.streams.create_project(project_name="nb project", owner="nb", pi="nb")
    assert project.project_id == "nbproject"
    assert [p.project_id for p in t.streams.list_projects()] == ["home", "nbproject"]


def test_tapipy_jwt_without_tenant_id(server: Server, client: httpx.Client) -> None:
    """issue 11 item 5: the ``jwt=`` form without ``tenant_id`` works the same way."""
    home(client)
    key_id, secret = account(client, "home", "nb")
    r = client.post(
        "/v3/oauth2/tokens",
        json={"username": key_id, "password": secret, "grant_type": "password"},
    )
    jwt = envelope(r, 201)["result"]["access_token"]["access_token"]
    t = Tapis(base_url=server.url, jwt=jwt)
    assert t.tenant_id == TENANT
    assert [p.project_id for p in t.streams.list_projects()] == ["home"]


def test_tenant_base_url_is_the_url_the_client_used(server: Server) -> None:
    """issue 11 item 5: the tenant's base_url is scheme + Host as sent, so a client that
    calls the server by another name (localhost, a DNS name) matches too; no token needed."""
    port = server.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"sensors.example:{port}"):
        with httpx.Client(base_url=server.url, headers={"Host": host}) as anon:
            tenants = envelope(anon.get("/v3/tenants"), 200)["result"]
            sites = envelope(anon.get("/v3/sites"), 200)["result"]
            tenant = envelope(anon.get(f"/v3/tenants/{TENANT}"), 200)["result"]
        assert [x["base_url"] for x in tenants] == [f"http://{host}"]
        assert tenants[0]["tenant_id"] == TENANT == tenant["tenant_id"]
        assert tenants[0]["site_id"] == sites[0]["site_id"]
        assert sites[0]["site_admin_tenant_id"] == TENANT
    with httpx.Client(base_url=server.url) as anon:
        assert envelope(anon.get("/v3/tenants/other"), 404)["status"] == "error"
        assert envelope(anon.get("/v3/sites/other"), 404)["status"] == "error"
