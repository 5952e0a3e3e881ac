"""The proof: the Tapis tutorial's flow with the real tapipy client against a server on loopback.

Create project, site, instrument, variables; write measurements; read them back as JSON and CSV;
create a channel with a threshold trigger and a WEBHOOK action to a local receiver; write a value
over the threshold and see the receiver get it and list_alerts show it; pause the channel and see
nothing fire; edit the threshold and see the new one apply.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import httpx
import pytest
from tapipy.tapis import Tapis

from tests.conftest import Server
from tests.tapis_helpers import Receiver, account, eventually, home, tapis_for

MESSAGE = "${inst_id}.${var_id}=${value} at ${time} on ${r._check_name}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_tutorial_flow(server: Server, client: httpx.Client, receiver: Receiver) -> None:
    home(client)
    t: Tapis = tapis_for(server.url, account(client, "home", "tutor"))
    streams = t.streams

    project = streams.create_project(
        project_name="tapis_demo_project",
        owner="tutor",
        pi="tutor",
        description="Tapis tutorial project",
        funding_resource="tapis",
        project_url="https://example.invalid/demo",
        active=True,
    )
    pid = project.project_id
    streams.create_site(
        project_id=pid,
        request_body=[
            {
                "site_name": "Ohio_River_Robert_C_Byrd_Locks",
                "site_id": "ohio_byrd",
                "latitude": 38.68,
                "longitude": -82.18,
                "elevation": 170,
                "description": "Ohio River at the Robert C Byrd Locks",
            }
        ],
    )
    streams.create_instrument(
        project_id=pid,
        site_id="ohio_byrd",
        request_body=[
            {"inst_name": "demo_instrument", "inst_id": "demo_inst", "inst_description": "demo"}
        ],
    )
    streams.create_variable(
        project_id=pid,
        site_id="ohio_byrd",
        inst_id="demo_inst",
        request_body=[
            {"var_name": "temperature", "var_id": "temp", "shortname": "temp"},
            {"var_name": "rainfall", "var_id": "rain", "shortname": "rain"},
        ],
    )
    streams.create_measurement(
        inst_id="demo_inst",
        vars=[
            {"datetime": "2024-05-01T10:00:00Z", "temp": 70, "rain": 1},
            {"datetime": "2024-05-01T10:05:00Z", "temp": 72, "rain": 0},
        ],
    )
    got = streams.list_measurements(project_id=pid, site_id="ohio_byrd", inst_id="demo_inst")
    assert vars(got.temp) == {"2024-05-01T10:00:00Z": 70.0, "2024-05-01T10:05:00Z": 72.0}
    raw = streams.list_measurements(
        project_id=pid, site_id="ohio_byrd", inst_id="demo_inst", format="csv"
    )
    assert list(csv.reader(io.StringIO(raw.decode()))) == [
        ["time", "rain", "temp"],
        ["2024-05-01T10:00:00Z", "1.0", "70.0"],
        ["2024-05-01T10:05:00Z", "0.0", "72.0"],
    ]

    channel = streams.create_channels(
        channel_id="demo.channel",
        channel_name="demo.channel",
        template_id="default_threshold",
        triggers_with_actions=[
            {
                "inst_ids": ["demo_inst"],
                "condition": {"key": "demo_inst.temp", "operator": ">", "val": 90},
                "action": {
                    "method": "WEBHOOK",
                    "webhook_url": receiver.url + "/hook",
                    "data_field": "text",
                    "message": MESSAGE,
                },
            }
        ],
    )
    assert channel.status == "ACTIVE"

    # over the threshold: the receiver gets it, list_alerts shows it
    streams.create_measurement(inst_id="demo_inst", vars=[{"datetime": "2024-05-01T10:10:00Z",
                                                           "temp": 150}])  # fmt: skip
    path, body = receiver.wait(1)[0]
    assert path == "/hook"
    assert body == {"text": "demo_inst.temp=150.0 at 2024-05-01T10:10:00Z on demo.channel"}
    alerts = streams.list_alerts(channel_id="demo.channel")
    assert alerts.num_of_alerts == 1
    first = alerts.alerts[0]
    assert (first.channel_id, first.inst_id, first.var_id, first.value, first.time) == (
        "demo.channel",
        "demo_inst",
        "temp",
        150.0,
        "2024-05-01T10:10:00Z",
    )
    assert first.type == "WEBHOOK"
    delivered = eventually(
        lambda: streams.list_alerts(channel_id="demo.channel").alerts[0].actions[0].outcome
    )
    assert delivered.delivered is True and delivered.status == 200

    # paused: nothing fires
    assert streams.update_status(channel_id="demo.channel", status="INACTIVE").status == "INACTIVE"
    streams.create_measurement(inst_id="demo_inst", vars=[{"datetime": "2024-05-01T10:15:00Z",
                                                           "temp": 151}])  # fmt: skip
    assert streams.get_channel(channel_id="demo.channel").trigger_states == ["OK"]
    streams.update_status(channel_id="demo.channel", status="ACTIVE")
    streams.create_measurement(inst_id="demo_inst", vars=[{"datetime": "2024-05-01T10:20:00Z",
                                                           "temp": 152}])  # fmt: skip
    # the next thing the receiver gets is 152, never the 151 sent while paused
    assert receiver.wait(2)[1][1]["text"].startswith("demo_inst.temp=152.0")

    # a new threshold applies at once
    streams.update_channel(
        channel_id="demo.channel",
        channel_name="demo.channel",
        triggers_with_actions=[
            {
                "inst_ids": ["demo_inst"],
                "condition": {"key": "demo_inst.temp", "operator": ">", "val": 200},
                "action": {
                    "method": "WEBHOOK",
                    "webhook_url": receiver.url + "/hook",
                    "data_field": "text",
                    "message": MESSAGE,
                },
            }
        ],
    )
    streams.create_measurement(
        inst_id="demo_inst",
        vars=[
            {"datetime": "2024-05-01T10:25:00Z", "temp": 180},
            {"datetime": "2024-05-01T10:30:00Z", "temp": 250},
        ],
    )
    assert receiver.wait(3)[2][1]["text"].startswith("demo_inst.temp=250.0")
    alerts = streams.list_alerts(channel_id="demo.channel")
    assert alerts.num_of_alerts == 3
    assert [a.value for a in alerts.alerts] == [250.0, 152.0, 150.0]
    assert receiver.got[3:] == []

    # a token string alone works too (Tapis(jwt=...))
    again = Tapis(base_url=server.url, jwt=t.get_access_jwt(), tenant_id="streamgauge")
    assert [c.channel_id for c in again.streams.list_channels()] == ["demo.channel"]
