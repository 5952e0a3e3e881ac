"""Data connectors through the real SDK, pushing to a receiver on loopback that checks every push
with DT's own receiver code (``dtintegrations``: PyJWT decode + ``checksum_sha256``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import disruptive as dt
import pytest
from dtintegrations.data_connector import HttpPush

from tests.conftest import MS, Server, start_server
from tests.test_dt_sdk import TokenAuth, emulated

SECRET = "test-secret-at-least-32-bytes-long"  # PyJWT warns about shorter HMAC keys


class Receiver:
    """An HTTP receiver that verifies each push; ``fail`` answers 503 that many times first."""

    def __init__(self) -> None:
        self.pushes: list[HttpPush] = []
        self.rejected: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.fail = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                headers = dict(self.headers.items())
                try:
                    push = HttpPush(headers, body, SECRET)
                except Exception as exc:  # noqa: BLE001 - recorded for the test
                    outer.rejected.append(repr(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                outer.pushes.append(push)
                outer.headers.append(headers)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/push"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 15.0) -> list[HttpPush]:
        deadline = time.monotonic() + timeout
        while len(self.pushes) < n:
            assert time.monotonic() < deadline, (len(self.pushes), self.rejected)
            time.sleep(20 * MS)
        return self.pushes

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _point(server: Server) -> TokenAuth:
    dt.base_url = dt.emulator_base_url = server.url + "/v2"
    return TokenAuth(f"Bearer {server.token}")


def test_connector_pushes_signed_events_through_an_outage(
    tmp_path: Path, receiver: Receiver
) -> None:
    saved = dt.base_url, dt.emulator_base_url
    server = start_server(tmp_path / "data")
    try:
        sdk = _point(server)
        with server.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        d = emulated(sdk, "temperature", {"room": "ü\u2028", "secret": "x", "name": "t"})
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Temperature(celsius=1), auth=sdk)
        con = dt.DataConnector.create_data_connector(
            "p1",
            dt.DataConnector.HttpPushConfig(
                url=receiver.url, signature_secret=SECRET, headers={"X-Extra": "yes"}
            ),
            display_name="push",
            event_types=["temperature", "touch"],
            labels=["room"],
            auth=sdk,
        )
        assert con.status == "ACTIVE" and con.event_types == ["temperature", "touch"]
        # Only events after its creation, of its types.
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Temperature(celsius=2), auth=sdk)
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Co2(ppm=400), auth=sdk)
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Touch(), auth=sdk)
        pushes = receiver.wait(2)
        assert [p.event.event_type for p in pushes] == ["temperature", "touch"]
        assert pushes[0].event.data.celsius == 2.0
        assert pushes[0].labels == {"room": "ü\u2028"}
        meta = pushes[0].get_device_metadata()
        assert meta is not None and meta.device_id == d.device_id and meta.project_id == "p1"
        assert receiver.headers[0]["X-Extra"] == "yes" and not receiver.rejected
        # The receiver is down for a while: the push is retried until it is acknowledged.
        receiver.fail = 2
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Temperature(celsius=3), auth=sdk)
        assert receiver.wait(3)[2].event.data.celsius == 3.0
        deadline = time.monotonic() + 10  # the receiver counts a push before its 200 is read
        while (m := dt.DataConnector.get_metrics(con.data_connector_id, "p1", auth=sdk)) and (
            m.success_count < 3
        ):
            assert time.monotonic() < deadline
            time.sleep(20 * MS)
        metrics = m
        assert metrics.success_count == 3 and metrics.error_count == 2
        assert metrics.latency.endswith("s")
        # A restart while the receiver is down: nothing acknowledged is lost, nothing skipped.
        receiver.fail = 10**6
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Temperature(celsius=4), auth=sdk)
        time.sleep(200 * MS)
        server.stop()
        server = start_server(tmp_path / "data")
        sdk = _point(server)
        receiver.fail = 0
        assert receiver.wait(4)[3].event.data.celsius == 4.0
        # Disabled: nothing is pushed; the connector can be read, changed, listed and deleted.
        dt.DataConnector.update_data_connector(
            con.data_connector_id, "p1", status="USER_DISABLED", auth=sdk
        )
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Touch(), auth=sdk)
        got = dt.DataConnector.get_data_connector(con.data_connector_id, "p1", auth=sdk)
        assert got.status == "USER_DISABLED" and got.config.url == receiver.url
        listed = dt.DataConnector.list_data_connectors("p1", auth=sdk)
        assert [x.data_connector_id for x in listed] == [con.data_connector_id]
        dt.DataConnector.delete_data_connector(con.data_connector_id, "p1", auth=sdk)
        assert dt.DataConnector.list_data_connectors("p1", auth=sdk) == []
        time.sleep(200 * MS)
        assert len(receiver.pushes) == 4
    finally:
        server.stop()
        dt.base_url, dt.emulator_base_url = saved


def test_connector_sync_and_bad_connectors(server: Server, receiver: Receiver) -> None:
    saved = dt.base_url, dt.emulator_base_url
    try:
        sdk = _point(server)
        with server.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        d = emulated(sdk, "co2")
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Co2(ppm=500), auth=sdk)
        con = dt.DataConnector.create_data_connector(
            "p1",
            dt.DataConnector.HttpPushConfig(url=receiver.url, signature_secret=SECRET),
            auth=sdk,
        )
        dt.DataConnector.sync_data_connector(con.data_connector_id, "p1", auth=sdk)
        assert receiver.wait(1)[0].event.data.ppm == 500
        for config in (
            dt.DataConnector.HttpPushConfig(url="ftp://127.0.0.1/x", signature_secret="s"),
            dt.DataConnector.HttpPushConfig(url="not a url", signature_secret="s"),
        ):
            with pytest.raises(dt.errors.BadRequest):
                dt.DataConnector.create_data_connector("p1", config, auth=sdk)
        with pytest.raises(dt.errors.BadRequest):
            dt.DataConnector.create_data_connector(
                "p1",
                dt.DataConnector.HttpPushConfig(url=receiver.url, signature_secret="s"),
                event_types=["nope"],
                auth=sdk,
            )
    finally:
        dt.base_url, dt.emulator_base_url = saved


def test_private_targets_can_be_forbidden(tmp_path: Path) -> None:
    saved = dt.base_url, dt.emulator_base_url
    server = start_server(tmp_path / "data", allow_private_targets=False)
    try:
        sdk = _point(server)
        with server.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        with pytest.raises(dt.errors.BadRequest):
            dt.DataConnector.create_data_connector(
                "p1",
                dt.DataConnector.HttpPushConfig(url="http://127.0.0.1:9/x", signature_secret="s"),
                auth=sdk,
            )
    finally:
        server.stop()
        dt.base_url, dt.emulator_base_url = saved


def test_a_connector_whose_every_push_fails_long_enough_is_system_disabled(
    tmp_path: Path, receiver: Receiver
) -> None:
    saved = dt.base_url, dt.emulator_base_url
    server = start_server(
        tmp_path / "data",
        dt_connector_disable_hours=1 / 3600,  # one second instead of DT's five days
        delivery_retry_first_seconds=0.05,
        delivery_retry_max_seconds=0.2,
    )
    try:
        sdk = _point(server)
        with server.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        d = emulated(sdk, "temperature", {})
        con = dt.DataConnector.create_data_connector(
            "p1",
            dt.DataConnector.HttpPushConfig(url=receiver.url, signature_secret=SECRET),
            event_types=["temperature"],
            auth=sdk,
        )
        receiver.fail = 10**6  # the receiver never accepts
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Temperature(celsius=5), auth=sdk)
        deadline = time.monotonic() + 15
        while (
            got := dt.DataConnector.get_data_connector(con.data_connector_id, "p1", auth=sdk)
        ).status != "SYSTEM_DISABLED":
            assert time.monotonic() < deadline, got.status
            time.sleep(50 * MS)
        tried = receiver.fail
        time.sleep(300 * MS)
        assert receiver.fail == tried  # stopped: no more attempts
        # Enabled again by the user, it pushes what comes from then on.
        receiver.fail = 0
        dt.DataConnector.update_data_connector(
            con.data_connector_id, "p1", status="ACTIVE", auth=sdk
        )
        dt.Emulator.publish_event(d.device_id, "p1", dt.events.Temperature(celsius=6), auth=sdk)
        assert [p.event.data.celsius for p in receiver.wait(1)] == [6.0]
    finally:
        server.stop()
        dt.base_url, dt.emulator_base_url = saved
