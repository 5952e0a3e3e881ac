"""Alert rules are a durable consumer of the log: an alert whose observation was acknowledged is
logged and delivered once even when the server is killed before it wrote the alert, trigger
states continue across restarts, and the live path does not write per batch."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamgauge.core import alerting
from tests.conftest import MS, free_port, start_server
from tests.tapis_helpers import Receiver, eventually
from tests.test_channels import T0, obs, station

TOKEN = "alert-kill-token"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def spawn(data: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """A real ``streamgauge serve`` subprocess, ready when ``/healthz`` answers."""
    env = {**os.environ, "STREAMGAUGE_ADMIN_TOKEN": TOKEN}
    env["STREAMGAUGE_ALLOW_PRIVATE_TARGETS"] = "true"  # the test receiver listens on loopback
    env |= {f"STREAMGAUGE_{k.upper()}": v for k, v in settings.items()}
    log = data.parent / "server.log"
    data.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamgauge", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--data", str(data)],
            env=env,
            stdout=out,
            stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def query(data: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the server's database directly (read-only; WAL lets it run beside the server)."""
    conn = sqlite3.connect(f"file:{data / 'streamgauge.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def hot_channel(c: httpx.Client, receiver: Receiver) -> None:
    r = c.post(
        "/api/v1/projects/lab/channels",
        json={
            "id": "hot",
            "triggers": [
                {
                    "device": "ws1",
                    "variable": "air_temp",
                    "operator": ">",
                    "value": 30,
                    "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url + "/hook",
                                 "message": "${value}"}],
                }
            ],
        },
    )  # fmt: skip
    assert r.status_code == 201, r.text


def alerts(c: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = c.get("/api/v1/projects/lab/channels/hot/alerts").json()
    return body


def test_sigkill_after_the_ack_loses_no_alert_and_duplicates_none(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Regression: alerts were written after the ingest reply, so a kill -9 in between lost
    them, and trigger states lived only in memory."""
    data = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # An hour's flush delay: the kill certainly comes before the alert is written.
    proc = spawn(data, port, alert_flush_seconds="3600")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            station(c)
            hot_channel(c, receiver)
            obs(c, ("air_temp", T0, 20.0))
            r = c.post(
                "/api/v1/projects/lab/observations",
                json=[{"device": "ws1", "variable": "air_temp", "time": T0 + 1000, "value": 35.0}],
            )
            assert r.status_code == 200, r.text  # acknowledged ...
            kill(proc)  # ... and killed at once
            acked = r.json()["last_cursor"]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert query(data, "SELECT count(*) FROM alerts") == [(0,)]  # the alert was not written
    assert receiver.got == []

    proc = spawn(data, port)  # the replay on start judges the acknowledged observation
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            body = alerts(c)  # logged before the server answered anything
            assert body["total"] == 1
            alert = body["alerts"][0]
            assert (alert["value"], alert["cursor"], alert["time"]) == (
                35.0,
                acked,
                "2023-11-14T22:13:21Z",
            )
            assert receiver.wait(1) == [("/hook", {"message": "35.0"})]
            assert c.get("/api/v1/projects/lab/channels/hot").json()["states"] == ["FIRING"]
            key = f"alert:{query(data, 'SELECT pk FROM channels')[0][0]}:0"
            # Once the delivery's position is stored, a second kill must not raise or send the
            # alert again.
            eventually(
                lambda: (
                    query(data, f"SELECT cursor FROM delivery_cursors WHERE key = '{key}'")
                    == [(alert["alert_id"],)]
                )
            )
            kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()

    proc = spawn(data, port)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            assert alerts(c)["total"] == 1
            # The trigger is still FIRING: 36 raises nothing; clearing and breaching does.
            assert c.get("/api/v1/projects/lab/channels/hot").json()["states"] == ["FIRING"]
            obs(c, ("air_temp", T0 + 2000, 36.0))
            obs(c, ("air_temp", T0 + 3000, 20.0))
            obs(c, ("air_temp", T0 + 4000, 40.0))
            # In-order delivery: a repeat of the first alert would arrive before the second.
            got = receiver.wait(2)
            assert got == [("/hook", {"message": "35.0"}), ("/hook", {"message": "40.0"})]
            assert [a["value"] for a in alerts(c)["alerts"]] == [40.0, 35.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


@pytest.mark.parametrize("store_mode", ["sqlite"], indirect=True)  # reads the SQLite file
def test_states_continue_across_a_restart_and_no_batch_writes_without_alerts(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alerting, "CHECKPOINT_SECONDS", 3600.0)
    monkeypatch.setattr(alerting, "HEARTBEAT_SECONDS", 3600.0)
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            station(c)
            r = c.post(
                "/api/v1/projects/lab/channels",
                json={
                    "id": "hot",
                    "triggers": [
                        {
                            "device": "ws1",
                            "variable": "air_temp",
                            "operator": ">",
                            "value": 30,
                            "for_seconds": 3600,  # PENDING for an hour before FIRING
                            "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url}],
                        }
                    ],
                },
            )
            assert r.status_code == 201, r.text
            a = srv.engine.alerting
            saved = a.saved
            for i in range(5):
                obs(c, ("air_temp", T0 + i * 1000, 10.0 + i))
            obs(c, ("air_temp", T0 + 5000, 31.0))
            assert a.evaluated == srv.engine.store.head
            assert a.saved == saved  # judged, not written: no alert fired
            assert c.get("/api/v1/projects/lab/channels/hot").json()["states"] == ["PENDING"]
    finally:
        srv.stop()  # a clean stop writes the progress
    assert query(tmp_path / "data", "SELECT state FROM alert_states") == [("PENDING",)]
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            assert c.get("/api/v1/projects/lab/channels/hot").json()["states"] == ["PENDING"]
            assert srv.engine.alerting.replayed == 0  # the stop left nothing to judge again
    finally:
        srv.stop()


def test_a_restart_judges_only_what_the_last_checkpoint_left(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a clean stop (the progress written when channels changed, then never again),
    the log after that point is judged on start: once, with the state it left."""
    monkeypatch.setattr(alerting, "CHECKPOINT_SECONDS", 3600.0)
    srv = start_server(tmp_path / "data")
    with srv.client() as c:
        station(c)
        hot_channel(c, receiver)
        obs(c, ("air_temp", T0, 35.0))
        receiver.wait(1)
        obs(c, ("air_temp", T0 + 1000, 10.0))
    a = srv.engine.alerting
    assert a.evaluated > a.saved  # the quiet row is judged, not yet written

    async def cancel_only() -> None:  # as if killed: no final write
        for t in a._tasks:
            t.cancel()

    a.stop = cancel_only  # type: ignore[method-assign]
    srv.stop()
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            assert srv.engine.alerting.replayed == 1
            # FIRING as written with the alert, then RESOLVED by the replayed row
            assert c.get("/api/v1/projects/lab/channels/hot").json()["states"] == ["RESOLVED"]
            obs(c, ("air_temp", T0 + 3000, 33.0))
            got = receiver.wait(2)
            assert [b for _, b in got] == [{"message": "35.0"}, {"message": "33.0"}]
            assert alerts(c)["total"] == 2
    finally:
        srv.stop()


def test_deadman_state_survives_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    srv = start_server(tmp_path / "data", alert_tick_seconds=50 * MS)
    try:
        with srv.client() as c:
            station(c)
            r = c.post(
                "/api/v1/projects/lab/channels",
                json={
                    "id": "quiet",
                    "triggers": [
                        {
                            "type": "deadman",
                            "device": "ws1",
                            "seconds": 300 * MS,
                            "actions": [{"method": "DISCORD", "webhook_url": receiver.url,
                                         "message": "${inst_id} silent"}],
                        }
                    ],
                },
            )  # fmt: skip
            assert r.status_code == 201, r.text
            receiver.wait(1)
    finally:
        srv.stop()
    srv = start_server(tmp_path / "data", alert_tick_seconds=50 * MS)
    try:
        with srv.client() as c:
            # Still FIRING after the restart: the silence is not announced a second time.
            assert c.get("/api/v1/projects/lab/channels/quiet").json()["states"] == ["FIRING"]
            obs(c, ("air_temp", T0, 1.0))
            eventually(
                lambda: c.get("/api/v1/projects/lab/channels/quiet").json()["states"] != ["FIRING"]
            )
            got = receiver.wait(2)  # silent again after the data: a new alert
            total = c.get("/api/v1/projects/lab/channels/quiet/alerts").json()["total"]
            assert total == 2 and len(got) == 2
    finally:
        srv.stop()


def test_a_project_deleted_on_the_native_face_does_not_stall_the_alert_log(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Regression: a deadman channel of a project deleted on the native face stayed in memory,
    fired, and its alert (for a channel gone from the database) failed every write after it."""
    srv = start_server(tmp_path / "data", alert_tick_seconds=50 * MS)
    try:
        with srv.client() as c:
            station(c)
            doomed_project(c, deadman("quiet", "d", receiver, seconds=100 * MS))
            assert c.delete("/api/v1/projects/gone").status_code in (200, 204)
            hot_channel(c, receiver)
            obs(c, ("air_temp", T0, 35.0))
            got = receiver.wait(1)
            assert ("/hook", {"message": "35.0"}) in got
            assert alerts(c)["total"] == 1
            eventually(lambda: srv.engine.alerting.get("quiet") is None)
    finally:
        srv.stop()


def test_a_deleted_channels_pk_is_never_given_to_a_new_channel(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Regression: channel pks were SQLite's max(pk) + 1, so a channel created after the newest
    one was deleted (with its project) got the same pk, and forgetting the deleted channel on
    the next tick removed the new channel's deliveries (``alert:PK:SLOT``): its alerts were
    logged and never sent (the test above failed about one run in three on a busy machine)."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            station(c)
            doomed_project(c, deadman("old", "d", receiver))
            old = srv.engine.alerting.get("old")
            assert old is not None
            assert c.delete("/api/v1/projects/gone").status_code in (200, 204)
            hot_channel(c, receiver)
        srv.stop()
        srv = start_server(tmp_path / "data")  # the highest pk given survives a restart
        with srv.client() as c:
            r = c.post("/api/v1/projects/lab/channels", json=deadman("later", "ws1", receiver))
            assert r.status_code == 201, r.text
        hot, later = srv.engine.alerting.get("hot"), srv.engine.alerting.get("later")
        assert hot is not None and later is not None
        assert len({old.pk, hot.pk, later.pk}) == 3
    finally:
        srv.stop()


def doomed_project(c: httpx.Client, channel: dict[str, object]) -> None:
    """Project ``gone`` with device ``d`` and ``channel`` (the caller deletes the project)."""
    assert c.post("/api/v1/projects", json={"id": "gone"}).status_code == 201
    r = c.post("/api/v1/projects/gone/devices", json={"id": "d", "variables": [{"name": "x"}]})
    assert r.status_code == 201, r.text
    r = c.post("/api/v1/projects/gone/channels", json=channel)
    assert r.status_code == 201, r.text


def deadman(
    channel: str, device: str, receiver: Receiver, seconds: float = 3600
) -> dict[str, object]:
    return {
        "id": channel,
        "triggers": [
            {
                "type": "deadman",
                "device": device,
                "seconds": seconds,
                "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url}],
            }
        ],
    }
