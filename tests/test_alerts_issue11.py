"""Issue 11, items 1-4, 18 and the actor part of 19: alerts that must fire whatever the order of
metadata, data and load; deadman lateness under load; ACTOR actions that are not HTTP
deliveries; templates with spaces; outbound targets (private refused by default, pinned to the
checked address, no receiver body shown, no proxy from the environment); actors fair between
projects, and old plots deleted."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tapipy.tapis import Tapis

from streamgauge.config import Settings
from streamgauge.core import deliveries
from streamgauge.core.actors import delete_old_plots, plot_path
from streamgauge.core.channels import fill
from streamgauge.core.deliveries import PinnedTransport, outbound_client
from streamgauge.domain.errors import Invalid
from tests.conftest import MS, Server, start_server
from tests.tapis_helpers import Receiver, account, eventually, home, tapis_for
from tests.test_deliveries import Receiver as ReplyingReceiver

T0 = 1_700_000_000_000


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def create(c: httpx.Client, path: str, body: Any) -> None:
    r = c.post(path, json=body)
    assert r.status_code == 201, r.text


def station(
    c: httpx.Client, project: str = "lab", variables: tuple[str, ...] = ("old", "new")
) -> None:
    create(c, "/api/v1/projects", {"id": project})
    create(c, f"/api/v1/projects/{project}/sites", {"id": "roof"})
    create(
        c,
        f"/api/v1/projects/{project}/devices",
        {"id": "ws1", "site": "roof", "variables": [{"name": v} for v in variables]},
    )


def obs(c: httpx.Client, *rows: tuple[str, int, float], project: str = "lab") -> None:
    body = [{"device": "ws1", "variable": v, "time": t, "value": x} for v, t, x in rows]
    r = c.post(f"/api/v1/projects/{project}/observations", json=body)
    assert r.status_code == 200, r.text


def channel(
    c: httpx.Client, cid: str, trigger: dict[str, Any], project: str = "lab"
) -> httpx.Response:
    return c.post(f"/api/v1/projects/{project}/channels", json={"id": cid, "triggers": [trigger]})


def alerts(c: httpx.Client, cid: str, project: str = "lab") -> list[dict[str, Any]]:
    r = c.get(f"/api/v1/projects/{project}/channels/{cid}/alerts")
    assert r.status_code == 200, r.text
    got: list[dict[str, Any]] = r.json()["alerts"]
    return got


class BusyIngest:
    """A busy ingest loop on its own device (a thread posting batches until stopped): load on
    the server, and batches of the project judged between any two steps of a test."""

    def __init__(self, srv: Server, project: str = "lab") -> None:
        self.srv, self.project = srv, project
        self.stop_ = threading.Event()
        self.batches = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> BusyIngest:
        with self.srv.client() as c:
            create(
                c,
                f"/api/v1/projects/{self.project}/devices",
                {"id": "busy", "site": "roof", "variables": [{"name": f"v{i}"} for i in range(20)]},
            )
        self.thread.start()
        return self

    def run(self) -> None:
        with self.srv.client(timeout=60) as c:
            n = 0
            while not self.stop_.is_set():
                body = [
                    {"device": "busy", "variable": f"v{i % 20}", "time": T0 + n * 1000 + i // 20,
                     "value": float(i)}
                    for i in range(1000)
                ]  # fmt: skip
                r = c.post(f"/api/v1/projects/{self.project}/observations", json=body)
                assert r.status_code == 200, r.text
                self.batches += 1
                n += 1

    def __exit__(self, *exc: object) -> None:
        self.stop_.set()
        self.thread.join(timeout=60)


# -- item 1 ---------------------------------------------------------------------------------------


def test_channel_fires_for_a_variable_first_seen_after_a_judged_batch(
    server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """issue 11 item 1: a device with variables old and new; one old row; a threshold channel
    new > 5 with a webhook; one more old row (a batch of the project judged while new has no
    series yet); then new = 10: the webhook gets it and the channel's alert list shows it."""
    station(client)
    obs(client, ("old", T0, 1.0))
    trigger = {
        "device": "ws1",
        "variable": "new",
        "operator": ">",
        "value": 5,
        "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url, "message": "${value}"}],
    }
    assert channel(client, "n5", trigger).status_code == 201
    obs(client, ("old", T0 + 1000, 2.0))
    obs(client, ("new", T0 + 2000, 10.0))
    assert receiver.wait(1)[0][1] == {"message": "10.0"}
    [alert] = alerts(client, "n5")
    assert (alert["var_id"], alert["value"]) == ("new", 10.0)


def test_whole_instrument_deadman_counts_a_variable_added_later(
    tmp_path: Path, receiver: Receiver
) -> None:
    """issue 11 item 1: a deadman on a whole instrument counts data of a variable the instrument
    got after the channel was made (metadata after the channel), so it does not fire while
    that variable reports."""
    srv = start_server(tmp_path / "data", alert_tick_seconds=20 * MS)
    try:
        with srv.client() as c:
            station(c, variables=("old",))
            trigger = {
                "type": "deadman",
                "device": "ws1",
                "seconds": 1500 * MS,
                "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url}],
            }
            assert channel(c, "quiet", trigger).status_code == 201
            r = c.post("/api/v1/projects/lab/devices/ws1/variables", json={"name": "late"})
            assert r.status_code == 201, r.text
            sent_until = time.monotonic() + 3000 * MS
            n = 0
            last_sent = 0.0
            while time.monotonic() < sent_until:  # `late` reports well inside the deadline
                last_sent = time.time() * 1000
                obs(c, ("late", T0 + n * 1000, 1.0))
                n += 1
                time.sleep(100 * MS)
            assert receiver.wait(1)[0][1]["message"].startswith("For Channel- quiet")
            [alert] = alerts(c, "quiet")
            fired = datetime.fromisoformat(alert["created_at"]).timestamp() * 1000
            assert fired >= last_sent + 1500 * MS * 1000 - 1  # after the silence, not before
    finally:
        srv.stop()


def test_tapis_channels_on_variables_created_without_data_fire(
    server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """issue 11 item 1 on the Tapis face: channels on variables created without data (hum, lvl)
    fire on their first values, though measurements of another variable of the instrument were
    judged in between; with a busy ingest loop on the same project (load). Also item 4: the
    message uses Tapis' spaced placeholders."""
    home(client)
    t: Tapis = tapis_for(server.url, account(client, "home", "tutor"))
    s = t.streams
    pid = s.create_project(project_name="p11", owner="tutor", pi="tutor").project_id
    s.create_site(
        project_id=pid,
        request_body=[{"site_name": "river", "site_id": "roof", "latitude": 38.6,
                       "longitude": -82.1, "elevation": 170, "description": "d"}],
    )  # fmt: skip
    s.create_instrument(
        project_id=pid,
        site_id="roof",
        request_body=[{"inst_name": "gauge", "inst_id": "g1", "inst_description": "d"}],
    )
    s.create_variable(
        project_id=pid,
        site_id="roof",
        inst_id="g1",
        request_body=[{"var_name": n, "var_id": n, "shortname": n} for n in ("temp", "hum", "lvl")],
    )
    s.create_measurement(inst_id="g1", vars=[{"datetime": "2024-05-01T10:00:00Z", "temp": 20}])
    with BusyIngest(server, pid):
        for var, op, val in (("hum", ">", 50), ("lvl", "<", 1)):
            s.create_channels(
                channel_id=f"ch-{var}",
                channel_name=f"ch-{var}",
                template_id="default_threshold",
                triggers_with_actions=[
                    {
                        "inst_ids": ["g1"],
                        "condition": {"key": f"g1.{var}", "operator": op, "val": val},
                        "action": {"method": "WEBHOOK", "webhook_url": f"{receiver.url}/{var}",
                                   "data_field": "text", "message": "${ r.var_id}=${ r.value }"},
                    }
                ],
            )  # fmt: skip
        s.create_measurement(inst_id="g1", vars=[{"datetime": "2024-05-01T10:05:00Z", "temp": 21}])
        s.create_measurement(
            inst_id="g1", vars=[{"datetime": "2024-05-01T10:10:00Z", "hum": 80, "lvl": 0.5}]
        )
        got = dict(receiver.wait(2))
    assert got == {"/hum": {"text": "hum=80.0"}, "/lvl": {"text": "lvl=0.5"}}
    for var in ("hum", "lvl"):
        assert s.list_alerts(channel_id=f"ch-{var}").num_of_alerts == 1


# -- item 2 ---------------------------------------------------------------------------------------


def test_deadman_fires_after_the_silence_under_ingest_load(
    tmp_path: Path, receiver: Receiver
) -> None:
    """issue 11 item 2: a deadman on a variable that reports, then goes silent, with a busy
    ingest loop on the same project. It fired early (while data still came: the data was never
    counted, item 1's cache) and then never after the silence. Now it fires once, after the
    silence, and its lateness is bounded by its seconds plus the tick (plus the loop's lag,
    bounded here by the tests' MS scale), not by the load."""
    tick = 100 * MS
    seconds = 2000 * MS
    srv = start_server(tmp_path / "data", alert_tick_seconds=tick)
    try:
        with srv.client() as c:
            station(c, variables=("t", "h"))
        with srv.client() as c, BusyIngest(srv):
            obs(c, ("t", T0, 1.0))
            trigger = {
                "type": "deadman",
                "device": "ws1",
                "variable": "h",
                "seconds": seconds,
                "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url}],
            }
            assert channel(c, "dm", trigger).status_code == 201
            obs(c, ("t", T0 + 1, 1.0))
            until = time.monotonic() + 2 * seconds
            n = 0
            while time.monotonic() < until:  # h reports well inside its deadline
                last_sent = time.time() * 1000
                obs(c, ("h", T0 + n * 1000, 1.0))
                last_acked = time.time() * 1000
                n += 1
                time.sleep(seconds / 8)
            assert alerts(c, "dm") == []  # nothing while h reported
            receiver.wait(1)
            [alert] = alerts(c, "dm")
        fired = datetime.fromisoformat(alert["created_at"]).timestamp() * 1000
        assert fired >= last_sent + seconds * 1000 - 1
        # The loop's lag on a loaded machine is the only slack (the issue saw 20 s and more).
        assert fired - last_acked <= (seconds + tick) * 1000 + 5000 * MS * 1000
    finally:
        srv.stop()


def test_the_deadman_clock_ticks_while_the_store_is_slow(tmp_path: Path) -> None:
    """issue 11 item 2: the ticker awaited its checkpoint write (queued behind every ingest
    write on a busy machine) before the next tick, so a slow store held deadman triggers back.
    With a checkpoint due and every progress write stuck, the clock keeps ticking."""
    tick = 20 * MS
    srv = start_server(tmp_path / "data", alert_tick_seconds=tick)
    alerting = srv.engine.alerting
    release = threading.Event()
    ticks: list[float] = []
    real_tick, real_commit = alerting.tick, alerting._commit

    def counting_tick(now: int) -> None:
        ticks.append(time.monotonic())
        real_tick(now)

    async def stuck_commit(*args: Any, **kw: Any) -> Any:
        while not release.is_set():
            await asyncio.sleep(tick)
        return await real_commit(*args, **kw)

    try:
        with srv.client() as c:
            station(c)
            trigger = {"type": "deadman", "device": "ws1", "seconds": 3600}
            assert channel(c, "quiet", trigger).status_code == 201
        alerting._commit = stuck_commit
        alerting.tick = counting_tick
        alerting._saved_at = -1e9  # a checkpoint (heartbeat) is due at every tick from now on
        eventually(lambda: len(ticks) >= 20)  # the old ticker stopped at the first one
    finally:
        release.set()
        alerting._commit, alerting.tick = real_commit, real_tick
        srv.stop()


# -- item 3 ---------------------------------------------------------------------------------------


def test_actor_actions_are_not_http_deliveries(tmp_path: Path, receiver: Receiver) -> None:
    """issue 11 item 3: a plot ACTOR action next to a WEBHOOK: only the webhook is an HTTP
    delivery; the actor's outcome (its URL, execution id) stays as the actor left it."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            station(c)
            trigger = {
                "device": "ws1",
                "variable": "old",
                "operator": ">",
                "value": 5,
                "actions": [
                    {"method": "ACTOR", "actor_id": "plot"},
                    {"method": "WEBHOOK", "webhook_url": receiver.url},
                ],
            }
            r = channel(c, "hot", trigger)
            assert r.status_code == 201, r.text
            obs(c, ("old", T0, 1.0), ("old", T0 + 1000, 9.0))
            receiver.wait(1)

            def done() -> list[dict[str, Any]] | None:
                found = alerts(c, "hot")
                acts = found[0]["actions"] if found else []
                return acts if acts and all(a["done"] for a in acts) else None

            actor, hook = eventually(done)
            pk = srv.engine.alerting.get("hot").pk
            assert [k for k in srv.engine.deliveries.keys() if k.startswith(f"alert:{pk}:")] == [
                f"alert:{pk}:1"
            ]
            assert actor["outcome"]["delivered"] is True and actor["outcome"]["error"] is None
            assert actor["outcome"]["url"].endswith(".png")
            assert actor["outcome"]["execution_id"] == f"{alerts(c, 'hot')[0]['alert_id']}-0-1"
            assert hook["outcome"]["delivered"] is True
            assert "bad delivery target" not in orjson.dumps(alerts(c, "hot")).decode()
    finally:
        srv.stop()


def test_tapis_actor_alert_has_its_execution_id(server: Server, client: httpx.Client) -> None:
    """issue 11 item 3 on the Tapis face: an alert whose action is the plot actor shows the
    actor's execution id (it stayed null when a delivery overwrote the outcome)."""
    home(client)
    t: Tapis = tapis_for(server.url, account(client, "home", "tutor"))
    s = t.streams
    pid = s.create_project(project_name="pa", owner="tutor", pi="tutor").project_id
    s.create_site(
        project_id=pid,
        request_body=[{"site_name": "r", "site_id": "r1", "latitude": 1, "longitude": 2,
                       "elevation": 3, "description": "d"}],
    )  # fmt: skip
    s.create_instrument(
        project_id=pid,
        site_id="r1",
        request_body=[{"inst_name": "i", "inst_id": "i1", "inst_description": "d"}],
    )
    s.create_variable(
        project_id=pid,
        site_id="r1",
        inst_id="i1",
        request_body=[{"var_name": "temp", "var_id": "temp", "shortname": "temp"}],
    )
    s.create_channels(
        channel_id="plotter",
        channel_name="plotter",
        template_id="default_threshold",
        triggers_with_actions=[
            {
                "inst_ids": ["i1"],
                "condition": {"key": "i1.temp", "operator": ">", "val": 90},
                "action": {"method": "ACTOR", "actor_id": "plot", "message": "${ r.value }"},
            }
        ],
    )
    s.create_measurement(inst_id="i1", vars=[{"datetime": "2024-05-01T10:00:00Z", "temp": 95}])

    def executed() -> Any:
        got = s.list_alerts(channel_id="plotter").alerts
        return got[0] if got and got[0].execution_id else None

    alert = executed() or eventually(executed)
    assert alert.type == "ACTOR" and alert.actor_id == "plot"
    assert alert.execution_id == f"{alert.alert_id}-0-1"
    outcome = alert.actions[0].outcome
    assert outcome.delivered is True and outcome.error is None and outcome.url.endswith(".png")
    pk = server.engine.alerting.get("plotter").pk  # no HTTP delivery to overwrite it later
    assert [k for k in server.engine.deliveries.keys() if k.startswith(f"alert:{pk}:")] == []


# -- item 4 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["${r.value}", "${ r.value }", "${ r.value}", "${r.value }", "${\tr.value }", "${ value }"],
)
def test_templates_with_spaces_are_filled(template: str) -> None:
    """issue 11 item 4: Tapis writes ``${ r.value }``, the workshop notebook ``${ r.value}``;
    every spacing is substituted like ``${r.value}``."""
    assert fill(f"v={template}!", {"value": 10.5}) == "v=10.5!"


def test_templates_keep_unknown_and_escaped_placeholders() -> None:
    """issue 11 item 4: unknown placeholders (spaced or not) stay as written; ``$$`` is a
    dollar."""
    got = fill("${ nope } ${nope} $$5 ${ r._check_name }", {"_check_name": "ch"})
    assert got == "${ nope } ${nope} $5 ch"


# -- item 18 --------------------------------------------------------------------------------------


def test_private_targets_are_refused_by_default() -> None:
    """issue 11 item 18: STREAMGAUGE_ALLOW_PRIVATE_TARGETS defaults to false."""
    assert Settings().allow_private_targets is False
    assert Settings.model_fields["allow_private_targets"].default is False


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
    ],
)
def test_a_private_webhook_is_refused_at_creation_naming_the_field(
    tmp_path: Path, url: str
) -> None:
    """issue 11 item 18: with the default, a channel whose webhook names a loopback, private or
    link-local address is a 422 naming the trigger and field; nothing is created."""
    srv = start_server(tmp_path / "data", allow_private_targets=False)
    try:
        with srv.client() as c:
            station(c)
            trigger = {
                "device": "ws1",
                "variable": "old",
                "operator": ">",
                "value": 5,
                "actions": [
                    {"method": "SLACK", "webhook_url": "https://hooks.example.com/x"},
                    {"method": "WEBHOOK", "webhook_url": url},
                ],
            }
            r = channel(c, "bad", trigger)
            assert r.status_code == 422, r.text
            [detail] = r.json()["error"]["details"]
            assert detail["field"] == "triggers.actions.1.webhook_url" and detail["index"] == 0
            assert "private targets are not allowed" in r.json()["error"]["message"]
            http = {"device": "ws1", "variable": "old", "operator": ">", "value": 5,
                    "actions": [{"method": "HTTP", "http_url": url}]}  # fmt: skip
            r = channel(c, "bad", http)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["field"] == "triggers.actions.0.http_url"
            assert c.get("/api/v1/projects/lab/channels").json()["channels"] == []
    finally:
        srv.stop()


def test_tapis_private_webhook_is_refused_at_creation(tmp_path: Path) -> None:
    """issue 11 item 18 on the Tapis face: a 4xx saying why, nothing created."""
    srv = start_server(tmp_path / "data", allow_private_targets=False)
    try:
        with srv.client() as c:
            station(c, project="tp")
            t = tapis_for(srv.url, account(c, "tp", "tutor"))
            r = httpx.post(
                f"{srv.url}/v3/streams/channels",
                headers={"X-Tapis-Token": t.get_access_jwt()},
                json={
                    "channel_id": "c1",
                    "channel_name": "c1",
                    "template_id": "default_threshold",
                    "triggers_with_actions": [
                        {
                            "inst_ids": ["ws1"],
                            "condition": {"key": "ws1.old", "operator": ">", "val": 1},
                            "action": {"method": "WEBHOOK", "webhook_url": "http://127.0.0.1:9/"},
                        }
                    ],
                },
            )
            assert 400 <= r.status_code < 500, r.text
            assert "private targets are not allowed" in r.json()["message"]
            assert srv.engine.alerting.get("c1") is None
    finally:
        srv.stop()


def test_a_target_that_became_private_is_refused_at_delivery(
    tmp_path: Path, receiver: Receiver
) -> None:
    """issue 11 item 18: the check runs again before each send. A channel made while private
    targets were allowed, then forbidden (as a name that starts resolving inside would be):
    nothing is sent, the outcome says why, with no status."""
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            station(c)
            trigger = {
                "device": "ws1",
                "variable": "old",
                "operator": ">",
                "value": 5,
                "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url}],
            }
            assert channel(c, "hot", trigger).status_code == 201
            srv.engine.deliveries.allow_private_targets = False
            obs(c, ("old", T0, 9.0))

            def outcome() -> dict[str, Any] | None:
                found = alerts(c, "hot")
                return found[0]["actions"][0]["outcome"] if found else None

            got = eventually(outcome)
            assert got["delivered"] is False and got["status"] is None
            assert "private targets are not allowed" in got["error"]
            assert receiver.got == []
    finally:
        srv.stop()


async def test_the_connection_goes_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """issue 11 item 18: the host is resolved once, every address is checked, and the request
    goes to that address with the original Host header and TLS server name; a name that
    answers with a private address on the next lookup (DNS rebinding) is refused."""
    answers = iter(
        [["93.184.216.34", "2606:2800:220:1::1"], ["127.0.0.1"], ["93.184.216.34", "10.0.0.7"]]
    )
    lookups: list[str] = []

    async def getaddrinfo(host: str, port: int, **kw: Any) -> list[Any]:
        lookups.append(host)
        fam = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [
            (fam[6 if ":" in a else 4], socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)
        ]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    transport = PinnedTransport(False, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.post("https://hooks.example.com:8443/x?y=1", content=b"{}")
        assert r.status_code == 200
        [req] = seen
        assert str(req.url) == "https://93.184.216.34:8443/x?y=1"
        assert req.headers["host"] == "hooks.example.com:8443"
        assert req.extensions["sni_hostname"] == "hooks.example.com"
        for _ in range(2):  # rebinding to loopback; one private address among public ones
            with pytest.raises(Invalid, match="resolves to"):
                await client.post("https://hooks.example.com:8443/x", content=b"{}")
    assert len(seen) == 1 and lookups == ["hooks.example.com"] * 3


def test_a_receivers_reply_body_is_never_shown(tmp_path: Path) -> None:
    """issue 11 item 18: a receiver's reply (a password in it) never reaches the project's
    users: outcomes carry the status and its standard reason only."""
    secret = b"root-password=hunter2"
    rx = ReplyingReceiver()
    rx.reply = lambda r: (500, {}, secret) if r.path == "/fail" else (200, {}, secret)
    rx.start()
    srv = start_server(tmp_path / "data", delivery_retry_first_seconds=3600)
    try:
        with srv.client() as c:
            station(c)
            trigger = {
                "device": "ws1",
                "variable": "old",
                "operator": ">",
                "value": 5,
                "actions": [
                    {"method": "HTTP", "http_url": rx.url + "/fail"},
                    {"method": "HTTP", "http_url": rx.url + "/ok"},
                ],
            }
            assert channel(c, "hot", trigger).status_code == 201
            obs(c, ("old", T0, 9.0))

            def both() -> list[dict[str, Any]] | None:
                found = alerts(c, "hot")
                acts = found[0]["actions"] if found else []
                return acts if acts and all(a["outcome"] for a in acts) else None

            fail, ok = eventually(both)
            assert fail["outcome"]["error"] == "HTTP 500 Internal Server Error"
            assert fail["outcome"]["status"] == 500 and ok["outcome"]["status"] == 200
            listing = c.get("/api/v1/projects/lab/channels/hot/alerts").text
            assert "hunter2" not in listing
            pk = srv.engine.alerting.get("hot").pk
            assert "hunter2" not in str(srv.engine.deliveries.stats(f"alert:{pk}:0"))
    finally:
        srv.stop()
        rx.stop()


def test_outbound_requests_ignore_proxy_settings(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 11 item 18: proxy settings in the environment are not read (a proxy there would
    see, or redirect, every outbound request)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = outbound_client(allow_private=True)
    assert client.trust_env is False
    asyncio.run(client.aclose())
    srv = start_server(tmp_path / "data")
    try:
        with srv.client(trust_env=False) as c:  # the test's own client must ignore them too
            station(c)
            trigger = {
                "device": "ws1",
                "variable": "old",
                "operator": ">",
                "value": 5,
                "actions": [{"method": "WEBHOOK", "webhook_url": receiver.url, "message": "x"}],
            }
            assert channel(c, "hot", trigger).status_code == 201
            obs(c, ("old", T0, 9.0))
            assert receiver.wait(1)[0][1] == {"message": "x"}
    finally:
        srv.stop()


def test_every_outbound_client_of_the_package_ignores_the_environment() -> None:
    """issue 11 item 18: every httpx client the server builds for outbound requests passes
    ``trust_env=False`` (the delivery engine's ``outbound_client`` does; this lists the rest)."""
    src = Path(deliveries.__file__).resolve().parent.parent
    offenders = []
    for path in sorted(src.rglob("*.py")):
        if path.parts[-2] == "sim":  # the simulator is a client of our own server, not a target
            continue
        text = path.read_text()
        for start in (i for i in range(len(text)) if text.startswith("httpx.AsyncClient(", i)):
            depth, end = 0, start
            for end in range(start, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0 and text[end] == ")":
                    break
            call = text[start : end + 1]
            if "trust_env=False" not in call:
                offenders.append(str(path.relative_to(src)))
    assert offenders == []


# -- item 19 (actors) -----------------------------------------------------------------------------

GATE = threading.Event()
RAN: list[str] = []


def slow_actor(alert: dict[str, Any]) -> str:
    """A Python actor that holds its worker until the test opens the gate."""
    GATE.wait(60)
    RAN.append(f"slow {alert['value']}")
    return "slow"


def fast_actor(alert: dict[str, Any]) -> str:
    RAN.append(f"fast {alert['value']}")
    return "fast"


def test_one_projects_actors_do_not_starve_another(tmp_path: Path) -> None:
    """issue 11 item 19: local actors ran on one worker for all projects, so one tenant's slow
    actor held every other tenant's actions back. Each project has its own worker now: B's
    action runs while A's backlog is stuck."""
    GATE.clear()
    RAN.clear()
    srv = start_server(
        tmp_path / "data",
        actors={"slow": f"python:{__name__}:slow_actor", "fast": f"python:{__name__}:fast_actor"},
        actor_timeout_seconds=120,
    )
    try:
        with srv.client() as c:
            for project, actor in (("a", "slow"), ("b", "fast")):
                station(c, project=project)
                trigger = {
                    "device": "ws1",
                    "variable": "old",
                    "operator": ">",
                    "value": 5,
                    "actions": [{"method": "ACTOR", "actor_id": actor}],
                }
                assert channel(c, f"ch-{project}", trigger, project=project).status_code == 201
            for i in range(5):  # five alerts of A: fire, clear, fire, ...
                obs(c, ("old", T0 + i * 2000, 10.0 + i), ("old", T0 + i * 2000 + 1000, 0.0),
                    project="a")  # fmt: skip
            eventually(lambda: len(alerts(c, "ch-a", project="a")) == 5)
            obs(c, ("old", T0, 42.0), project="b")
            eventually(lambda: RAN == ["fast 42.0"])
            [b] = alerts(c, "ch-b", project="b")
            assert b["actions"][0]["done"] and b["actions"][0]["outcome"]["result"] == "fast"
            assert not any(a["actions"][0]["done"] for a in alerts(c, "ch-a", project="a"))
            GATE.set()
            eventually(lambda: all(a["actions"][0]["done"] for a in alerts(c, "ch-a", project="a")))
            assert RAN[1:] == [f"slow {10.0 + i}" for i in range(5)]  # in alert order
    finally:
        GATE.set()
        srv.stop()


def test_old_plots_are_deleted(tmp_path: Path) -> None:
    """issue 11 item 19: plots were never deleted; those older than plot_retention_days are
    (at start and hourly), newer ones are kept."""
    data = tmp_path / "data"
    old, new = plot_path(data, 1), plot_path(data, 2)
    old.parent.mkdir(parents=True)
    for p in (old, new):
        p.write_bytes(b"png")
    day = 86400
    os.utime(old, (time.time() - 3 * day, time.time() - 3 * day))
    assert delete_old_plots(data, 5 * day) == 0 and old.exists()
    os.utime(old, (time.time() - 8 * day, time.time() - 8 * day))
    srv = start_server(data, plot_retention_days=7)
    try:
        eventually(lambda: not old.exists())
        assert new.exists()
    finally:
        srv.stop()
    assert delete_old_plots(data, 0.0, now=time.time() + 1) == 1 and not new.exists()
    assert delete_old_plots(tmp_path / "nothing-here", 1.0) == 0
