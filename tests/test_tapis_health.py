"""``/v3/streams/healthcheck``: tapipy's ``healthcheck`` works, no token is needed, the tenant is
checked, and a stopped part of the engine makes it a 503 naming the part."""

from __future__ import annotations

import httpx
import pytest
from tapipy.errors import BadRequestError

from tests.conftest import Server
from tests.tapis_helpers import TENANT, account, envelope, eventually, home, tapis_for


def test_healthcheck_with_tapipy_and_without_a_token(server: Server, client: httpx.Client) -> None:
    home(client)
    t = tapis_for(server.url, account(client, "home", "alice"))
    got = t.streams.healthcheck(tenant=TENANT)
    assert got == "healthy"
    with pytest.raises(BadRequestError):
        t.streams.healthcheck(tenant="elsewhere")
    bare = httpx.get(server.url + "/v3/streams/healthcheck", params={"tenant": TENANT})
    body = envelope(bare, 200)
    assert body["result"] == "healthy" and "store ok" in body["message"]
    assert "alert rules ok" in body["message"]
    missing = httpx.get(server.url + "/v3/streams/healthcheck")
    assert envelope(missing, 400)["status"] == "error"


def test_healthcheck_names_a_stopped_part(server: Server) -> None:
    alerting = server.engine.alerting
    task = alerting._tasks[1]  # the deadman ticker
    server.engine.store._loop.call_soon_threadsafe(task.cancel)
    url = server.url + "/v3/streams/healthcheck"

    def status() -> int:
        return httpx.get(url, params={"tenant": TENANT}).status_code

    eventually(lambda: status() == 503)
    r = httpx.get(url, params={"tenant": TENANT})
    body = envelope(r, 503)
    assert "alert rules: the deadman task stopped" in body["message"]
