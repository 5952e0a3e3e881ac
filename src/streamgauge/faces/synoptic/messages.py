"""The feed's messages (reference: synoptic-push.md section 3), built without I/O.

Rows are encoded once per batch, unit system and date format as
``{stid, sensor, set, date, value, qc},`` (the hub caches them and shares one join between
sessions whose masks agree); a data message wraps a queued item's rows. ``Metadata`` is per
connection: it describes each station and each sensor's unit once, before the first data
message that needs it.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from streamgauge.core.batch import kept_json, output_values, qc_json, value_json
from streamgauge.core.framing import NDJSON, Deliver, Framing
from streamgauge.core.hub import Cells, Item
from streamgauge.core.registry import Registry, SiteRec
from streamgauge.core.units import UnitSystem, target_unit, unit_label
from streamgauge.domain.batch import Batch
from streamgauge.wire.rows import format_time
from streamgauge.wire.wsframes import joined_lists, text_frame

M_TO_FT = 3.280839895013123


def _auth(code: str, message: str, session: str) -> bytes:
    return orjson.dumps({"type": "auth", "code": code, "messages": [message], "session": session})


def auth_success(session: str, resumed: bool) -> bytes:
    text = "Restarting from provided session id." if resumed else "Starting new session."
    return _auth("success", text, session)


def auth_failed(messages: list[str]) -> bytes:
    return orjson.dumps({"type": "auth", "code": "failed", "messages": messages, "session": ""})


# A data message is DATA_PREFIX, its cursor, DATA_INFIX, its rows (each with a trailing comma,
# the last one's left out) and DATA_TAIL: ``data_message``, and the fan-out's ``joined_frames``
DATA_PREFIX = b'{"type":"data","cursor":'
DATA_INFIX = b',"data":['
DATA_TAIL = b"]}"


def data_message(rows: bytes, first: int, last: int) -> bytes:
    """A ``data`` message of joined rows (each encoded with a trailing comma). The extra
    ``cursor`` is the log position of its last observation. The hub builds it once per item
    (``Framing.wrap``), shared by every session whose mask agrees."""
    return b"%s%d%s%s%s" % (DATA_PREFIX, last, DATA_INFIX, rows[:-1], DATA_TAIL)


def merge_items(items: list[Item], max_rows: int) -> list[Item]:
    """Consecutive queued data messages of a session merged into as few as ``max_rows`` allows.
    A session that keeps up gets one item per fan-out round and sends it as the hub built it
    (shared with sessions whose masks agree); one that fell behind while the server was busy
    catches up with fewer, larger messages, so the cost per observation falls as load rises."""
    if len(items) < 2:
        return items
    out: list[Item] = []
    group: list[Item] = []
    count = 0
    for item in [*items, None]:
        if item is not None and count + item.count <= max_rows:
            group.append(item)
            count += item.count
            continue
        if len(group) == 1:
            out.append(group[0])
        elif group:
            rows = b",".join(g.data[g.data.index(b"[") + 1 : -2] for g in group)
            series = [g.series for g in group if g.series is not None]
            out.append(
                Item(
                    group[0].first,
                    group[-1].last,
                    count,
                    data_message(rows + b",", group[0].first, group[-1].last),
                    min(g.received_ns for g in group),
                    np.concatenate(series) if series else None,
                )
            )
        group, count = ([item], item.count) if item is not None else ([], 0)
    return out


def _station_of_device(reg: Registry, device_pk: int) -> tuple[str, SiteRec | None]:
    dev = reg.devices_by_pk.get(device_pk)
    if dev is None:
        return "", None
    site = reg.sites.get((dev.project_pk, dev.site)) if dev.site else None
    return (site.id if site is not None else dev.id), site


_NO_SERIES_HEAD = b'{"stid":"","sensor":"","set":1,"date":%s,"value":'
_HEAD = b'{"stid":%s,"sensor":%s,"set":%d,"date":%s,"value":'


def date_of(ms: int) -> bytes:
    """``yyyymmddhhmm`` (UTC) as a JSON integer, like the reference's example (computed, not
    formatted: ``strftime``'s year is not zero-padded alike on every platform)."""
    t = time.gmtime(ms // 1000)
    day = (t.tm_year * 100 + t.tm_mon) * 100 + t.tm_mday
    return b"%d" % ((day * 100 + t.tm_hour) * 100 + t.tm_min)


def iso_date_of(ms: int) -> bytes:
    """ISO 8601 (RFC 3339) in UTC as a JSON string, the native API's form of a time:
    ``"2024-01-13T22:15:07Z"``, with milliseconds (``"...07.250Z"``) only when there are some."""
    return b'"%s"' % format_time(ms).encode()


DATE_ENCODERS: dict[str, Callable[[int], bytes]] = {
    "yyyymmddhhmm": date_of,
    "iso": iso_date_of,
}


def _encode_rows(
    batch: Batch, reg: Registry, units: UnitSystem, date: Callable[[int], bytes]
) -> list[bytes]:
    """Each row from the registry's series columns: its station's ``stid`` and its sensor's
    JSON are kept per station and per name code (``_Stations``), nothing per series (a table
    of each series' row prefix cost about 150 bytes a series: 27 MB on 180,000). The part of a
    row before its value does not depend on the units, and is made once per batch; the values
    are encoded in one call when none is text."""
    if not len(batch):
        return []
    heads = _row_heads(batch, reg, date)
    values = value_json(output_values(batch, reg, units))
    return [
        b'%s%s,"qc":%s},' % (head, value, flags)
        for head, value, flags in zip(heads, values, qc_json(batch.qc), strict=True)
    ]


def _row_heads(batch: Batch, reg: Registry, date: Callable[[int], bytes]) -> list[bytes]:
    """Each row's JSON up to its value (``{"stid":..,"sensor":..,"set":..,"date":..,"value":``),
    kept on the batch for the registry's version (the same for every unit system)."""
    key = ("feed_heads", date)
    found = batch.derived.get(key)
    if found is not None and found[0] == reg.version:
        heads: list[bytes] = found[1]
        return heads
    stations = _Stations.of(reg)
    s = batch.series
    inside = (s >= 0) & (s < reg.series_end)
    at = np.where(inside, s, 0)
    ok = inside & (reg.s_project[at] >= 0)
    numbers = np.where(ok, stations.of_series[at], -2).tolist()  # -1: no station, -2: no series
    uniq, inverse = np.unique(batch.times, return_inverse=True)
    dates = [date(t) for t in uniq.tolist()]
    stids, sensors = stations.stids, stations.sensors
    heads = []
    append = heads.append
    for n, code, set_, d in zip(
        numbers,
        reg.s_name[at].tolist(),
        reg.s_set[at].tolist(),
        inverse.reshape(-1).tolist(),
        strict=True,
    ):
        if n < -1:
            append(_NO_SERIES_HEAD % dates[d])
            continue
        stid = b'""' if n < 0 else (stids[n] or stations.stid_json(reg, n))
        sensor = sensors.get(code) or stations.sensor_json(reg, code)
        append(_HEAD % (stid, sensor, set_, dates[d]))
    batch.derived[key] = (reg.version, heads)
    return heads


def encode_rows(
    batch: Batch, reg: Registry, units: UnitSystem, timeformat: str = "yyyymmddhhmm"
) -> list[bytes]:
    """The rows of ``batch``, each ``{stid, sensor, set, date, value, qc},`` with ``date`` in
    ``timeformat`` (a key of ``DATE_ENCODERS``)."""
    return _encode_rows(batch, reg, units, DATE_ENCODERS[timeformat])


def _encoder(timeformat: str) -> Callable[[Batch, Registry, UnitSystem], list[bytes]]:
    date = DATE_ENCODERS[timeformat]

    def encode(batch: Batch, reg: Registry, units: UnitSystem) -> list[bytes]:
        return _encode_rows(batch, reg, units, date)

    return encode


_ENCODERS = {name: _encoder(name) for name in DATE_ENCODERS}


def feed_framing(
    max_rows: int, timeformat: str = "yyyymmddhhmm", deliver: Deliver | None = None
) -> Framing:
    """The hub framing of feed sessions: rows as above, at most ``max_rows`` per message, with
    each item's series kept for the metadata. Its name (the hub's cache key for encoded rows
    and joined messages) carries the date format, so sessions share rows only when their dates
    are written alike. ``deliver``: the face's round delivery (``Framing.deliver``)."""
    return Framing(
        f"synoptic/{timeformat}/{max_rows}",
        "application/json",
        NDJSON.row,
        NDJSON.keepalive,
        NDJSON.closed,
        NDJSON.opened,
        NDJSON.units,
        encode=_ENCODERS[timeformat],
        max_rows=max_rows,
        wrap=data_message,
        with_series=True,
        prepare=prepare,
        deliver=deliver,
    )


def _number(text: str | None) -> int | str | None:
    # isascii: "²" is a digit to isdigit() and int("²") raises (a site's network of "²" broke
    # the metadata message of every feed of its project)
    if text is not None and text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    return text


def station(reg: Registry, device_pk: int) -> dict[str, Any]:
    """A station as the metadata message describes it: latitude and longitude as strings,
    elevation in feet (as Synoptic gives it), network as an integer when it is one; state and
    NWS zones besides."""
    stid, site = _station_of_device(reg, device_pk)
    return _station(stid, site, "" if site is None else site.stored)


def _station(stid: str, site: SiteRec | None, stored: str) -> dict[str, Any]:
    """``station`` of a station's id and site, given the site's stored JSON."""
    if site is None:
        return {"stid": stid, "latitude": None, "longitude": None, "elevation": None}
    # The fields from the site's stored JSON (a dump of its model, every field there): a
    # model validated per station cost most of a feed's first rounds (30,000 stations).
    doc = orjson.loads(stored)
    if not _SITE_FIELDS <= doc.keys():
        doc = site.doc.model_dump()
    lat, lon, elevation = doc["lat"], doc["lon"], doc["elevation"]
    out: dict[str, Any] = {
        "stid": stid,
        "name": doc["name"],
        "latitude": None if lat is None else str(float(lat)),
        "longitude": None if lon is None else str(float(lon)),
        "elevation": None if elevation is None else round(elevation * M_TO_FT, 1),
        "network": _number(doc["network"]),
    }
    for key in ("state", "nwszone", "nwsfirezone"):
        value = doc[key]
        if value is not None:
            out[key] = value
    return out


_SITE_FIELDS = frozenset(
    ("name", "lat", "lon", "elevation", "network", "state", "nwszone", "nwsfirezone")
)


class _Stations:
    """The feed's view of the registry's stations, kept in ``registry.derived`` (dropped when
    metadata changes): a dense station number per device pk (-1: none; a station is a site, or
    a device without one), one device of each station, each station's metadata JSON (made on
    first use), and the station number of every series pk. Series created by ingest extend the
    last table: only the new pks are looked up, in an array grown by doubling, so a network
    whose series appear batch by batch costs no pass over every series per batch."""

    __slots__ = ("index", "reps", "json", "stids", "sensors", "of_series", "series_done")

    def __init__(self, reg: Registry) -> None:
        self.index = np.full(max(reg.devices_by_pk, default=0) + 1, -1, np.int64)
        self.reps: list[int] = []
        number: dict[tuple[str, int], int] = {}
        for dev in reg.devices_by_pk.values():
            site = reg.sites.get((dev.project_pk, dev.site)) if dev.site else None
            key = ("site", site.pk) if site is not None else ("device", dev.pk)
            n = number.get(key)
            if n is None:
                n = number[key] = len(self.reps)
                self.reps.append(dev.pk)
            self.index[dev.pk] = n
        self.json: list[bytes | None] = [None] * len(self.reps)
        self.stids: list[bytes | None] = [None] * len(self.reps)
        self.sensors: dict[int, bytes] = {}
        self.of_series = np.zeros(0, np.int64)
        self.series_done = 0

    @classmethod
    def of(cls, reg: Registry) -> _Stations:
        found = reg.derived.get("feed_stations")
        if not isinstance(found, _Stations):
            found = reg.derived["feed_stations"] = cls(reg)
        if found.series_done < reg.series_end:
            found._extend(reg)
        return found

    def _extend(self, reg: Registry) -> None:
        done, end = self.series_done, reg.series_end
        if len(self.of_series) < end:
            grown = np.full(max(end, 2 * len(self.of_series)), -1, np.int64)
            grown[:done] = self.of_series[:done]
            self.of_series = grown
        devices = reg.s_device[done:end]
        index = self.index
        self.of_series[done:end] = np.where(
            devices >= 0, index[np.clip(devices, 0, len(index) - 1)], -1
        )
        self.series_done = end

    def stid_json(self, reg: Registry, n: int) -> bytes:
        """Station ``n``'s ``stid`` as JSON (made on first use)."""
        found = self.stids[n]
        if found is None:
            found = self.stids[n] = kept_json(_station_of_device(reg, self.reps[n])[0])
        return found

    def sensor_json(self, reg: Registry, code: int) -> bytes:
        """The sensor (variable id) of name code ``code`` as JSON (made on first use)."""
        found = self.sensors.get(code)
        if found is None:
            name = reg.name_list[code] if 0 <= code < len(reg.name_list) else ""
            found = self.sensors[code] = kept_json(name)
        return found

    def describe(self, reg: Registry, numbers: list[int]) -> None:
        """Make the metadata JSON of the stations of ``numbers`` not made yet, their sites'
        documents read at once: a fan-out worker keeps none and reads them from the database
        (one read for a round's new stations instead of one per station)."""
        missing = [n for n in numbers if self.json[n] is None]
        if not missing:
            return
        found = [_station_of_device(reg, self.reps[n]) for n in missing]
        docs = iter(reg.site_documents([site for _, site in found if site is not None]))
        for n, (stid, site) in zip(missing, found, strict=True):
            self.json[n] = kept_json(_station(stid, site, "" if site is None else next(docs)))


class _ItemKeys:
    """What the metadata check needs of an item, computed once per item and kept on it (the
    sessions that share an item share this too): its distinct dense station numbers (none of
    -1) in order of appearance and its distinct sensors (variable-name codes, none of -1), and,
    once a session asks, the metadata message that describes all its stations and no sensor:
    what every session sends that has described none of these stations and all the sensors
    (made once per item, not per session)."""

    __slots__ = ("stations", "station_array", "sensors", "all_stations")

    def __init__(self, reg: Registry, series: npt.NDArray[np.int64]) -> None:
        station_of, sensor_of = _station_and_sensor(reg, series)
        numbers = dict.fromkeys(station_of.tolist())
        numbers.pop(-1, None)
        self.stations = list(numbers)
        self.station_array = np.array(self.stations, np.int64)
        sensors = dict.fromkeys(sensor_of.tolist())
        sensors.pop(-1, None)
        self.sensors = list(sensors)
        self.all_stations: bytes | None = None

    def all_stations_message(self, reg: Registry) -> bytes:
        found = self.all_stations
        if found is None:
            found = self.all_stations = _metadata_message(reg, [], sorted(self.stations))
        return found


def _station_and_sensor(
    reg: Registry, series: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The dense station number and the sensor (name code) of each series pk; -1 for a pk the
    registry does not have (as ``encode_rows`` names no station and no sensor for it)."""
    inside = (series >= 0) & (series < reg.series_end)
    at = np.where(inside, series, 0)
    stations = np.where(inside, _Stations.of(reg).of_series[at], -1)
    sensors = np.where(inside, reg.s_name[at], -1)
    return stations, sensors


def _item_keys(reg: Registry, item: Item) -> _ItemKeys:
    found = item.derived
    if isinstance(found, _ItemKeys):
        return found
    assert item.series is not None
    keys = _ItemKeys(reg, item.series)
    item.derived = keys
    return keys


def _metadata_message(reg: Registry, units: list[dict[str, str]], fresh: list[int]) -> bytes:
    known = _Stations.of(reg)
    known.describe(reg, fresh)  # (each station's JSON is made on first use)
    return _stations_message(known.json, units, fresh)


_NO_UNITS = b'{"type":"metadata","units":[],"stations":['


def _stations_message(
    json: list[bytes | None], units: list[dict[str, str]], fresh: list[int]
) -> bytes:
    """The metadata message of these stations (their JSON made: ``_Stations.describe``) and
    units."""
    stations = b",".join(cast(Iterator[bytes], map(json.__getitem__, fresh)))
    if not units:
        return b"%s%s]}" % (_NO_UNITS, stations)
    return b'{"type":"metadata","units":%s,"stations":[%s]}' % (orjson.dumps(units), stations)


def _series_of_sensor(reg: Registry, item: Item, code: int) -> int:
    """A series pk among the item's rows with this sensor (the sensor is in the item)."""
    assert item.series is not None
    return int(item.series[np.flatnonzero(reg.s_name[item.series] == code)[0]])


class _Described:
    """What the feed's connections of one registry have described, a row of bits per
    connection that has described anything (idle ones have none): stations (one bit per dense
    station number, 4 KB for 30,000 stations) and sensors (one bit per variable-name code). As
    one table, a fan-out round checks every connection's rows at once (``prepare``).

    Rows freed by a connection's end (from whatever thread drops it) are zeroed when taken
    again, on the event loop: the table may have been reallocated meanwhile."""

    __slots__ = ("stations", "sensors", "free", "used")

    def __init__(self) -> None:
        self.stations = np.zeros((0, 0), np.uint8)
        self.sensors = np.zeros((0, 0), np.uint8)
        self.free: list[int] = []
        self.used = 0

    def take(self) -> int:
        if self.free:
            row = self.free.pop()
            self.stations[row] = 0
            self.sensors[row] = 0
            return row
        row = self.used
        self.used += 1
        if row >= len(self.stations):
            self.stations = _grown(self.stations, max(16, 2 * row), self.stations.shape[1])
            self.sensors = _grown(self.sensors, max(16, 2 * row), self.sensors.shape[1])
        return row

    def release(self, row: int) -> None:
        self.free.append(row)

    def fit(self, stations: int, sensors: int) -> None:
        """Room for bits ``0 .. stations - 1`` and ``0 .. sensors - 1``."""
        width = (stations >> 3) + 1
        if width > self.stations.shape[1]:
            self.stations = _grown(self.stations, len(self.stations), max(width, 64))
        width = (sensors >> 3) + 1
        if width > self.sensors.shape[1]:
            self.sensors = _grown(self.sensors, len(self.sensors), max(width, 8))


def _grown(table: npt.NDArray[np.uint8], rows: int, width: int) -> npt.NDArray[np.uint8]:
    out = np.zeros((rows, max(width, table.shape[1])), np.uint8)
    out[: len(table), : table.shape[1]] = table
    return out


_DESCRIBED: weakref.WeakKeyDictionary[Registry, _Described] = weakref.WeakKeyDictionary()


def _described(reg: Registry) -> _Described:
    found = _DESCRIBED.get(reg)
    if found is None:
        found = _DESCRIBED[reg] = _Described()
    return found


def _mark(
    bits: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.int64],
    numbers: npt.NDArray[np.int64],
    on: bool = True,
) -> None:
    """Set (or with ``on=False`` clear) bit ``numbers[k]`` of row ``rows[k]`` (several may
    share a byte)."""
    bit = np.left_shift(1, numbers & 7).astype(np.uint8)
    if on:
        np.bitwise_or.at(bits, (rows, numbers >> 3), bit)
    else:
        np.bitwise_and.at(bits, (rows, numbers >> 3), ~bit)


def _unset(
    bits: npt.NDArray[np.uint8], rows: npt.NDArray[np.int64], numbers: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Whether bit ``numbers[k]`` of row ``rows[k]`` is clear (broadcast)."""
    result: npt.NDArray[np.bool_] = ((bits[rows, numbers >> 3] >> (numbers & 7)) & 1) == 0
    return result


# A connection's metadata for its rows of a fan-out round, computed for all the round's
# connections at once (``prepare``): (first, last, registry version, message or None,
# stations, sensors), its bits already set. The round's first data message for the connection
# (starting at cursor ``first``, ending at ``last`` or before) takes it. If anything else asks
# first (an item past the round's rows: queued items merged; or the registry changed), its
# bits are cleared and the metadata is computed item by item, as without a plan. A round's
# items queued instead of written (the connection's buffer full) still take it: the first of
# them is the first sent. A tuple: a thousand are made a round.
Plan = tuple[int, int, int, bytes | None, list[int], list[int]]
_NONE: list[int] = []


class Metadata:
    """What one connection has described so far: stations and sensors, as its row of the
    registry's ``_Described`` table (taken when it first describes something). Checking an
    item costs a few operations per distinct station and sensor in it, not per row; a message
    that describes every station of an item and no sensor is the item's, shared by the
    sessions that need it. In a fan-out round that stacked its subscribers' masks, the check
    is made for every connection at once (``prepare``, a ``Plan`` per connection)."""

    __slots__ = ("_reg", "_units", "enabled", "_table", "_row", "_plan", "__weakref__")

    def __init__(self, reg: Registry, units: UnitSystem, enabled: bool) -> None:
        self._reg = reg
        self._units = units
        self.enabled = enabled
        self._table = _described(reg)
        self._row = -1
        self._plan: Plan | None = None
        if enabled:  # build the shared station tables now, not in the first fan-out round
            _Stations.of(reg)

    @property
    def row(self) -> int:
        """This connection's row of the table (taken now if it has none)."""
        row = self._row
        if row < 0:
            table = self._table
            row = self._row = table.take()
            weakref.finalize(self, table.release, row)
        return row

    def _fresh(self, keys: _ItemKeys) -> list[int]:
        """The item's stations this connection has not described, now marked described (in
        order of appearance; when that is all of them, ``keys.stations`` itself)."""
        if not keys.stations:
            return keys.stations
        row, table = self.row, self._table
        numbers = keys.station_array
        table.fit(int(numbers.max()), 0)
        rows = np.full(len(numbers), row, np.int64)
        fresh = numbers[_unset(table.stations, rows, numbers)]
        if not len(fresh):
            return []
        _mark(table.stations, rows[: len(fresh)], fresh)
        return keys.stations if len(fresh) == len(numbers) else fresh.tolist()

    def _withdraw_plan(self) -> None:
        plan, self._plan = self._plan, None
        if plan is None:
            return
        table, row = self._table, self._row
        stations, sensors = plan[4], plan[5]
        if stations:
            numbers = np.array(stations, np.int64)
            _mark(table.stations, np.full(len(numbers), row, np.int64), numbers, on=False)
        if sensors:
            codes = np.array(sensors, np.int64)
            _mark(table.sensors, np.full(len(codes), row, np.int64), codes, on=False)

    def take_plan(self, first: int, last: int) -> Plan | None:
        """The round's plan (``prepare``) for the rows from cursor ``first`` to ``last``, taken
        (its message, ``plan[3]``, is then this connection's to send before them); None if
        there is none for them (``message`` computes it then). ``put_back`` undoes it."""
        plan = self._plan
        if plan is None or plan[0] != first or last > plan[1] or plan[2] != self._reg.version:
            return None
        self._plan = None
        return plan

    def put_back(self, plan: Plan) -> None:
        self._plan = plan

    def message(self, item: Item) -> bytes | None:
        """The metadata message the rows of ``item`` need first, or None."""
        if not self.enabled or item.series is None or not len(item.series):
            return None
        if self._plan is not None:
            # the round's first item, or its first part (the round's rows in several items)
            plan = self.take_plan(item.first, item.last)
            if plan is not None:
                return plan[3]
            self._withdraw_plan()
        reg = self._reg
        keys = _item_keys(reg, item)
        fresh = self._fresh(keys)
        new_sensors = self._fresh_sensors(keys.sensors)
        if not new_sensors:
            if not fresh:
                return None
            if fresh is keys.stations:
                return keys.all_stations_message(reg)
        units = self._units_of(new_sensors, lambda code: _series_of_sensor(reg, item, code))
        if not units and not fresh:
            return None
        return _metadata_message(reg, units, sorted(fresh))

    def _fresh_sensors(self, codes: list[int]) -> list[int]:
        """The sensors among ``codes`` this connection has not described, now marked."""
        if not codes:
            return []
        row, table = self.row, self._table
        numbers = np.array(codes, np.int64)
        table.fit(0, int(numbers.max()))
        rows = np.full(len(numbers), row, np.int64)
        fresh = numbers[_unset(table.sensors, rows, numbers)]
        if len(fresh):
            _mark(table.sensors, rows[: len(fresh)], fresh)
        out: list[int] = fresh.tolist()
        return out

    def _units_of(self, codes: list[int], series_of: Callable[[int], int]) -> list[dict[str, str]]:
        """The ``units`` entries of these sensors (each described by one of its series)."""
        reg = self._reg
        units: list[dict[str, str]] = []
        for code in sorted(codes):
            rec = reg.series_by_pk.get(series_of(code))
            var = reg.variables_by_pk.get(rec.variable_pk) if rec is not None else None
            if rec is not None and var is not None:
                entry = var.entry
                label = unit_label(target_unit(self._units, entry.kind, entry.unit))
                units.append({"sensor": rec.variable_id, "unit": label})
        return units


def metadata_of(state: object) -> Metadata | None:
    """A feed subscription's ``Metadata``: its state's ``meta`` (the feed's per-connection
    sender), or its state itself."""
    meta = getattr(state, "meta", state)
    return meta if isinstance(meta, Metadata) else None


def prepare(batch: Batch, cells: Cells) -> None:
    """The metadata check of every live feed connection of a fan-out round at once: which of
    the stations and sensors in each one's rows it has not described, over a (connections x
    the batch's distinct stations) matrix instead of a loop per connection (the check was a
    third of a round for a thousand sessions). Each connection gets a ``Plan``: its message, or
    None (``Metadata.message`` takes it)."""
    subs = cells.subs
    bounds = cells.bounds
    picked: list[int] = []
    metas: list[Metadata] = []
    for i, sub in enumerate(subs):
        if bounds[i] == bounds[i + 1]:  # (no rows: most sessions of a filtered round)
            continue
        meta = metadata_of(sub.state)
        if (
            meta is not None
            and meta.enabled
            and sub.sink is not None
            and not sub.overflowed
            and sub.closed is None
        ):
            if meta._plan is not None:
                meta._withdraw_plan()
            picked.append(i)
            metas.append(meta)
    if not metas:
        return
    reg = metas[0]._reg
    if any(meta._reg is not reg for meta in metas):
        return
    try:
        _plan_round(batch, cells, reg, picked, metas)
    except BaseException:
        for meta in metas:  # nothing marked: each computes its own, item by item
            meta._plan = None
        raise


def _plan_round(
    batch: Batch, cells: Cells, reg: Registry, picked: list[int], metas: list[Metadata]
) -> None:
    table = _described(reg)
    stations = _Stations.of(reg)
    s = batch.series
    row_station, row_sensor = _station_and_sensor(reg, s)
    table.fit(len(stations.reps), len(reg.name_list))
    owners = np.array([meta.row for meta in metas], np.int64)
    # the cells of the connections picked, as (connection k, row)
    bounds = cells.bounds
    edges = np.array(bounds, np.int64)
    counts = edges[1:] - edges[:-1]
    k_of_sub = np.full(len(cells.subs), -1, np.int64)
    k_of_sub[np.asarray(picked, np.int64)] = np.arange(len(metas))
    k_of_cell = np.repeat(k_of_sub, counts)
    keep = k_of_cell >= 0
    cell_k = k_of_cell[keep]
    cell_row = cells.rows[keep]
    st_k, st_n = _unset_pairs(table.stations, owners, cell_k, cell_row, row_station, len(metas))
    se_k, se_n = _unset_pairs(table.sensors, owners, cell_k, cell_row, row_sensor, len(metas))
    version = reg.version
    firsts, lasts = cells.firsts, cells.lasts
    if not len(st_k) and not len(se_k):
        for i, meta in zip(picked, metas, strict=True):
            meta._plan = (firsts[i], lasts[i], version, None, _NONE, _NONE)
        return
    stations.describe(reg, np.unique(st_n).tolist())  # every fresh station's JSON, at once
    json = stations.json
    st_at = np.searchsorted(st_k, np.arange(len(metas) + 1)).tolist()
    # each connection's message if it describes no sensor: all joined in one call
    plain = joined_lists(
        json,
        st_n.astype(np.int64, copy=False).tobytes(),
        st_at[:-1],
        st_at[1:],
        _NO_UNITS,
        b",",
        b"]}",
    )
    se_at = np.searchsorted(se_k, np.arange(len(metas) + 1)).tolist()
    st_list, se_list = st_n.tolist(), se_n.tolist()
    row_sensors: list[int] | None = None
    for k, meta in enumerate(metas):
        i = picked[k]
        a, b = st_at[k], st_at[k + 1]
        c, d = se_at[k], se_at[k + 1]
        if a == b and c == d:
            meta._plan = (firsts[i], lasts[i], version, None, _NONE, _NONE)
            continue
        fresh = st_list[a:b]
        codes = se_list[c:d]
        units: list[dict[str, str]] = []
        if codes:
            if row_sensors is None:
                row_sensors = row_sensor.tolist()
            first_row: dict[int, int] = {}
            for r in cells.listed[bounds[i] : bounds[i + 1]]:
                first_row.setdefault(row_sensors[r], r)
            units = meta._units_of(codes, functools.partial(_series_at, s, first_row))
        # (sensors without a variable: nothing to say, but their bits are set)
        if units:
            message: bytes | None = _stations_message(json, units, fresh)
        else:
            message = plain[k] if fresh else None
        meta._plan = (firsts[i], lasts[i], version, message, fresh, codes)
    _mark(table.stations, owners[st_k], st_n)
    _mark(table.sensors, owners[se_k], se_n)


def _series_at(series: npt.NDArray[np.int64], rows: dict[int, int], code: int) -> int:
    return int(series[rows[code]])


def _unset_pairs(
    bits: npt.NDArray[np.uint8],
    owners: npt.NDArray[np.int64],
    cell_k: npt.NDArray[np.int64],
    cell_row: npt.NDArray[np.int64],
    row_number: npt.NDArray[np.int64],
    connections: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Of each connection ``k``'s cells' numbers (stations or sensors of the batch's rows,
    ``row_number``; -1: none), those not set in its row ``owners[k]`` of ``bits``: (k,
    number) pairs, sorted by both."""
    distinct, inverse = np.unique(row_number, return_inverse=True)
    wanted = np.zeros((connections, len(distinct)), np.bool_)
    wanted[cell_k, inverse.reshape(-1)[cell_row]] = True
    if len(distinct) and distinct[0] < 0:
        wanted[:, 0] = False
    ks, us = np.nonzero(wanted)
    numbers = distinct[us]
    fresh = _unset(bits, owners[ks], numbers)
    return ks[fresh].astype(np.int64), numbers[fresh]


def round_frames(items: list[Item], meta: Metadata, max_rows: int) -> bytes:
    """One connection's messages of a fan-out round as WebSocket frames, ready to write (see
    ``faces/websocket.py``): each data message preceded by the metadata it needs. A data
    message's frame is made once per item and kept on it, so the sessions that share an item
    (their rows agree) share its frame too; merged items (a session behind) are framed anew."""
    if len(items) == 1:
        item = items[0]
        frame = item.frame
        if frame is None:
            frame = item.frame = text_frame(item.data)
        described = meta.message(item)
        return frame if described is None else text_frame(described) + frame
    parts: list[bytes] = []
    for item in merge_items(items, max_rows):
        described = meta.message(item)
        if described is not None:
            parts.append(text_frame(described))
        frame = item.frame
        if frame is None:
            frame = item.frame = text_frame(item.data)
        parts.append(frame)
    return b"".join(parts)
