"""The feed's messages and per-connection metadata bookkeeping, without I/O."""

from __future__ import annotations

import json
import math
import tracemalloc
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.batch import qc_names
from streamgauge.core.hub import Cells, Item
from streamgauge.core.registry import Registry
from streamgauge.core.units import ENGLISH, METRIC
from streamgauge.domain import events as ev
from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import BadRequest
from streamgauge.domain.model import Device, Project, Site
from streamgauge.faces.synoptic.args import FeedArgs, parse_feed_args
from streamgauge.faces.synoptic.messages import (
    M_TO_FT,
    Metadata,
    _number,
    _Stations,
    data_message,
    date_of,
    encode_rows,
    iso_date_of,
    merge_items,
    prepare,
    station,
)
from tests.core.test_filters import Builder

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _registry() -> tuple[Registry, dict[int, tuple[str, str]]]:
    """Ten stations (devices without a site), each with air_temp and wind_speed."""
    b = Builder()
    for k in range(10):
        dev = b.device(1, f"ST{k}", "weather_station", {})
        for name in ("air_temp", "wind_speed"):
            b.series(dev, b.variable(dev, name))
    return b.reg, {pk: (w[1], w[2]) for pk, w in b.where.items()}


def _item(series: list[int]) -> Item:
    return Item(1, len(series), len(series), b"", 0, np.array(series, np.int64))


@given(st.lists(st.lists(st.integers(1, 20), min_size=1, max_size=12), max_size=10))
def test_metadata_describes_each_station_and_sensor_once_before_its_rows(
    rounds: list[list[int]],
) -> None:
    reg, where = _registry()
    meta = Metadata(reg, METRIC, enabled=True)
    stations: list[str] = []
    sensors: list[str] = []
    for series in rounds:
        message = meta.message(_item(series))
        fresh_st = sorted({where[pk][0] for pk in series} - set(stations))
        fresh_se = sorted({where[pk][1] for pk in series} - set(sensors))
        if not fresh_st and not fresh_se:
            assert message is None
            continue
        assert message is not None
        got = json.loads(message)
        assert got["type"] == "metadata"
        assert sorted(s["stid"] for s in got["stations"]) == fresh_st
        assert sorted(u["sensor"] for u in got["units"]) == fresh_se
        stations += fresh_st
        sensors += fresh_se


def test_metadata_off_and_items_without_series_need_nothing() -> None:
    reg, _ = _registry()
    assert Metadata(reg, METRIC, enabled=False).message(_item([1, 2])) is None
    empty = Item(1, 1, 0, b"", 0, None)
    assert Metadata(reg, METRIC, enabled=True).message(empty) is None


def test_merge_items_joins_consecutive_messages_within_the_row_bound() -> None:
    def item(first: int, rows: list[int]) -> Item:
        body = b"".join(b'{"v":%d},' % r for r in rows)
        last = first + len(rows) - 1
        return Item(
            first,
            last,
            len(rows),
            data_message(body, first, last),
            5 + first,
            np.array(rows, np.int64),
        )

    a, b, c = item(1, [1, 2]), item(3, [3]), item(4, [4, 5, 6])
    assert merge_items([a], 3) == [a]
    merged = merge_items([a, b, c], 3)
    assert [(m.first, m.last, m.count) for m in merged] == [(1, 3, 3), (4, 6, 3)]
    assert merged[1] is c  # a group of one is sent as the hub built it
    first = json.loads(merged[0].data)
    assert first == {"type": "data", "cursor": 3, "data": [{"v": 1}, {"v": 2}, {"v": 3}]}
    assert merged[0].series is not None and merged[0].series.tolist() == [1, 2, 3]
    assert merged[0].received_ns == 6
    assert [m.count for m in merge_items([a, b, c], 100)] == [6]


@given(st.integers(-62_135_596_800_000 + 86_400_000, 253_402_300_799_999))
def test_iso_dates_are_the_exact_time_and_the_default_is_its_minute(ms: int) -> None:
    """issue 11 item 11: ``timeformat=iso`` writes a JSON string that ISO 8601 parsers read back
    as the observation's exact time (milliseconds only when there are some); the default
    ``date`` is the same time's ``yyyymmddhhmm`` integer."""
    iso = json.loads(iso_date_of(ms))
    assert isinstance(iso, str) and iso.endswith("Z")
    assert ("." in iso) == (ms % 1000 != 0)
    when = datetime.fromisoformat(iso)
    assert when.tzinfo is not None and when.utcoffset() == timedelta(0)
    assert when == EPOCH + timedelta(milliseconds=ms)
    minute = json.loads(date_of(ms))
    assert isinstance(minute, int)
    assert minute == int(when.strftime("%Y%m%d%H%M"))


def test_recent_and_timeformat_arguments_parse_like_rewind_and_a_choice() -> None:
    """issue 11 item 11: ``recent`` gives what ``rewind`` gives, is checked alike and named as
    given, and cannot be combined with ``rewind``; ``timeformat`` defaults to the integer."""
    now = 1_700_000_000_000

    def parse(query: str) -> FeedArgs:
        return parse_feed_args(query, now_ms=now, max_period_hours=48)

    assert parse("recent=5").rewind_minutes == parse("rewind=5").rewind_minutes == 5.0
    a, b = parse("recent=5&stid=X"), parse("rewind=5&stid=X")
    assert (a.start_ms, a.end_ms, a.metadata, a.timeformat) == (
        b.start_ms,
        b.end_ms,
        b.metadata,
        b.timeformat,
    )
    assert parse("").timeformat == parse("timeformat=yyyymmddhhmm").timeformat == "yyyymmddhhmm"
    assert parse("timeformat=iso").timeformat == parse("timeformat=ISO").timeformat == "iso"
    for query, field in [
        ("recent=5&rewind=5", "recent"),
        ("recent=x", "recent"),
        ("recent=3000", "recent"),
        ("rewind=3000", "rewind"),
        ("timeformat=epoch", "timeformat"),
        ("timeformat=iso&timeformat=iso", "timeformat"),
    ]:
        with pytest.raises(BadRequest) as caught:
            parse(query)
        assert [d["field"] for d in caught.value.details] == [field], query
        assert field in caught.value.message


def _old_station(doc: Site, stid: str) -> dict[str, object]:
    """What the metadata message said of a station when built from the validated model."""
    out: dict[str, object] = {
        "stid": stid,
        "name": doc.name,
        "latitude": None if doc.lat is None else str(doc.lat),
        "longitude": None if doc.lon is None else str(doc.lon),
        "elevation": None if doc.elevation is None else round(doc.elevation * M_TO_FT, 1),
        "network": None if doc.network is None else _number(doc.network),
    }
    for key in ("state", "nwszone", "nwsfirezone"):
        value = getattr(doc, key)
        if value is not None:
            out[key] = value
    return out


@given(
    st.one_of(st.none(), st.integers(-90, 90), st.floats(-90, 90)),
    st.one_of(st.none(), st.floats(-180, 180)),
    st.one_of(st.none(), st.integers(-400, 9000), st.floats(-400, 9000)),
    st.one_of(st.none(), st.sampled_from(["1", "22", "²", "MesoWest", "007"])),
    st.one_of(st.none(), st.just("UT")),
    st.booleans(),
)
def test_a_station_is_described_from_its_stored_json_as_from_its_model(
    lat: float | None,
    lon: float | None,
    elevation: float | None,
    network: str | None,
    state: str | None,
    partial: bool,
) -> None:
    """``station`` reads a site's stored JSON instead of validating its model; what it says
    is the same, for JSON numbers written as integers too, and for a stored document that
    lacks a field (the model's default then)."""
    site = Site(
        id="S1",
        name="Station one",
        project="p",
        lat=lat,
        lon=lon,
        elevation=elevation,
        network=network,
        state=state,
        nwszone="UTZ001",
    )
    stored = json.loads(site.model_dump_json())
    if isinstance(lat, int):
        stored["lat"] = lat  # as another writer may have stored it: 40, not 40.0
    if partial:
        del stored["nwsfirezone"]
    project = Project(id="p", name="P", created_at="2026-01-01T00:00:00Z")
    device = Device(id="d1", project="p", site="S1", type=None, name="d1", labels={}, metadata={})
    reg = Registry()
    reg.apply_all(
        [
            ev.ProjectPut(1, project),
            ev.SiteStored(1, 1, json.dumps(stored)),
            ev.DeviceStored(1, 1, device.model_dump_json()),
        ]
    )
    assert station(reg, 1) == _old_station(site, "S1")


_VALUES = st.one_of(
    st.floats(),  # NaN and the infinities are null
    st.none(),
    st.text(alphabet='a,"\\ 1]'),  # commas, quotes, escapes: the values are encoded one by one
)


@given(
    st.lists(
        st.tuples(st.integers(-1, 6), st.integers(0, 3), _VALUES, st.integers(0, 2**5 - 1)),
        min_size=1,
        max_size=20,
    )
)
def test_rows_name_the_station_and_sensor_of_their_series(
    rows: list[tuple[int, int, float | str | None, int]],
) -> None:
    """``encode_rows`` writes each row from the series columns: a device on a site is the
    site's station, one without a site its own; a dropped, unknown or negative series pk gives
    empty names (set 1), as before. Values (numbers, nulls, text) and QC flags are each row's
    own."""
    project = Project(id="p", name="P", created_at="2026-01-01T00:00:00Z")
    site = Site(id="S1", name="one", project="p")
    on_site = Device(id="d1", project="p", site="S1", type=None, name="d1", labels={}, metadata={})
    alone = Device(id="d2", project="p", site=None, type=None, name="d2", labels={}, metadata={})
    reg = Registry()
    reg.apply_all(
        [
            ev.ProjectPut(1, project),
            ev.SiteStored(1, 1, site.model_dump_json()),
            ev.DeviceStored(1, 1, on_site.model_dump_json()),
            ev.DeviceStored(2, 1, alone.model_dump_json()),
            ev.SeriesAdded(1, 1, 1, 1, 1, "d1", "air_temp"),
            ev.SeriesAdded(2, 1, 1, 2, 3, "d1", 'we"ird'),
            ev.SeriesAdded(3, 1, 2, 3, 1, "d2", "air_temp"),
            ev.SeriesAdded(4, 1, 2, 4, 1, "d2", "wind_speed"),
            ev.SeriesDropped(4),
        ]
    )
    names = {1: ("S1", "air_temp", 1), 2: ("S1", 'we"ird', 3), 3: ("d2", "air_temp", 1)}
    n = len(rows)
    t0 = 1_700_000_000_000
    batch = Batch(
        1,
        np.arange(1, n + 1, dtype=np.int64),
        np.array([row[0] for row in rows], np.int64),
        np.array([t0 + 60_000 * row[1] for row in rows], np.int64),
        [row[2] for row in rows],
        np.array([row[3] for row in rows], np.int64),
    )
    got = encode_rows(batch, reg, METRIC)
    assert len(got) == n
    for (pk, k, value, qc), row in zip(rows, got, strict=True):
        assert row.endswith(b",")
        stid, sensor, set_ = names.get(pk, ("", "", 1))
        assert json.loads(row[:-1]) == {
            "stid": stid,
            "sensor": sensor,
            "set": set_,
            "date": int(date_of(t0 + 60_000 * k)),
            "value": None if isinstance(value, float) and not math.isfinite(value) else value,
            "qc": qc_names(qc),
        }
    # these variables have no unit: another unit system gives the same rows (their heads kept)
    assert encode_rows(batch, reg, ENGLISH) == got


SESSIONS = 18  # at least the hub's STACK_MIN: a round that checks every session at once


class _Sub:
    """What ``prepare`` reads of a hub subscription."""

    def __init__(self, meta: Metadata) -> None:
        self.state = meta
        self.sink: object | None = lambda items, position: True
        self.overflowed = False
        self.closed: str | None = None


_round = st.tuples(
    st.lists(st.integers(-1, 24), min_size=1, max_size=30),  # the batch's series pks
    st.integers(0, 2**32 - 1),  # which rows each session picks
    st.sets(st.integers(0, SESSIONS - 1)),  # sessions whose connection cannot take the round
    st.sets(st.integers(0, SESSIONS - 1)),  # sessions that send their queued items first
    st.booleans(),  # the registry changes between the check and the sending
)


@given(st.lists(_round, min_size=1, max_size=8))
def test_a_round_checked_at_once_describes_as_item_by_item(
    rounds: list[tuple[list[int], int, set[int], set[int], bool]],
) -> None:
    """``prepare`` (every session of a round at once) gives each session the metadata message
    that checking its items one by one gives, whatever comes between: rounds queued because the
    connection was full and sent later merged, a registry change before the sending, sessions
    without metadata, rows of no series."""
    reg, _ = _registry()
    at_once = [Metadata(reg, METRIC, enabled=i % 7 != 3) for i in range(SESSIONS)]
    one_by_one = [Metadata(reg, METRIC, enabled=i % 7 != 3) for i in range(SESSIONS)]
    subs = [_Sub(meta) for meta in at_once]
    queued: list[list[Item]] = [[] for _ in range(SESSIONS)]
    cursor = 1

    def send(i: int, items: list[Item]) -> None:
        for item in items:
            assert at_once[i].message(item) == one_by_one[i].message(item)

    for series, seed, declined, drained, changed in rounds:
        for i in sorted(drained):  # a session's task sends its queue (``_Sender.chunk``)
            send(i, merge_items(queued[i], 1000))
            queued[i] = []
        for i, sub in enumerate(subs):  # a sink is given again only with an empty queue
            sub.sink = None if queued[i] else (lambda items, position: True)
        n = len(series)
        batch = Batch(
            1,
            np.arange(cursor, cursor + n, dtype=np.int64),
            np.array(series, np.int64),
            np.full(n, 1_700_000_000_000, np.int64),
            [0.0] * n,
            np.zeros(n, np.int64),
        )
        cursor += n
        masks = np.random.default_rng(seed).random((SESSIONS, n)) < 0.5
        cells = Cells(batch, masks, subs)  # type: ignore[arg-type]
        prepare(batch, cells)
        if changed:
            reg.version += 1
        for i in range(SESSIONS):
            picked = np.flatnonzero(masks[i])
            if not len(picked):
                continue
            first, last = int(batch.cursors[picked[0]]), int(batch.cursors[picked[-1]])
            data = data_message(b"{},", first, last)
            item = Item(first, last, len(picked), data, 0, batch.series[picked])
            if subs[i].sink is None or i in declined:
                queued[i].append(item)
            else:
                send(i, [item])
    for i in range(SESSIONS):
        send(i, merge_items(queued[i], 1000))


def test_the_station_tables_hold_their_json_at_its_length() -> None:
    """Each station's ``stid`` and metadata JSON and each sensor's name are kept for the
    registry's life: copied out of orjson's buffer (``kept_json``), not 4 KiB each (30,000
    stations held about 240 MB in each process that served the feed)."""
    b = Builder()
    for k in range(300):
        dev = b.device(1, f"ST{k:04d}", "weather_station", {})
        b.series(dev, b.variable(dev, "air_temp"))
    reg = b.reg
    stations = _Stations.of(reg)
    numbers = list(range(len(stations.reps)))
    assert len(numbers) == 300
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stations.describe(reg, numbers)
        for n in numbers:
            stations.stid_json(reg, n)
        stations.sensor_json(reg, 0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert json.loads(stations.stid_json(reg, 7)) == "ST0007"
    assert json.loads(stations.json[7] or b"")["stid"] == "ST0007"
    assert held < 300 * 1024  # about 200 bytes a station; 8 KiB with orjson's buffers
