"""The blocking client against a real server on loopback: every native operation, ingest,
history (iterators and a DataFrame), the resumable stream and its checkpoint, typed errors."""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streamgauge.client import (
    Client,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Observation,
    Unauthorized,
)
from tests.conftest import MS, Server, make_station, rows


@pytest.fixture
def c(server: Server) -> Iterator[Client]:
    with Client(server.url, token=server.token) as client:
        yield client


@pytest.fixture
def station(server: Server) -> Server:
    with server.client() as http:
        make_station(http)
    return server


def test_url_and_token_default_to_the_environment(
    station: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMGAUGE_URL", station.url)
    monkeypatch.setenv("STREAMGAUGE_TOKEN", station.token)
    with Client() as c:
        assert c.get_project("p1")["id"] == "p1"


def test_every_crud_operation(c: Client) -> None:
    c.create_project(id="lab", name="Roof lab")
    c.create_project([{"id": "other"}, {"id": "third"}])
    with pytest.raises(Conflict):
        c.create_project(id="lab")
    assert c.create_project(id="lab", if_exists="skip")["id"] == "lab"
    assert [p["id"] for p in c.projects()] == ["lab", "other", "third"]
    assert c.update_project("lab", description="the roof")["description"] == "the roof"
    c.delete_project("third")
    with pytest.raises(NotFound) as err:
        c.get_project("third")
    assert "third" in err.value.message and err.value.status == 404

    c.create_site("lab", id="roof", lat=40.76, lon=-111.85, state="UT")
    assert c.get_site("lab", "roof")["state"] == "UT"
    assert c.update_site("lab", "roof", elevation=1300)["elevation"] == 1300
    assert [s["id"] for s in c.sites("lab")] == ["roof"]

    c.create_device("lab", id="ws1", site="roof", variables=[{"name": "air_temp", "unit": "degC"}])
    assert [d["id"] for d in c.devices("lab", site="roof")] == ["ws1"]
    assert c.update_device("lab", "ws1", labels={"floor": "3"})["labels"] == {"floor": "3"}
    c.create_variable("lab", "ws1", name="wind_speed", unit="m/s")
    assert {v["id"] for v in c.variables("lab", "ws1")} == {"air_temp", "wind_speed"}
    assert c.get_variable("lab", "ws1", "wind_speed")["unit"] == "m/s"
    assert c.update_variable("lab", "ws1", "wind_speed", unit="km/h")["unit"] == "km/h"
    c.delete_variable("lab", "ws1", "wind_speed")
    assert c.get_device("lab", "ws1")["id"] == "ws1"

    c.create_account("lab", "logger", role="manager")
    assert [a["id"] for a in c.accounts("lab")] == ["logger"]
    assert c.get_account("lab", "logger")["id"] == "logger"
    c.update_account("lab", "logger", name="The logger")
    key = c.create_key("lab", "logger")
    assert [k["key_id"] for k in c.keys("lab", "logger")] == [key["key_id"]]
    c.grant_role("other", "logger", "user")
    assert {"account": "logger", "role": "user"} in c.roles("other")
    with Client(c.url, key_id=key["key_id"], secret=key["secret"]) as k:
        assert k.get_device("lab", "ws1")["id"] == "ws1"
        with pytest.raises(Forbidden):
            k.delete_device("lab", "ws1")  # a manager does not delete
    c.revoke_role("other", "logger")
    c.delete_key("lab", "logger", key["key_id"])
    with Client(c.url, key_id=key["key_id"], secret=key["secret"]) as k:
        with pytest.raises(Unauthorized):
            k.get_project("lab")
    c.delete_account("lab", "logger")

    ch = c.create_channel(
        "lab",
        id="hot",
        triggers=[
            {
                "type": "expression",
                "device": "ws1",
                "expression": "(air_temp > 40)",
                "actions": [{"method": "WEBHOOK", "webhook_url": "http://127.0.0.1:9/hook"}],
            }
        ],
    )
    assert ch["id"] == "hot"
    assert [x["id"] for x in c.channels("lab")] == ["hot"]
    assert c.update_channel("lab", "hot", status="INACTIVE")["status"] == "INACTIVE"
    assert c.get_channel("lab", "hot")["status"] == "INACTIVE"
    assert list(c.alerts("lab", "hot")) == []
    c.delete_channel("lab", "hot")

    tok = c.create_feed_token("lab", "dashboard")
    assert tok["token"] and [t["id"] for t in c.feed_tokens("lab")] == [tok["id"]]
    c.revoke_feed_token("lab", tok["id"])
    assert list(c.feed_tokens("lab")) == []

    c.delete_device("lab", "ws1")
    c.delete_site("lab", "roof")
    assert list(c.sites("lab")) == []


def test_listings_page_through_everything(c: Client) -> None:
    c.create_project([{"id": f"p{i:03d}"} for i in range(250)])
    assert len(list(c.projects())) == 250


def test_ingest_history_and_frame(station: Server, c: Client) -> None:
    r = c.ingest("p1", rows(2500), batch_size=1000)
    assert (r.accepted, r.duplicates, r.batches) == (2500, 0, 3)
    assert (r.first_cursor, r.last_cursor) == (1, 2500)
    again = c.ingest("p1", rows(2500), batch_size=1000)  # retried or repeated: idempotent
    assert (again.accepted, again.duplicates) == (0, 2500)

    got = list(c.history("p1", page_size=700))
    # every row once, in time order; two batches in flight may commit in either order, so the
    # cursors follow the batches' commits, not the rows' order in the input
    assert sorted(o.cursor for o in got) == list(range(1, 2501))
    assert [o.time for o in got] == sorted(o.time for o in got)
    assert isinstance(got[0], Observation) and got[0].time.tzinfo is not None
    some = list(c.history("p1", device="d0", variable="air_temp", start=got[100].time))
    assert some and all(o.device == "d0" and o.variable == "air_temp" for o in some)
    assert all(o.time >= got[100].time for o in some)

    frame = c.history_frame("p1", device="d1", units="english")
    assert len(frame) == 1250
    assert list(frame.columns) == ["cursor", "device", "variable", "set", "time", "value", "qc"]
    assert str(frame["time"].dt.tz) == "UTC"


def test_ingest_a_dataframe(station: Server, c: Client) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "device": ["d0", "d1"],
            "variable": ["air_temp", "air_temp"],
            "time": pd.to_datetime(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"], utc=True),
            "value": [1.5, 2.5],
        }
    )
    assert c.ingest("p1", frame).accepted == 2
    got = list(c.history("p1"))
    assert [(o.device, o.value, o.time.isoformat()) for o in got] == [
        ("d0", 1.5, "2026-01-01T00:00:00+00:00"),
        ("d1", 2.5, "2026-01-01T00:00:01+00:00"),
    ]


def test_a_rejected_batch_names_the_row_of_the_whole_input(station: Server, c: Client) -> None:
    bad = rows(5)
    bad[3]["device"] = "nope"
    with pytest.raises(Invalid) as err:
        c.ingest("p1", bad, batch_size=2)
    assert err.value.details[0]["index"] == 3
    assert err.value.extra["stored_rows"] == 2  # the first batch was stored
    assert err.value.extra["stored_after"] == 1  # and the last, sent with it (two in flight)
    assert len(list(c.history("p1"))) == 3


def test_export_plot_and_geojson(station: Server, c: Client) -> None:
    c.ingest("p1", rows(300))
    buf = io.BytesIO()
    c.export("p1", buf, format="parquet", device="d0")
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    assert table.num_rows == 150 and set(table.column("device").to_pylist()) == {"d0"}
    png = c.plot("p1", "d0", "air_temp", units="english")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    geo = c.stations_geojson("p1")
    assert geo["type"] == "FeatureCollection"
    assert geo["features"][0]["geometry"] == {"type": "Point", "coordinates": [-111.9, 40.7]}


def test_stream_from_a_cursor_then_live(station: Server, c: Client) -> None:
    c.ingest("p1", rows(100))
    it = c.stream("p1", since=40, variable="air_temp")
    first = list(itertools.islice(it, 30))
    assert [o.cursor for o in first] == [x for x in range(41, 101) if (x - 1) // 2 % 2 == 0]
    c.ingest("p1", rows(4, start_ms=1_750_000_000_000))
    live = list(itertools.islice(it, 2))
    assert [o.cursor for o in live] == [101, 102]
    it.close()


def test_stream_without_since_starts_at_the_head(station: Server, c: Client) -> None:
    c.ingest("p1", rows(10))
    it = c.stream("p1")
    got: list[int] = []
    t = threading.Thread(target=lambda: got.extend(o.cursor for o in itertools.islice(it, 3)))
    t.start()
    c.ingest("p1", rows(3, start_ms=1_750_000_000_000))
    t.join(timeout=30_000 * MS)
    assert got == [11, 12, 13]
    it.close()


def test_stream_resumes_after_the_server_closes_it(station: Server, c: Client) -> None:
    """A closing frame (here: every stream closed, as at shutdown) is followed by a
    reconnection after the last cursor: nothing lost, nothing repeated."""
    c.ingest("p1", rows(50))
    it = c.stream("p1", since=0)
    head = [o.cursor for o in itertools.islice(it, 50)]
    loop = station.server  # the hub lives on the server's loop: close from there
    station.engine.hub.close_all("test: closed by the server")
    del loop
    c.ingest("p1", rows(50, start_ms=1_750_000_000_000))
    tail = [o.cursor for o in itertools.islice(it, 50)]
    assert head + tail == list(range(1, 101))
    it.close()


def test_checkpoint_continues_right_after_the_last_yielded(
    station: Server, c: Client, tmp_path: Path
) -> None:
    c.ingest("p1", rows(300))
    cp = tmp_path / "p1.cursor"
    first = c.stream("p1", since=0, checkpoint=cp)
    a = [o.cursor for o in itertools.islice(first, 120)]
    first.close()  # saved on exit
    second = c.stream("p1", checkpoint=cp)
    b = [o.cursor for o in itertools.islice(second, 180)]
    second.close()
    assert a + b == list(range(1, 301))
