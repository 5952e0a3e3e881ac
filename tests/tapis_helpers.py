"""Helpers for the Tapis-face tests: service accounts through the native API, real ``tapipy``
clients holding tokens from ``POST /v3/oauth2/tokens``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
from tapipy.tapis import Tapis

from tests.conftest import free_port

T = TypeVar("T")

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


class Receiver:
    """A webhook receiver on loopback (a real HTTP server in a thread) that records every POST.
    ``stop()`` closes its port (the receiver is down); ``start()`` opens the same port again."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.got: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._cond:
                    receiver.got.append((self.path, json.loads(body)))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait(self, n: int, timeout: float = 30.0) -> list[tuple[str, dict[str, Any]]]:
        """Block until at least ``n`` requests arrived (a bound, not a timing assertion)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.got) >= n, timeout)
            assert len(self.got) >= n, f"got {len(self.got)} of {n}: {self.got}"
            return list(self.got)


def eventually(check: Callable[[], T], timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns a truthy value (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, "condition not reached"
            return value
        time.sleep(0.02)
