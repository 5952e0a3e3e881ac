"""Limits on every route (issue 11 item 20): body size, request head size, write timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamgauge.faces import limits
from tests.conftest import MS, Server, make_station, rows, start_server

META_LIMIT = 4096
INGEST_LIMIT = 64 * 1024
HEADER_LIMIT = 2048


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(
        tmp_path / "data",
        max_metadata_body_bytes=META_LIMIT,
        max_body_bytes=INGEST_LIMIT,
        max_header_bytes=HEADER_LIMIT,
    )
    try:
        yield srv
    finally:
        srv.stop()


def _chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    """A body without Content-Length (chunked): the limit must be found while it streams."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_ingest_routes_exist(small: Server) -> None:
    """issue 11 item 20: every route named in INGEST_ROUTES exists, so none silently falls back
    to the smaller limit after a rename."""
    paths = httpx.get(small.url + "/openapi.json").json()["paths"]
    have = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert limits.INGEST_ROUTES <= have


def test_native_metadata_body_over_limit_is_413(small: Server) -> None:
    """issue 11 item 20: a project whose metadata is bigger than the metadata limit is refused
    with 413 in the native shape (declared length and chunked), and nothing is created."""
    with small.client() as c:
        body = {"id": "big", "metadata": {"x": "a" * (META_LIMIT * 2)}}
        r = c.post("/api/v1/projects", json=body)
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "too_large" and str(META_LIMIT) in err["message"]
        r = c.post(
            "/api/v1/projects",
            content=_chunks(META_LIMIT * 4),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["status"] == 413
        assert c.get("/api/v1/projects/big").status_code == 404
        # The connection still serves the next request.
        assert c.post("/api/v1/projects", json={"id": "small"}).status_code == 201


def test_ingest_routes_keep_their_bigger_limit(small: Server) -> None:
    """issue 11 item 20: native ingest accepts a body between the two limits; past the ingest
    limit it is 413."""
    with small.client() as c:
        make_station(c)
        batch = rows(200)
        r = c.post("/api/v1/projects/p1/observations", json=batch)
        assert META_LIMIT < len(r.request.content) < INGEST_LIMIT
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 200
        r = c.post("/api/v1/projects/p1/observations", json=rows(2000, start_ms=1_800_000_000_000))
        assert len(r.request.content) > INGEST_LIMIT
        assert r.status_code == 413, r.text
        head = c.get("/healthz").json()["head"]
        assert head == 200  # nothing of the refused batch was written


def test_tapis_measurements_over_limit_is_413_in_the_tapis_envelope(small: Server) -> None:
    """issue 11 item 20: a Tapis measurement body past the ingest limit (chunked) gets 413 in
    the Tapis envelope; a Tapis project body past the metadata limit likewise."""
    with small.client() as c:
        r = c.post(
            "/v3/streams/measurements",
            content=_chunks(INGEST_LIMIT * 3),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["status"] == "error" and body["result"] is None
        assert str(INGEST_LIMIT) in body["message"]
        r = c.post(
            "/v3/streams/projects",
            json={"project_name": "p", "description": "x" * (META_LIMIT * 2)},
        )
        assert r.status_code == 413, r.text
        assert r.json()["status"] == "error"


def test_dt_body_over_limit_is_413_in_the_dt_shape(small: Server) -> None:
    """issue 11 item 20: the DT face answers an oversized body in its own error shape."""
    with small.client() as c:
        make_station(c)
        r = c.post(
            "/v2/projects/p1/devices:batchUpdate",
            content=_chunks(META_LIMIT * 3),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413, r.text
        assert r.json()["code"] == 413 and "error" in r.json()


def _raw(url: str, request: bytes, read_for: float = 10.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_for) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the head was all sent
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
        return out


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_oversized_request_head_is_431(tmp_path: Path, protocol: str) -> None:
    """issue 11 item 20: a request head over the header limit is answered 431 in the face's
    shape (httptools and h11), a head far over it (8 MB) without buffering it whole, and the
    server keeps serving."""
    options: dict[str, Any] = {}
    if protocol == "h11":
        options["http"] = limits.http_protocol(HEADER_LIMIT, 30.0, h11_only=True)
    srv = start_server(tmp_path / "d", uvicorn_options=options, max_header_bytes=HEADER_LIMIT)
    try:
        with srv.client() as c:
            r = c.get("/api/v1/projects", headers={"X-Big": "a" * (HEADER_LIMIT * 2)})
            assert r.status_code == 431, r.text
            assert r.json()["error"]["code"] == "headers_too_large"
            r = c.get("/v3/streams/projects", headers={"X-Big": "a" * (HEADER_LIMIT * 2)})
            assert r.status_code == 431, r.text
            assert r.json()["status"] == "error"
            r = c.get("/v2/projects/p/devices:stream", headers={"X-Big": "a" * (HEADER_LIMIT * 2)})
            assert r.status_code == 431, r.text
            assert r.json()["error"]["code"] == 431  # the DT stream's error line
            r = c.get("/api/v1/projects", headers={"X-Fine": "a" * (HEADER_LIMIT // 2)})
            assert r.status_code == 200, r.text
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20)
        reply = _raw(srv.url, huge)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
        assert httpx.get(srv.url + "/healthz").status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("form", ["ndjson", "sse"])
def test_a_client_that_stops_reading_is_closed_after_the_write_timeout(
    tmp_path: Path, form: str
) -> None:
    """issue 11 item 20: a stream client (NDJSON or SSE) that reads nothing is disconnected once
    the server has made no progress writing to it for write_timeout_seconds; its subscription
    goes away and other clients are served meanwhile. (The limit is in the HTTP protocol, under
    every streaming response: the DT stream's is the same.)"""
    srv = start_server(tmp_path / "d", write_timeout_seconds=500 * MS)
    try:
        with srv.client(timeout=60) as c:
            make_station(c)
            for k in range(6):  # about 9 MB of NDJSON, more than every socket buffer holds
                start = 1_600_000_000_000 + k * 10_000 * 1000
                r = c.post("/api/v1/projects/p1/observations", json=rows(10_000, start_ms=start))
                assert r.status_code == 200, r.text
            host, port = srv.url.removeprefix("http://").split(":")
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall(
                f"GET /api/v1/projects/p1/stream?since=0&format={form} HTTP/1.1\r\n".encode()
                + b"Host: x\r\n"
                b"Authorization: Bearer " + srv.token.encode() + b"\r\n\r\n"
            )
            try:
                deadline = time.monotonic() + 30
                while srv.engine.hub.subscribers == 0 and time.monotonic() < deadline:
                    time.sleep(10 * MS)
                assert srv.engine.hub.subscribers == 1
                # Others are served while that client is stuck.
                assert c.get("/api/v1/projects/p1").status_code == 200
                deadline = time.monotonic() + 60
                while srv.engine.hub.subscribers and time.monotonic() < deadline:
                    time.sleep(20 * MS)
                assert srv.engine.hub.subscribers == 0
                # The connection is gone: reading drains what the kernel held, then ends.
                s.settimeout(10)
                got = 0
                try:
                    while data := s.recv(1 << 20):
                        got += len(data)
                except ConnectionResetError:
                    pass
                assert 0 < got < 9_000_000
            finally:
                s.close()
            assert c.get("/healthz").status_code == 200
    finally:
        srv.stop()


class _Transport:
    def __init__(self) -> None:
        self.size = 100_000
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.size

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class _Timer:
    def cancel(self) -> None:
        pass


class _Loop:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def call_later(self, delay: float, fn: Any) -> _Timer:
        self.calls.append(fn)
        return _Timer()


def test_write_timeout_spares_a_slow_reader_that_makes_progress() -> None:
    """issue 11 item 20: the write timeout measures progress (the transport's buffer
    shrinking), so a slow reader keeps its connection and only a stuck one is aborted."""
    guard = limits._Limits()
    guard.write_timeout = 1.0
    transport, loop = _Transport(), _Loop()
    guard.transport, guard.loop = transport, loop  # type: ignore[assignment]
    guard._limits_init()
    guard._stall_arm()
    transport.size -= 10  # the client read a little
    loop.calls.pop()()
    assert not transport.aborted and loop.calls  # re-armed
    loop.calls.pop()()  # nothing read since
    assert transport.aborted
