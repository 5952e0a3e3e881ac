"""Tapis measurements: what Tapis accepts is accepted, what it cannot store is a 400 naming the
``vars`` row and field, and reads are a pivot of the stored points (issue 11 items 6, 8, 9, 13);
numbers too large in a channel's trigger are a 400 too (item 13)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tapipy.tapis import Tapis

from streamgauge.domain.errors import Invalid
from streamgauge.faces.tapis.measurements import _as_tapis
from tests.conftest import Server
from tests.tapis_helpers import account, envelope, home, tapis_for

STORES = ["sqlite", "postgresql"]  # every test here runs on both storage backends

PROJECT = "M"
PATH = f"/v3/streams/projects/{PROJECT}/sites/s/instruments/i1"


@pytest.fixture
def t(server: Server, client: httpx.Client) -> Iterator[Tapis]:
    """A tapipy client that owns project M, site s, instrument i1 with temp, rh and lvl (no
    data yet)."""
    home(client)
    tapis = tapis_for(server.url, account(client, "home", "alice"))
    s = tapis.streams
    s.create_project(project_name=PROJECT, owner="alice", pi="alice")
    site = {"site_name": "s", "site_id": "s", "latitude": 1, "longitude": 2, "elevation": 3}
    s.create_site(project_id=PROJECT, request_body=[{**site, "description": "d"}])
    s.create_instrument(
        project_id=PROJECT,
        site_id="s",
        request_body=[{"inst_name": "i1", "inst_id": "i1", "inst_description": "d"}],
    )
    s.create_variable(
        project_id=PROJECT,
        site_id="s",
        inst_id="i1",
        request_body=[
            {"var_name": "Temperature", "var_id": "temp"},
            {"var_name": "Humidity", "var_id": "rh"},
            {"var_name": "Level", "var_id": "lvl"},
        ],
    )
    yield tapis


def _post(server: Server, t: Tapis, raw: str) -> httpx.Response:
    headers = {"X-Tapis-Token": t.get_access_jwt(), "Content-Type": "application/json"}
    return httpx.post(
        f"{server.url}/v3/streams/measurements", content=raw, headers=headers, timeout=30
    )


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_future_rows_are_stored_as_tapis_stores_them(
    t: Tapis, server: Server, client: httpx.Client
) -> None:
    """issue 11 item 6: the workshop notebook writes rows up to 99 minutes ahead; Tapis stores
    them, so this face does too, while the native face keeps its 5-minute limit."""
    now = datetime.now(UTC).replace(microsecond=0)
    ahead = [now + timedelta(minutes=m) for m in (1, 30, 99)]
    t.streams.create_measurement(
        inst_id="i1", vars=[{"datetime": _iso(a), "temp": n} for n, a in enumerate(ahead)]
    )
    got = t.streams.download_measurements(inst_id="i1", start_date=_iso(now))
    assert got.measurements_in_file == 3
    r = client.post(
        f"/api/v1/projects/{PROJECT}/observations",
        json=[{"device": "i1", "variable": "temp", "time": _iso(ahead[2]), "value": 1}],
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "time"


def test_bad_rows_are_named_by_vars_index_and_field(t: Tapis, server: Server) -> None:
    """issue 11 items 6 and 9: every bad row is named by its index in ``vars`` (not of the
    flattened observation) and its field (``datetime`` for a time), the message says why, and
    nothing is stored; NaN (as a number or as text) and infinities are refused, not nulled."""
    raw = (
        '{"inst_id": "i1", "vars": ['
        '{"datetime": "2024-01-01T00:00:00Z", "temp": 1, "rh": 2, "lvl": 3},'
        '{"datetime": "2024-01-01T00:01:00Z", "temp": 1, "rh": 2, "lvl": NaN},'
        '{"datetime": "yesterday", "temp": 1},'
        '{"temp": 1},'
        '{"datetime": "2024-01-01T00:02:00Z", "rh": "NaN"},'
        '{"datetime": "2024-01-01T00:03:00Z", "lvl": "-Infinity", "temp": Infinity},'
        '{"datetime": "2024-01-01T00:04:00Z", "bogus": 1}'
        "]}"
    )
    body = envelope(_post(server, t, raw), 400)
    found = [(d["index"], d["field"]) for d in body["metadata"]["details"]]
    assert found == [
        (1, "lvl"),
        (2, "datetime"),
        (3, "datetime"),
        (4, "rh"),
        (5, "lvl"),
        (5, "temp"),
        (6, "bogus"),
    ]
    assert body["message"].startswith("vars[1].lvl: a value must be a finite number")
    assert "7 problem(s) in 6 row(s); nothing was saved" in body["message"]
    reasons = {(d["index"], d["field"]): d["reason"] for d in body["metadata"]["details"]}
    assert "'yesterday' is not an ISO 8601" in reasons[(2, "datetime")]
    assert "Datetime field required" in reasons[(3, "datetime")]
    assert "'NaN'" in reasons[(4, "rh")]
    assert "Variable ID: bogus is invalid!" in reasons[(6, "bogus")]
    assert t.streams.download_measurements(inst_id="i1").measurements_in_file == 0


@pytest.mark.parametrize("value", ["NaN", '"NaN"', '"nan"', "Infinity", '"inf"', '"1e999"'])
def test_nan_alone_is_refused(t: Tapis, server: Server, value: str) -> None:
    """issue 11 item 9: ``"temp": NaN`` or ``"NaN"`` gave 201 and a null; now a 400 naming
    the row and the variable."""
    raw = f'{{"inst_id": "i1", "vars": [{{"datetime": "2024-01-01T00:00:00Z", "temp": {value}}}]}}'
    body = envelope(_post(server, t, raw), 400)
    assert [(d["index"], d["field"]) for d in body["metadata"]["details"]] == [(0, "temp")]
    assert "finite" in body["message"]
    assert t.streams.download_measurements(inst_id="i1").measurements_in_file == 0


def test_huge_numbers_are_a_clear_400(t: Tapis, server: Server) -> None:
    """issue 11 item 13: a 400-digit measurement value was a 500 (OverflowError); it is a 400
    naming the row and saying why. A 5,000-digit one (beyond Python's int parsing limit) is a
    400 too."""
    raw = json.dumps(
        {"inst_id": "i1", "vars": [{"datetime": "2024-01-01T00:00:00Z", "temp": 10**400}]}
    )
    body = envelope(_post(server, t, raw), 400)
    assert [(d["index"], d["field"]) for d in body["metadata"]["details"]] == [(0, "temp")]
    assert "401 digits" in body["message"] and "too large" in body["message"]
    raw = '{"inst_id": "i1", "vars": [{"datetime": "2024-01-01T00:00:00Z", "temp": 1%s}]}' % (
        "0" * 5000
    )
    body = envelope(_post(server, t, raw), 400)
    assert body["status"] == "error"
    assert t.streams.download_measurements(inst_id="i1").measurements_in_file == 0


def test_engine_details_are_told_in_tapis_terms() -> None:
    """issue 11 item 6: a verdict of the engine on the flattened observations (index of the
    observation, field ``time``/``value``) comes back with the ``vars`` row and its key."""
    origin = [(0, "temp"), (0, "rh"), (1, "temp"), (2, "lvl")]
    exc = Invalid(
        "2 bad row(s) in the batch; nothing was stored",
        [
            {"index": 2, "field": "time", "reason": "too far ahead"},
            {"index": 3, "field": "value", "reason": "value must be finite"},
        ],
    )
    told = _as_tapis(exc, origin)
    assert [(d["index"], d["field"], d["reason"]) for d in told.details] == [
        (1, "datetime", "too far ahead"),
        (2, "lvl", "value must be finite"),
    ]
    assert told.message.startswith("vars[1].datetime: too far ahead")


def _csv(t: Tapis, **kw: Any) -> list[list[str]]:
    text = t.streams.download_measurements(inst_id="i1", format="csv", **kw)
    if isinstance(text, bytes):
        text = text.decode()
    return list(csv.reader(io.StringIO(text)))


def test_csv_and_json_pivot_only_variables_with_data(t: Tapis) -> None:
    """issue 11 item 8: a Tapis CSV is a pivot of the stored points: columns only for the
    variables with data in the window (the JSON likewise), not one for every variable."""
    t.streams.create_measurement(
        inst_id="i1",
        vars=[
            {"datetime": "2024-01-01T00:00:00Z", "temp": 1},
            {"datetime": "2024-01-01T00:01:00Z", "temp": 2, "rh": 50},
            {"datetime": "2024-01-02T00:00:00Z", "lvl": 7},
        ],
    )
    day1 = {"start_date": "2024-01-01T00:00:00Z", "end_date": "2024-01-01T23:59:59Z"}
    rows = _csv(t, **day1)
    assert rows[0] == ["time", "rh", "temp"]
    assert [r[1:] for r in rows[1:]] == [["", "1.0"], ["50.0", "2.0"]]
    got = t.streams.download_measurements(inst_id="i1", **day1)
    assert not hasattr(got, "lvl") and got.measurements_in_file == 2
    assert _csv(t, start_date="2024-01-02T00:00:00Z")[0] == ["time", "lvl"]
    assert _csv(t)[0] == ["time", "lvl", "rh", "temp"]
    assert _csv(t, var_ids="temp,lvl", **day1)[0] == ["time", "temp"]
    assert _csv(t, start_date="2025-01-01T00:00:00Z") == [["time"]]
    empty = t.streams.download_measurements(inst_id="i1", start_date="2025-01-01T00:00:00Z")
    assert empty.measurements_in_file == 0 and not hasattr(empty, "temp")


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        ({"cooldown": 10**400}, "cooldown"),
        ({"for": 10**400}, "for"),
        ({"cooldown": "1e400s"}, "cooldown"),
        ({"hysteresis": 10**400}, "condition"),
        ({"condition": {"key": "i1.temp", "operator": ">", "val": 10**400}}, "condition"),
    ],
)
def test_channel_numbers_too_large_are_a_clear_400(
    t: Tapis, server: Server, trigger: dict[str, Any], field: str
) -> None:
    """issue 11 item 13: a Tapis channel ``cooldown`` of 10^400 was a 500 (OverflowError); a
    number too large anywhere in a trigger is a 400 naming the trigger and the field."""
    body = {
        "channel_id": "c1",
        "channel_name": "c1",
        "template_id": "default_threshold",
        "triggers_with_actions": [
            {
                "inst_ids": ["i1"],
                "condition": {"key": "i1.temp", "operator": ">", "val": 90},
                "action": {"method": "ACTOR", "actor_id": "plot", "message": "m"},
                **trigger,
            }
        ],
    }
    headers = {"X-Tapis-Token": t.get_access_jwt(), "Content-Type": "application/json"}
    r = httpx.post(
        f"{server.url}/v3/streams/channels", content=json.dumps(body), headers=headers, timeout=30
    )
    got = envelope(r, 400)
    detail = got["metadata"]["details"][0]
    assert field in detail["field"] and detail.get("index", 0) == 0, got
    assert t.streams.list_channels() == []


def test_values_are_stored_as_tapis_stores_them(t: Tapis) -> None:
    """issue 11 item 6: Tapis stores ``float(value)`` (else the text): numbers, numeric text
    and booleans as floats, other text as text; the reply shows what was stored."""
    saved = t.streams.create_measurement(
        inst_id="i1",
        vars=[{"datetime": "2024-01-01T00:00:00Z", "temp": "12.5", "rh": True, "lvl": "high"}],
    )
    assert saved.temp[0].get("2024-01-01T00:00:00Z") == 12.5
    assert saved.rh[0].get("2024-01-01T00:00:00Z") == 1.0
    got = t.streams.download_measurements(inst_id="i1")
    assert vars(got.temp) == {"2024-01-01T00:00:00Z": 12.5}
    assert vars(got.rh) == {"2024-01-01T00:00:00Z": 1.0}
    assert vars(got.lvl) == {"2024-01-01T00:00:00Z": "high"}
