"""The PostgreSQL backend beyond the conformance suite: ``streamgauge migrate`` from an embedded
deployment, a node that cannot reach its store at start, and connections PostgreSQL ended
replaced without a 503."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from streamgauge.cli import app
from tests.conftest import Server, free_port, make_station, rows, start_server
from tests.pg import fresh_database

API = "/api/v1/projects"


def _history(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get(f"{API}/p1/observations", params={"limit": 10_000})
    assert r.status_code == 200, r.text
    obs: list[dict[str, Any]] = r.json()["observations"]
    return obs


def _basic(key: dict[str, str]) -> dict[str, str]:
    raw = f"{key['key_id']}:{key['secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def _embedded_deployment(data: Path) -> dict[str, Any]:
    """An embedded server with metadata, observations, an account with a key, a channel and a
    feed token; stopped. What it served, to compare after the copy."""
    srv = start_server(data, store=None)
    try:
        with srv.client() as c:
            make_station(c, "p1")
            batch = rows(40) + [{"device": "d0", "variable": "note", "time": 1, "value": "hi"}]
            r = c.post(f"{API}/p1/devices/d0/variables", json={"name": "note", "unit": None})
            assert r.status_code == 201, r.text
            assert c.post(f"{API}/p1/observations", json=batch).status_code == 200
            r = c.post(f"{API}/p1/serviceaccounts", json={"id": "bot", "role": "user"})
            assert r.status_code == 201, r.text
            key = c.post(f"{API}/p1/serviceaccounts/bot/keys").json()
            channel = {
                "id": "hot",
                "triggers": [
                    {"device": "d0", "variable": "air_temp", "operator": ">=", "value": 100}
                ],
            }
            assert c.post(f"{API}/p1/channels", json=channel).status_code == 201
            assert c.post(f"{API}/p1/feedtokens", json={"name": "f"}).status_code == 201
            return {
                "history": _history(c),
                "head": srv.engine.store.head,
                "key": key,
                "channels": c.get(f"{API}/p1/channels").json(),
                "feedtokens": c.get(f"{API}/p1/feedtokens").json(),
            }
    finally:
        srv.stop()


def test_migrate_copies_an_embedded_deployment_into_postgresql(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = _embedded_deployment(data)
    with fresh_database() as url:
        result = CliRunner().invoke(app, ["migrate", "--from", str(data), "--store", url])
        assert result.exit_code == 0, result.output
        assert "observations" in result.output
        srv = start_server(data, store=url)
        try:
            assert srv.engine.backend.name == "postgresql"
            assert srv.engine.store.head == before["head"]
            with srv.client() as c:
                assert _history(c) == before["history"]  # same rows, values and cursors
                assert c.get(f"{API}/p1/channels").json() == before["channels"]
                assert c.get(f"{API}/p1/feedtokens").json() == before["feedtokens"]
                # New rows continue the copied log, and new pks do not collide.
                r = c.post(f"{API}/p1/observations", json=rows(1, start_ms=1_750_000_000_000))
                assert r.status_code == 200, r.text
                assert r.json()["first_cursor"] == before["head"] + 1
                assert c.post(f"{API}/p1/sites", json={"id": "s2"}).status_code == 201
            with httpx.Client(base_url=srv.url, headers=_basic(before["key"])) as sa:
                assert sa.get(f"{API}/p1").status_code == 200  # the key works on the new store
        finally:
            srv.stop()
        # A second copy into the now used database is refused, and nothing changes.
        again = CliRunner().invoke(app, ["migrate", "--from", str(data), "--store", url])
        assert again.exit_code == 1
        assert "not empty" in again.output


def test_migrate_names_a_missing_embedded_database(tmp_path: Path) -> None:
    with fresh_database() as url:
        result = CliRunner().invoke(app, ["migrate", "--from", str(tmp_path), "--store", url])
    assert result.exit_code == 1
    assert "no embedded database" in result.output


def test_serve_exits_non_zero_naming_an_unreachable_store(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "streamgauge.cli", "serve", "--port", str(free_port())]
        + ["--data", str(tmp_path / "data"), "--store", url],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "", "STREAMGAUGE_ADMIN_TOKEN": "t", **_pythonpath()},
    )
    assert done.returncode == 1, done.stderr
    assert "cannot reach the store" in done.stderr and url in done.stderr


def _pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "LANG")}


@pytest.fixture
def pg_server(tmp_path: Path) -> Any:
    with fresh_database() as url:
        srv = start_server(tmp_path / "data", store=url)
        try:
            yield srv, url
        finally:
            srv.stop()


def _drop_connections(url: str) -> int:
    """End every connection of the server to its database, as a PostgreSQL restart would."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        got = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return int(got[0]) if got else 0


def test_connections_ended_by_postgres_are_replaced_without_a_503(
    pg_server: tuple[Server, str],
) -> None:
    """Connections that went stale while idle (PostgreSQL ended them, as a restart would) fail
    at their transaction's first statement: the write or read runs again on a new connection
    instead of answering 503 when the store is back. (503 with ``Retry-After`` while the store
    is unreachable: ``tests/cluster/test_store_faults.py``.)"""
    srv, url = pg_server
    with srv.client() as c:
        make_station(c, "p1")
        assert c.post(f"{API}/p1/observations", json=rows(4)).status_code == 200
        assert _drop_connections(url) >= 1
        r = c.post(f"{API}/p1/observations", json=rows(4, start_ms=1_710_000_000_000))
        assert r.status_code == 200, r.text
        assert (r.json()["accepted"], r.json()["first_cursor"]) == (4, 5)
        _drop_connections(url)
        statuses = {c.get(f"{API}/p1/observations").status_code for _ in range(3)}
        assert statuses == {200}
        assert len(_history(c)) == 8
