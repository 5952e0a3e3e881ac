"""Restarts and shutdown as stream clients see them: the unmodified ``disruptive`` SDK's
``event_stream`` lives through a restart of ``streamgauge serve`` (a real subprocess), every
stream ends with a complete response when the server stops, and an idle server is down fast.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import disruptive as dt
import httpx
import pytest

from tests.conftest import Server, free_port
from tests.test_cli import EXE, clean_env, started, wait_healthy
from tests.test_dt_sdk import Reader, TokenAuth

TOKEN = "restart-admin-token"
STOP_S = 3.0  # loose bound of a shutdown with nothing in flight (measured: about 0.2 s)


def sigterm(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM; the seconds until the process exited (by itself, cleanly)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    assert code in (0, -signal.SIGTERM), f"exit code {code}"
    return elapsed


@pytest.fixture
def sdk_base() -> Iterator[None]:
    saved = dt.base_url, dt.emulator_base_url
    try:
        yield
    finally:
        dt.base_url, dt.emulator_base_url = saved


def serve_cmd(port: int, data: Path) -> list[str]:
    return [*EXE, "serve", "--port", str(port), "--data", str(data)]


def publish_until(reader: Reader, device: Any, auth: TokenAuth, deadline_s: float) -> Any:
    """Publish touch events (a live-only stream misses those sent before it reconnects) until
    the reader yields one; that event."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert not reader.error, f"the SDK's stream ended: {reader.error[0]!r}"
        dt.Emulator.publish_event(device.device_id, "p1", dt.events.Touch(), auth=auth)
        try:
            return reader.events.get(timeout=0.5)
        except queue.Empty:
            continue
    raise AssertionError(f"the SDK's stream yielded nothing in {deadline_s} s")


def test_sdk_event_stream_lives_through_a_server_restart(tmp_path: Path, sdk_base: None) -> None:
    """issue 11 item 10: on SIGTERM the server sends every stream its 503 line and stops
    accepting; the SDK reconnects (its backoff: at once, 1 s, 4 s) and, whether it meets the
    old server going down, a refused connection or the new server still starting (its socket
    is bound first, so the connection waits in the backlog), it never sees a stream cut
    mid-chunk (``ChunkedEncodingError``, which it does not retry). It yields the first event
    published after the restart. The idle part of the shutdown is fast."""
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(STREAMGAUGE_ADMIN_TOKEN=TOKEN)
    dt.base_url = dt.emulator_base_url = url + "/v2"
    auth = TokenAuth(f"Bearer {TOKEN}")
    with started(serve_cmd(port, data), tmp_path / "first.log", env) as first:
        wait_healthy(first, url, tmp_path / "first.log")
        r = httpx.post(
            f"{url}/api/v1/projects",
            json={"id": "p1"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        device = dt.Emulator.create_device("p1", "touch", auth=auth)
        reader = Reader({"project_id": "p1", "auth": auth}).start()
        before = publish_until(reader, device, auth, 60)
        assert before.event_type == "touch"
        stopped_in = sigterm(first)
    log = (tmp_path / "first.log").read_text()
    assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log, log
    assert stopped_in < 10, f"shutdown with one stream open took {stopped_in:.2f} s"

    with started(serve_cmd(port, data), tmp_path / "second.log", env) as second:
        wait_healthy(second, url, tmp_path / "second.log")
        after = publish_until(reader, device, auth, 60)
        assert after.event_type == "touch" and after.event_id != before.event_id
        assert not reader.error
        idle_stop = sigterm(second)
    # The SDK's generator is still alive (it retries the closed stream in the background).
    assert idle_stop < STOP_S, f"shutdown took {idle_stop:.2f} s"
    log = (tmp_path / "second.log").read_text()
    assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log, log


def read_to_end(resp: httpx.Response, lines: list[str]) -> None:
    for line in resp.iter_lines():  # raises RemoteProtocolError if the body is cut mid-chunk
        lines.append(line)


def test_shutdown_ends_every_stream_with_a_complete_response(tmp_path: Path) -> None:
    """issue 11 item 10: native NDJSON, native SSE, DT NDJSON and DT SSE streams open at
    SIGTERM each end with their closing frame (the resume cursor) and a complete chunked body,
    and the server is down well under the graceful-shutdown timeout."""
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with started(
        serve_cmd(port, data), tmp_path / "s.log", clean_env(STREAMGAUGE_ADMIN_TOKEN=TOKEN)
    ) as proc:
        wait_healthy(proc, url, tmp_path / "s.log")
        assert httpx.post(f"{url}/api/v1/projects", json={"id": "p1"}, headers=headers).is_success
        sse = {**headers, "Accept": "text/event-stream"}
        specs = [
            ("/api/v1/projects/p1/stream", headers),
            ("/api/v1/projects/p1/stream", sse),
            ("/v2/projects/p1/devices:stream", headers),
            ("/v2/projects/p1/devices:stream", sse),
        ]
        results: list[list[str]] = [[] for _ in specs]
        errors: list[BaseException] = []
        opened = threading.Barrier(len(specs) + 1, timeout=60)

        def run(i: int) -> None:
            path, h = specs[i]
            try:
                with (
                    httpx.Client(base_url=url, timeout=httpx.Timeout(60)) as c,
                    c.stream("GET", path, headers=h) as resp,
                ):
                    assert resp.status_code == 200
                    opened.wait()
                    read_to_end(resp, results[i])
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        opened.wait()
        stopped_in = sigterm(proc)
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    native, native_sse, dt_ndjson, dt_sse = ("\n".join(r) for r in results)
    assert "shutting down" in native and "shutting down" in native_sse, (native, native_sse)
    assert '"code":503' in dt_ndjson and "reconnect with since=" in dt_ndjson, dt_ndjson
    assert "event: closed" in dt_sse, dt_sse
    assert stopped_in < STOP_S, f"shutdown with four streams open took {stopped_in:.2f} s"


def test_a_stream_opened_during_shutdown_ends_at_once(server: Server) -> None:
    """issue 11 item 10: once shutdown has begun, a new stream (a client reconnecting at once
    on a kept-alive connection) is answered with a complete response holding the 503 line and
    its resume cursor, instead of being accepted as live and cut when the server goes down."""
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        server.app.state.engine.begin_shutdown()
        t0 = time.monotonic()
        r = c.get("/v2/projects/p1/devices:stream")
        assert r.status_code == 200
        lines = r.text.splitlines()
        assert len(lines) == 1 and '"code":503' in lines[0] and "since=0" in lines[0], r.text
        r = c.get("/api/v1/projects/p1/stream")
        assert "shutting down" in r.text
        assert time.monotonic() - t0 < 30  # it ended by itself (no read timeout)


def test_sdk_gets_a_clean_error_not_a_cut_stream_when_told_to_reconnect(
    server: Server, sdk_base: None
) -> None:
    """issue 11 item 10: the SDK's stream, told to reconnect by the 503 line while the server
    is shutting down, meets another complete 503 line (a DT API error it retries), never a
    transport error."""
    dt.base_url = server.url + "/v2"
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
    server.app.state.engine.begin_shutdown()
    stream = dt.Stream.event_stream(
        "p1", auth=TokenAuth(f"Bearer {server.token}"), request_attempts=1
    )
    with pytest.raises(dt.errors.InternalServerError):  # after its retry, each a 503 line
        next(stream)


def test_serve_binds_before_the_app_is_imported(tmp_path: Path) -> None:
    """issue 11 item 10: ``streamgauge serve`` listens before importing the app, so a client
    that connects while the server starts waits in the backlog and is then served, instead of
    being refused (how the SDK's stream survives a restart slower than its backoff)."""
    data, port = tmp_path / "data", free_port()
    log = tmp_path / "s.log"
    env = clean_env(STREAMGAUGE_ADMIN_TOKEN=TOKEN)
    with started(serve_cmd(port, data), log, env) as proc:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, "the port never accepted a connection"
                time.sleep(0.01)
        with sock:
            # Connected before the app was built (it prints this line once built).
            assert "serving on" not in log.read_text()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply
        assert sigterm(proc) < STOP_S
