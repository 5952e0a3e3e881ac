"""Shared fixtures: a real streamgauge server on loopback (uvicorn in a thread), and clients.

Endless streams are tested against a real server, never an in-memory transport that waits for the
whole body. ``MS`` scales every timing in the tests (``STREAMGAUGE_TEST_MS``, default 1.0).

Storage modes: servers store in the embedded SQLite database, or with
``STREAMGAUGE_TEST_STORE=postgresql`` in a fresh PostgreSQL database per data directory (a restart
on the same directory finds its database again; each is dropped after its test). A module that
sets ``STORES = ["sqlite", "postgresql"]`` runs each of its tests in both modes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from streamgauge.app import create_app, server_options
from streamgauge.config import Settings
from tests.pg import fresh_database

# Servers the tests start (``streamgauge serve`` in a subprocess inherits this) run as one
# process unless a test asks for fan-out workers (tests/workers/).
os.environ.setdefault("STREAMGAUGE_WORKERS", "1")
MS = float(os.environ.get("STREAMGAUGE_TEST_MS", "1.0")) / 1000  # one scaled millisecond
TOKEN = "test-admin-token"
STORE_MODES = ("sqlite", "postgresql")
DEFAULT_STORE = os.environ.get("STREAMGAUGE_TEST_STORE", "sqlite")
assert DEFAULT_STORE in STORE_MODES, f"STREAMGAUGE_TEST_STORE must be one of {STORE_MODES}"


class _Stores:
    """The storage mode of the running test, and the PostgreSQL databases made for servers (by
    data directory): a database is dropped at the end of the first test that ends with no
    server running on it (a server of a module-scoped fixture keeps its own), or at the end of
    the session."""

    mode = DEFAULT_STORE
    databases: dict[Path, tuple[str, contextlib.ExitStack]] = {}
    running: dict[Path, int] = {}

    @classmethod
    def url_for(cls, data: Path) -> str:
        key = data.resolve()
        if key not in cls.databases:
            exit_ = contextlib.ExitStack()
            cls.databases[key] = (exit_.enter_context(fresh_database("sg_api")), exit_)
        return cls.databases[key][0]

    @classmethod
    def started(cls, data: Path, delta: int) -> None:
        key = data.resolve()
        if key in cls.databases:
            cls.running[key] = cls.running.get(key, 0) + delta

    @classmethod
    def drop_unused(cls, everything: bool = False) -> None:
        for key in list(cls.databases):
            if everything or cls.running.get(key, 0) <= 0:
                _, exit_ = cls.databases.pop(key)
                cls.running.pop(key, None)
                exit_.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    _Stores.drop_unused(everything=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    stores = getattr(metafunc.module, "STORES", None)
    if stores is not None and "store_mode" in metafunc.fixturenames:
        metafunc.parametrize("store_mode", stores, indirect=True)


@pytest.fixture(autouse=True)
def store_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """The storage mode of this test's servers (``STORES`` of the module, else the default)."""
    _Stores.mode = getattr(request, "param", DEFAULT_STORE)
    try:
        yield _Stores.mode
    finally:
        _Stores.mode = DEFAULT_STORE
        _Stores.drop_unused()


# Each pytest-xdist worker hands out ports from its own range below the kernel's ephemeral
# ports (32768 and up on Linux), so a port handed out for a server to bind later is neither
# handed to another worker nor taken meanwhile by the kernel for an outgoing connection.
_PORT_SPAN = 1_500
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_PORT_BASE = 20_000 + _WORKER % 8 * _PORT_SPAN
_next_port = itertools.count(random.randrange(_PORT_SPAN))


def free_port() -> int:
    """A loopback port nobody listens on, for a server started later to bind."""
    for _ in range(_PORT_SPAN):
        port = _PORT_BASE + next(_next_port) % _PORT_SPAN
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (or lingering in TIME_WAIT)
                continue
        return port
    raise RuntimeError(f"no free port in {_PORT_BASE}-{_PORT_BASE + _PORT_SPAN - 1}")


@dataclass
class Server:
    url: str
    token: str
    data: Path
    app: Any
    thread: threading.Thread
    server: uvicorn.Server

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def client(self, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        kw.setdefault("timeout", 10)
        return httpx.Client(base_url=self.url, headers=headers, **kw)

    def stop(self) -> None:
        self.engine.hub.close_all("server shutting down")
        self.server.should_exit = True
        self.thread.join(timeout=10)
        _Stores.started(self.data, -1)


def start_server(
    data: Path, uvicorn_options: dict[str, Any] | None = None, **settings: Any
) -> Server:
    """A real server on loopback in a thread, with the app's uvicorn options (``uvicorn_options``
    overrides some of them). Outbound targets on loopback are allowed here (the tests' receivers
    listen there); the server's own default refuses them."""
    settings.setdefault("keepalive_seconds", 1000 * MS)
    settings.setdefault("allow_private_targets", True)
    if _Stores.mode == "postgresql":
        settings.setdefault("store", _Stores.url_for(data))
    app = create_app(Settings(data=data, **settings), admin_token=TOKEN)
    port = free_port()
    options = {**server_options(app.state.engine.settings), **(uvicorn_options or {})}
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    _Stores.started(data, +1)
    return Server(f"http://127.0.0.1:{port}", TOKEN, data, app, thread, server)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "data")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def make_station(client: httpx.Client, project: str = "p1", devices: int = 2) -> None:
    """A project with one site and ``devices`` weather stations (air_temp, wind_speed)."""
    r = client.post("/api/v1/projects", json={"id": project})
    assert r.status_code == 201, r.text
    r = client.post(
        f"/api/v1/projects/{project}/sites",
        json={"id": "s1", "lat": 40.7, "lon": -111.9, "state": "UT", "network": "N1"},
    )
    assert r.status_code == 201, r.text
    body = [
        {
            "id": f"d{i}",
            "site": "s1",
            "type": "weather_station" if i % 2 else "buoy",
            "labels": {"parity": "odd" if i % 2 else "even", "n": str(i)},
            "variables": [
                {"name": "air_temp", "unit": "degC"},
                {"name": "wind_speed", "unit": "m/s"},
            ],
        }
        for i in range(devices)
    ]
    r = client.post(f"/api/v1/projects/{project}/devices", json=body)
    assert r.status_code == 201, r.text


def rows(n: int, start_ms: int = 1_700_000_000_000, devices: int = 2) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        out.append(
            {
                "device": f"d{i % devices}",
                "variable": "air_temp" if (i // devices) % 2 == 0 else "wind_speed",
                "time": start_ms + i * 1000,
                "value": float(i % 40),  # within every catalog range
            }
        )
    return out


def settle(r: httpx.Response) -> None:
    """After a 5xx, wait until the server has logged it: uvicorn prints the traceback on its loop
    thread right after sending the reply, and CPython 3.11's traceback carets (``ast``) are not
    thread-safe against pytest formatting a failure at the same moment. One more request on a
    fresh connection is served only once that logging is done."""
    if r.status_code >= 500:
        httpx.get(r.url.join("/healthz"), timeout=10)


def expect_error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The ``error`` object of a reply that must have ``status``, in the native error shape."""
    settle(r)
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["status"] == status
    return err
