"""Channels on the native face: every action type (local receivers stand in for Slack and
Discord), the plot actor's PNG, Python and command actors, deadman, receiver-down recovery across
a server restart, and bad channel definitions."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import MS, Server, expect_error, start_server
from tests.tapis_helpers import Receiver, eventually

RECORDED: list[dict[str, Any]] = []


def record_alert(alert: dict[str, Any]) -> str:
    """A Python entry-point actor (registered through STREAMGAUGE_ACTORS)."""
    RECORDED.append(alert)
    return f"seen {alert['value']}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def station(c: httpx.Client) -> None:
    assert c.post("/api/v1/projects", json={"id": "lab"}).status_code == 201
    assert c.post("/api/v1/projects/lab/sites", json={"id": "roof"}).status_code == 201
    r = c.post(
        "/api/v1/projects/lab/devices",
        json={
            "id": "ws1",
            "site": "roof",
            "variables": [{"name": "air_temp", "unit": "degC"}, {"name": "wind_speed"}],
        },
    )
    assert r.status_code == 201, r.text


def obs(c: httpx.Client, *rows: tuple[str, int, float]) -> None:
    body = [{"device": "ws1", "variable": v, "time": t, "value": x} for v, t, x in rows]
    r = c.post("/api/v1/projects/lab/observations", json=body)
    assert r.status_code == 200, r.text


T0 = 1_700_000_000_000


def test_every_action_type_and_the_plot_actor(tmp_path: Path, receiver: Receiver) -> None:
    srv = start_server(
        tmp_path / "data",
        actors={
            "record": f"python:{__name__}:record_alert",
            "echo": f"command:{sys.executable} -c 'import sys; print(len(sys.stdin.read()))'",
        },
    )
    try:
        with srv.client() as c:
            station(c)
            obs(c, *[("air_temp", T0 + i * 60_000, 10.0 + i) for i in range(10)])
            hook = receiver.url
            actions = [
                {"method": "WEBHOOK", "webhook_url": hook + "/w", "data_field": "msg",
                 "message": "${channel_id}: ${var_id}=${value}"},
                {"method": "HTTP", "http_url": hook + "/h"},
                {"method": "SLACK", "webhook_url": hook + "/s", "message": "slack ${value}"},
                {"method": "DISCORD", "webhook_url": hook + "/d", "message": "discord ${value}"},
                {"method": "ACTOR", "actor_id": "plot"},
                {"method": "ACTOR", "actor_id": "record"},
                {"method": "ACTOR", "actor_id": "echo"},
            ]  # fmt: skip
            r = c.post(
                "/api/v1/projects/lab/channels",
                json={
                    "id": "hot",
                    "triggers": [
                        {
                            "device": "ws1",
                            "variable": "air_temp",
                            "operator": ">=",
                            "value": 40,
                            "actions": actions,
                        }
                    ],
                },
            )
            assert r.status_code == 201, r.text
            obs(c, ("air_temp", T0 + 10 * 60_000, 45.0))
            got = dict(receiver.wait(4))
            assert got["/w"] == {"msg": "hot: air_temp=45.0"}
            assert got["/s"] == {"text": "slack 45.0"}
            assert got["/d"] == {"content": "discord 45.0"}
            raw = got["/h"]
            assert (raw["channel_id"], raw["inst_id"], raw["var_id"], raw["value"]) == (
                "hot",
                "ws1",
                "air_temp",
                45.0,
            )
            assert raw["project_id"] == "lab" and raw["site_id"] == "roof"

            def all_done() -> list[dict[str, Any]] | None:
                alerts = c.get("/api/v1/projects/lab/channels/hot/alerts").json()["alerts"]
                acts = alerts[0]["actions"]
                return acts if all(a["done"] for a in acts) else None

            acts = eventually(all_done)
            assert [a["method"] for a in acts] == [a["method"] for a in actions]
            assert all(a["outcome"]["delivered"] for a in acts), [a["outcome"] for a in acts]
            assert RECORDED[-1]["value"] == 45.0 and acts[5]["outcome"]["result"] == "seen 45.0"
            assert int(acts[6]["outcome"]["output"]) > 100  # the command read the alert JSON
            url = acts[4]["outcome"]["url"]
            png = c.get(url)
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            img = Image.open(io.BytesIO(png.content))
            assert img.format == "PNG" and img.size == (800, 400)
            assert acts[4]["outcome"]["points"] == 11  # the instrument's values around the alert
            assert len(img.getcolors(1 << 20) or []) > 10  # drawn, not blank
            expect_error(c.get("/api/v1/projects/lab/plots/999.png"), 404)
    finally:
        srv.stop()


def test_expression_trigger_and_pause(
    server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    station(client)
    r = client.post(
        "/api/v1/projects/lab/channels",
        json={
            "id": "windy-cold",
            "triggers": [
                {
                    "type": "expression",
                    "device": "ws1",
                    "expression": "(air_temp < 0) and (wind_speed > 10)",
                    "actions": [{"method": "SLACK", "webhook_url": receiver.url + "/s",
                                 "message": "${var_id} ${value} at ${time}"}],
                }
            ],
        },
    )  # fmt: skip
    assert r.status_code == 201, r.text
    obs(client, ("air_temp", T0, -5.0), ("wind_speed", T0, 3.0))
    obs(client, ("air_temp", T0 + 1000, -6.0), ("wind_speed", T0 + 1000, 12.0))
    assert receiver.wait(1)[0][1] == {"text": "air_temp -6.0 at 2023-11-14T22:13:21Z"}
    r = client.patch("/api/v1/projects/lab/channels/windy-cold", json={"status": "INACTIVE"})
    assert r.json()["status"] == "INACTIVE" and r.json()["states"] == ["OK"]
    obs(client, ("air_temp", T0 + 2000, -7.0), ("wind_speed", T0 + 2000, 13.0))
    client.patch("/api/v1/projects/lab/channels/windy-cold", json={"status": "ACTIVE"})
    obs(client, ("air_temp", T0 + 3000, -8.0), ("wind_speed", T0 + 3000, 14.0))
    assert receiver.wait(2)[1][1]["text"].startswith("air_temp -8.0")
    total = client.get("/api/v1/projects/lab/channels/windy-cold/alerts").json()["total"]
    assert total == 2


def test_deadman_fires_after_silence(tmp_path: Path, receiver: Receiver) -> None:
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
                                         "message": "${inst_id} silent (${type})"}],
                        }
                    ],
                },
            )  # fmt: skip
            assert r.status_code == 201, r.text
            assert receiver.wait(1)[0][1] == {"content": "ws1 silent (deadman)"}
            obs(c, ("air_temp", T0, 1.0))
            states = eventually(
                lambda: c.get("/api/v1/projects/lab/channels/quiet").json()["states"] != ["FIRING"]
            )
            assert states
    finally:
        srv.stop()


def test_receiver_down_gets_every_alert_in_order_after_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.stop()  # down from the start
    srv = start_server(tmp_path / "data")
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
                        "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url,
                                     "message": "${value}"}],
                    }
                ],
            },
        )  # fmt: skip
        assert r.status_code == 201, r.text
        for i in range(3):  # fire, clear, fire, ...
            obs(c, ("air_temp", T0 + i * 2000, 31.0 + i), ("air_temp", T0 + i * 2000 + 1000, 0.0))

        def failing() -> bool:
            alerts = c.get("/api/v1/projects/lab/channels/hot/alerts").json()["alerts"]
            return len(alerts) == 3 and alerts[-1]["actions"][0]["outcome"] is not None

        eventually(failing)
        first = c.get("/api/v1/projects/lab/channels/hot/alerts").json()["alerts"][-1]
        assert first["actions"][0]["outcome"]["delivered"] is False
    srv.stop()
    srv = start_server(tmp_path / "data")
    try:
        receiver.start()
        got = receiver.wait(3, timeout=60)
        assert [b["message"] for _, b in got[:3]] == ["31.0", "32.0", "33.0"]
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        ({"device": "nope", "variable": "air_temp", "operator": ">", "value": 1}, "device"),
        ({"device": "ws1", "variable": "nope", "operator": ">", "value": 1}, "variable"),
        ({"device": "ws1", "variable": "air_temp", "operator": "~", "value": 1}, "operator"),
        ({"device": "ws1", "variable": "air_temp", "operator": "=", "value": 1,
          "hysteresis": 1}, "hysteresis"),
        ({"type": "expression", "device": "ws1", "expression": "(air_temp >"}, "expression"),
        ({"type": "deadman", "device": "ws1"}, "seconds"),
        ({"device": "ws1", "variable": "air_temp", "operator": ">", "value": 1,
          "actions": [{"method": "WEBHOOK"}]}, "webhook_url"),
        ({"device": "ws1", "variable": "air_temp", "operator": ">", "value": 1,
          "actions": [{"method": "ACTOR", "actor_id": "nope"}]}, "actor_id"),
        ({"device": "ws1", "variable": "air_temp", "operator": ">", "value": 1,
          "actions": [{"method": "HTTP", "http_url": "ftp://x"}]}, "actions"),
    ],
)  # fmt: skip
def test_bad_channels_name_trigger_and_field(
    client: httpx.Client, trigger: dict[str, Any], field: str
) -> None:
    station(client)
    r = client.post("/api/v1/projects/lab/channels", json={"id": "c", "triggers": [trigger]})
    err = expect_error(r, 422 if r.status_code == 422 else 400)
    assert any(field in str(d.get("field", "")) for d in err["details"]), err
    assert client.get("/api/v1/projects/lab/channels").json()["channels"] == []
