"""Helpers for the Tapis-face tests: service accounts through the native API, real ``tapipy``
clients holding tokens from ``POST /v3/oauth2/tokens``."""

from __future__ import annotations

from typing import Any

import httpx
from tapipy.tapis import Tapis

TENANT = "streamgauge"


def account(client: httpx.Client, project: str, sa: str, role: str = "admin") -> tuple[str, str]:
    """A service account homed in ``project`` with ``role`` there, and a key (id, secret)."""
    r = client.post(f"/api/v1/projects/{project}/serviceaccounts", json={"id": sa, "role": role})
    assert r.status_code == 201, r.text
    r = client.post(f"/api/v1/projects/{project}/serviceaccounts/{sa}/keys")
    assert r.status_code == 201, r.text
    return r.json()["key_id"], r.json()["secret"]


def tapis_for(url: str, key: tuple[str, str]) -> Tapis:
    """A tapipy client that logs in the way a notebook does: username/password, get_tokens()."""
    t = Tapis(base_url=url, username=key[0], password=key[1], tenant_id=TENANT)
    t.get_tokens()
    return t


def home(client: httpx.Client, project: str = "home") -> None:
    """A native project where the test's service accounts live."""
    r = client.post("/api/v1/projects", json={"id": project})
    assert r.status_code == 201, r.text


def envelope(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert set(body) >= {"result", "status", "message", "version"}
    return body
