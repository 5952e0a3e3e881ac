"""DT events without I/O: the 19 event types, one DT event into observation rows, and an
observation row back into a DT event.

How an event is stored (DESIGN section 1: a face only translates). Each event is one *event row*
of the device variable named like the event type; its value is:

====================================================  ==========================================
``temperature``, ``co2``, ``pressure`` (Pa),           a number: an ordinary observation of the
``touchCount``, ``objectPresentCount``,                catalog quantity (unit, QC, filters, every
``batteryStatus`` (percent)                            face); one row per temperature sample
``objectPresent``, ``waterPresent``, ``motion``,       the state string (TEXT)
``contact``, ``probeWireStatus``
``touch``                                              null
``humidity``, ``deskOccupancy``, ``networkStatus``,    compact JSON of the payload without
``connectionStatus``, ``ethernetStatus``,              ``updateTime`` (TEXT)
``cellularStatus``, ``labelsChanged``
====================================================  ==========================================

An event is ONE event row however many ``samples`` it has; every sample is also an ordinary
numeric observation (filters, QC, every other face), beside the event row:

* ``temperature``: one numeric row of variable ``temperature`` per sample (at its
  ``sampleTime``), and the event row in variable ``temperature.event`` (compact JSON: ``value``,
  ``samples`` with their times, ``isBackfilled``). A device that has such event rows is rendered
  from them only: its ``temperature`` rows are the samples, not events of their own. A device
  without (observations ingested on other faces) renders each ``temperature`` row as an event
  with one sample, as before.
* ``humidity``: the event row ``humidity`` (JSON with ``samples`` and ``isBackfilled``) and two
  numeric rows per sample, ``humidity.relativeHumidity`` (catalog ``humidity``, %) and
  ``humidity.temperature`` (catalog ``temperature``, degC).

``isBackfilled`` is decided when the event is published: true when the event's time is older
than the device's latest event of that type already stored (data delivered late from the
sensor's buffer), or when the publisher said so.

An event row renders back into the DT event with every key the SDK reads (``samples``,
``isBackfilled``, ``remarks``); ``updateTime`` and ``timestamp`` are the row's time with exactly six
fractional digits; ``eventId`` is a 20-character xid-shaped id derived from the row's time and
cursor, so the same row always has the same id. Rows whose value does not fit their event type
(for example text ingested into ``temperature`` on the native face) render as nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from streamgauge.core.batch import kept_json
from streamgauge.domain.errors import Invalid

if TYPE_CHECKING:
    from streamgauge.core.registry import Registry, SeriesRec
    from streamgauge.core.units import UnitSystem
    from streamgauge.domain.batch import Batch

__all__ = [
    "EVENT_TYPES",
    "Row",
    "dumps_ascii",
    "encode_rows",
    "event_id",
    "format_ts",
    "parse_event",
    "parse_ts",
    "ping_event",
    "render",
]

NUMBER = "number"  # value: float; the payload's one number under ``field``
INTEGER = "integer"  # as NUMBER, rendered as an int
STATE = "state"  # value: one of ``states``
NONE = "none"  # value: null
DOC = "doc"  # value: compact JSON of the payload without updateTime


@dataclass(frozen=True, slots=True)
class Spec:
    kind: str
    field: str = ""
    states: tuple[str, ...] = ()


PRESENCE = ("PRESENT", "NOT_PRESENT")
SPECS: Mapping[str, Spec] = {
    "touch": Spec(NONE),
    "temperature": Spec(NUMBER, "value"),
    "objectPresent": Spec(STATE, "state", PRESENCE),
    "humidity": Spec(DOC),
    "objectPresentCount": Spec(INTEGER, "total"),
    "touchCount": Spec(INTEGER, "total"),
    "waterPresent": Spec(STATE, "state", PRESENCE),
    "networkStatus": Spec(DOC),
    "batteryStatus": Spec(INTEGER, "percentage"),
    "labelsChanged": Spec(DOC),
    "connectionStatus": Spec(DOC),
    "ethernetStatus": Spec(DOC),
    "cellularStatus": Spec(DOC),
    "co2": Spec(INTEGER, "ppm"),
    "pressure": Spec(NUMBER, "pascal"),
    "motion": Spec(STATE, "state", ("MOTION_DETECTED", "NO_MOTION_DETECTED")),
    "deskOccupancy": Spec(DOC),
    "contact": Spec(STATE, "state", ("OPEN", "CLOSED")),
    "probeWireStatus": Spec(
        STATE,
        "state",
        (
            "INVALID_WIRE_CONFIGURATION",
            "INVALID_COEFFICIENT_CONFIGURATION",
            "TWO_WIRE",
            "THREE_WIRE",
            "FOUR_WIRE",
        ),
    ),
}
EVENT_TYPES: tuple[str, ...] = tuple(SPECS)

# The humidity event row holds JSON, so its variable is not the catalog's numeric "humidity".
HUMIDITY_EVENT_NAME = "humidity_event"
# A temperature event's row (JSON with its samples); its samples are rows of "temperature".
TEMPERATURE_EVENT = "temperature.event"
TEMPERATURE_EVENT_NAME = "temperature_event"
# Variables whose rows are events of another name: variable id -> event type.
EVENT_ROWS: Mapping[str, str] = {TEMPERATURE_EVENT: "temperature"}
# Numeric companions of a humidity event: (variable id, catalog name, payload key).
HUMIDITY_PARTS = (
    ("humidity.relativeHumidity", "humidity", "relativeHumidity"),
    ("humidity.temperature", "temperature", "temperature"),
)

# -- time -------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def format_ts(ms: int) -> str:
    """RFC 3339 UTC with exactly six fractional digits, as DT writes timestamps."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
        f"{dt.second:02d}.{ms % 1000:03d}000Z"
    )


def parse_ts(text: object, field: str) -> int:
    """Milliseconds of an RFC 3339 time (any fraction digits, ``Z`` or an offset)."""
    if not isinstance(text, str) or "T" not in text:
        raise _bad(field, "expected an RFC 3339 time such as 2024-05-29T10:34:03.970415Z")
    head, _, _ = text.partition(".")
    rest = text[len(head) :]
    if rest.startswith("."):  # cut the fraction to microseconds, keep the offset
        digits = len(rest) - len(rest[1:].lstrip("0123456789"))
        rest = rest[: min(digits, 7)] + rest[digits:]
    try:
        dt = datetime.fromisoformat(head + rest)
    except ValueError:
        raise _bad(field, f"{text!r} is not an RFC 3339 time") from None
    if dt.tzinfo is None:
        raise _bad(field, f"{text!r} has no time zone (add Z)")
    ms = (dt - _EPOCH) // _MS
    if not -62135596800000 <= ms <= 253402300799999:
        raise _bad(field, "time out of range")
    return int(ms)


def _bad(field: str, reason: str) -> Invalid:
    return Invalid(f"bad event: {field}: {reason}", [{"field": field, "reason": reason}])


# -- ids --------------------------------------------------------------------------------------

_B32 = "0123456789abcdefghijklmnopqrstuv"  # xid's alphabet (base32hex, lower case)


def _b32(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    chars = -(-len(data) * 8 // 5)
    return "".join(_B32[(n >> (5 * (chars - 1 - i))) & 31] for i in range(chars))


def event_id(time_ms: int, cursor: int) -> str:
    """A 20-character id shaped like DT's xids: 4 bytes of seconds, 8 bytes of cursor."""
    return _b32(((time_ms // 1000) & 0xFFFFFFFF).to_bytes(4, "big") + cursor.to_bytes(8, "big"))


def new_xid() -> str:
    """A random 20-character xid-shaped id (ids of devices, accounts, connectors, pings)."""
    return _b32(secrets.token_bytes(12))


# -- JSON -------------------------------------------------------------------------------------


def dumps_ascii(obj: Any) -> bytes:
    """Compact JSON with every non-ASCII character escaped (``ensure_ascii``): no byte the
    SDK's ``str.splitlines()`` could take for a line break (U+2028, U+0085, ...) survives.
    At its length (``kept_json``): a batch keeps its rows encoded so while it is fanned out."""
    out = kept_json(obj)
    if out.isascii():
        return out
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode()


# -- rendering --------------------------------------------------------------------------------


def render(event_type: str, value: object, ts: str) -> dict[str, Any] | None:
    """The ``data`` of a DT event from its stored value, or None if the value does not fit."""
    spec = SPECS.get(event_type)
    if spec is None:
        return None
    kind = spec.kind
    if kind == NONE:
        inner: dict[str, Any] = {}
    elif event_type == "temperature" and isinstance(value, str):
        doc = _doc(value)
        if doc is None or type(doc.get("value")) is not float:
            return None
        inner = {
            "value": doc["value"],
            "samples": [
                {"value": v, "sampleTime": format_ts(t)} for t, v in doc.get("samples", [])
            ],
            "isBackfilled": bool(doc.get("isBackfilled", False)),
        }
    elif kind in (NUMBER, INTEGER):
        if type(value) is not float:
            return None
        number: float | int = int(round(value)) if kind == INTEGER else value
        inner = {spec.field: number}
        if event_type == "temperature":
            inner["samples"] = [{"value": value, "sampleTime": ts}]
            inner["isBackfilled"] = False
    elif kind == STATE:
        if not isinstance(value, str):
            return None
        inner = {"state": value}
    else:
        doc = _doc(value)
        if doc is None:
            if event_type == "humidity" and type(value) is float:  # a bare RH ingested natively
                doc = {"temperature": None, "relativeHumidity": value}
            else:
                return None
        if event_type == "labelsChanged":
            return {
                "added": doc.get("added", {}),
                "modified": doc.get("modified", {}),
                "removed": doc.get("removed", []),
            }
        inner = _complete(event_type, doc, ts)
    inner["updateTime"] = ts
    return {event_type: inner}


def _doc(value: object) -> dict[str, Any] | None:
    if not isinstance(value, str) or not value.startswith("{"):
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _complete(event_type: str, doc: dict[str, Any], ts: str) -> dict[str, Any]:
    """A stored payload with every key the SDK requires (defaults for missing ones)."""
    if event_type == "humidity":
        t, rh = doc.get("temperature"), doc.get("relativeHumidity")
        samples = [
            {"temperature": st, "relativeHumidity": srh, "sampleTime": format_ts(sms)}
            for sms, st, srh in doc.get("samples", [])
        ]
        return {
            "temperature": t,
            "relativeHumidity": rh,
            "samples": samples or [{"temperature": t, "relativeHumidity": rh, "sampleTime": ts}],
            "isBackfilled": bool(doc.get("isBackfilled", False)),
        }
    table: dict[str, dict[str, Any]] = {
        "deskOccupancy": {"state": "NOT_OCCUPIED", "remarks": []},
        "networkStatus": {
            "signalStrength": 0,
            "rssi": 0,
            "cloudConnectors": [],
            "transmissionMode": "LOW_POWER_STANDARD_MODE",
        },
        "connectionStatus": {"connection": "OFFLINE", "available": []},
        "ethernetStatus": {"macAddress": "", "ipAddress": "", "errors": []},
        "cellularStatus": {"signalStrength": 0, "errors": []},
    }
    return {**table.get(event_type, {}), **doc}


@dataclass(frozen=True, slots=True)
class Row:
    """One observation row to ingest for an event: variable id, catalog name, time, value."""

    variable: str
    name: str  # the variable's catalog name (its unit and QC limits come from the catalog)
    time: int
    value: float | str | None


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    v = data.get(key)
    if type(v) is bool or not isinstance(v, int | float):
        raise _bad(f"{where}.{key}", "expected a number")
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        raise _bad(f"{where}.{key}", "expected a finite number")
    return f


def _time(data: Mapping[str, Any], key: str, where: str, default: int) -> int:
    if data.get(key) is None:
        return default
    return parse_ts(data[key], f"{where}.{key}")


def parse_event(
    event_type: str, data: object, now_ms: int, previous_ms: int | None = None
) -> list[Row]:
    """The rows to store for one published event ``{event_type: data}``; ``now_ms`` is used
    where the event has no ``updateTime``; ``previous_ms`` is the time of the device's latest
    stored event of this type (an older event is backfilled). Raises ``Invalid`` naming the
    bad field."""
    spec = SPECS.get(event_type)
    if spec is None:
        raise _bad("eventType", f"unknown event type {event_type!r}; one of {', '.join(SPECS)}")
    if not isinstance(data, dict):
        raise _bad(event_type, "expected a JSON object")
    t = _time(data, "updateTime", event_type, now_ms)
    kind = spec.kind
    if kind == NONE:
        return [Row(event_type, event_type, t, None)]
    if event_type == "temperature":
        return _parse_temperature(data, t, _backfilled(data, event_type, t, previous_ms))
    if kind in (NUMBER, INTEGER):
        return [Row(event_type, event_type, t, _number(data, spec.field, event_type))]
    if kind == STATE:
        state = data.get("state")
        if spec.states and state not in spec.states:
            raise _bad(f"{event_type}.state", f"expected one of {', '.join(spec.states)}")
        if not isinstance(state, str):
            raise _bad(f"{event_type}.state", "expected a string")
        return [Row(event_type, event_type, t, state)]
    return _parse_doc(event_type, data, t, previous_ms)


def _backfilled(data: dict[str, Any], where: str, t: int, previous_ms: int | None) -> bool:
    said = data.get("isBackfilled", False)
    if not isinstance(said, bool):
        raise _bad(f"{where}.isBackfilled", "expected true or false")
    return said or (previous_ms is not None and t < previous_ms)


def _parse_temperature(data: dict[str, Any], t: int, backfilled: bool) -> list[Row]:
    """A sample row per sample (``temperature``) and the event row (``temperature.event``)."""
    samples = data.get("samples")
    pairs: list[list[Any]] = []  # [time, value] of each sample
    if samples:
        if not isinstance(samples, list):
            raise _bad("temperature.samples", "expected a list")
        for i, s in enumerate(samples):
            where = f"temperature.samples[{i}]"
            if not isinstance(s, dict):
                raise _bad(where, "expected an object")
            pairs.append([_time(s, "sampleTime", where, t), _number(s, "value", where)])
    if data.get("value") is not None or not pairs:
        value = _number(data, "value", "temperature")
    else:  # the newest sample is the event's value
        value = max(pairs, key=lambda p: p[0])[1]
    if not pairs:
        pairs = [[t, value]]
    doc = {"value": value, "samples": pairs, "isBackfilled": backfilled}
    rows = [Row("temperature", "temperature", st, v) for st, v in pairs]
    return [*rows, Row(TEMPERATURE_EVENT, TEMPERATURE_EVENT_NAME, t, orjson.dumps(doc).decode())]


def _strings(v: object, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _bad(where, "expected a list of strings")
    return list(v)


def _str_map(v: object, where: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _bad(where, "expected an object of strings")
    return dict(v)


def _parse_doc(event_type: str, data: dict[str, Any], t: int, previous_ms: int | None) -> list[Row]:
    w = event_type
    doc: dict[str, Any]
    if event_type == "humidity":
        samples = data.get("samples") or [data]
        if not isinstance(samples, list):
            raise _bad("humidity.samples", "expected a list")
        rows: list[Row] = []
        triples: list[list[Any]] = []  # [time, temperature, relative humidity] per sample
        for i, s in enumerate(samples):
            where = "humidity" if s is data else f"humidity.samples[{i}]"
            if not isinstance(s, dict):
                raise _bad(where, "expected an object")
            # The SDK's HumiditySample writes "celsius" where the API says "temperature".
            temp_key = "temperature" if "temperature" in s else "celsius"
            st = t if s is data else _time(s, "sampleTime", where, t)
            temp, rh = _number(s, temp_key, where), _number(s, "relativeHumidity", where)
            triples.append([st, temp, rh])
            part = {"temperature": temp, "relativeHumidity": rh}
            rows += [Row(var, name, st, part[key]) for var, name, key in HUMIDITY_PARTS]
        if data is not samples[0] and "relativeHumidity" in data:  # the event's own values
            where = "humidity"
            temp_key = "temperature" if "temperature" in data else "celsius"
            temp, rh = _number(data, temp_key, where), _number(data, "relativeHumidity", where)
        else:  # the newest sample's
            _, temp, rh = max(triples, key=lambda p: p[0])
        doc = {
            "temperature": temp,
            "relativeHumidity": rh,
            "samples": triples,
            "isBackfilled": _backfilled(data, "humidity", t, previous_ms),
        }
        return [Row("humidity", HUMIDITY_EVENT_NAME, t, orjson.dumps(doc).decode()), *rows]
    if event_type == "labelsChanged":
        doc = {
            "added": _str_map(data.get("added", {}), f"{w}.added"),
            "modified": _str_map(data.get("modified", {}), f"{w}.modified"),
            "removed": _strings(data.get("removed", []), f"{w}.removed"),
        }
    elif event_type == "deskOccupancy":
        state = data.get("state")
        if state not in ("OCCUPIED", "NOT_OCCUPIED"):
            raise _bad(f"{w}.state", "expected OCCUPIED or NOT_OCCUPIED")
        doc = {"state": state, "remarks": _strings(data.get("remarks", []), f"{w}.remarks")}
    elif event_type == "networkStatus":
        ccons = data.get("cloudConnectors", [])
        if not isinstance(ccons, list):
            raise _bad(f"{w}.cloudConnectors", "expected a list")
        out = []
        for i, c in enumerate(ccons):
            where = f"{w}.cloudConnectors[{i}]"
            if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                raise _bad(where, "expected an object with an id")
            out.append(
                {
                    "id": c["id"],
                    "signalStrength": int(_number(c, "signalStrength", where)),
                    "rssi": int(_number(c, "rssi", where)),
                }
            )
        mode = data.get("transmissionMode", "LOW_POWER_STANDARD_MODE")
        if mode not in ("LOW_POWER_STANDARD_MODE", "HIGH_POWER_BOOST_MODE"):
            raise _bad(f"{w}.transmissionMode", "unknown transmission mode")
        doc = {
            "signalStrength": int(_number(data, "signalStrength", w)),
            "rssi": int(_number(data, "rssi", w)),
            "cloudConnectors": out,
            "transmissionMode": mode,
        }
    elif event_type == "connectionStatus":
        conn = data.get("connection")
        if conn not in ("SDS", "ETHERNET", "CELLULAR", "OFFLINE"):
            raise _bad(f"{w}.connection", "expected SDS, ETHERNET, CELLULAR or OFFLINE")
        doc = {
            "connection": conn,
            "available": _strings(data.get("available", []), f"{w}.available"),
        }
    elif event_type == "ethernetStatus":
        mac, ip = data.get("macAddress", ""), data.get("ipAddress", "")
        if not isinstance(mac, str) or not isinstance(ip, str):
            raise _bad(w, "macAddress and ipAddress must be strings")
        doc = {"macAddress": mac, "ipAddress": ip, "errors": _errors(data, w)}
    else:  # cellularStatus
        doc = {
            "signalStrength": int(_number(data, "signalStrength", w)),
            "errors": _errors(data, w),
        }
    return [Row(event_type, event_type, t, orjson.dumps(doc).decode())]


def _errors(data: dict[str, Any], where: str) -> list[Any]:
    errors = data.get("errors") or []
    if not isinstance(errors, list):
        raise _bad(f"{where}.errors", "expected a list")
    return errors


# -- whole events and batches -----------------------------------------------------------------


def event_obj(
    project: str, device: str, variable: str, value: object, ms: int, cursor: int
) -> dict[str, Any] | None:
    """The DT event of a row of an event variable (``temperature.event`` rows are
    temperature events), or None if the row does not fit its type."""
    event_type = EVENT_ROWS.get(variable, variable)
    ts = format_ts(ms)
    data = render(event_type, value, ts)
    if data is None:
        return None
    return {
        "eventId": event_id(ms, cursor),
        "targetName": f"projects/{project}/devices/{device}",
        "eventType": event_type,
        "data": data,
        "timestamp": ts,
    }


def ping_event(project: str, now_ms: int) -> dict[str, Any]:
    return {
        "eventId": new_xid(),
        "targetName": f"projects/{project}",
        "eventType": "ping",
        "data": None,
        "timestamp": format_ts(now_ms),
    }


def encode_rows(batch: Batch, registry: Registry, units: UnitSystem) -> list[bytes]:
    """Each row of ``batch`` as the compact ASCII JSON of its DT event (b"" for rows that are
    not DT event rows). Values are stored canonical, which is what DT reports."""
    series = registry.series_by_pk
    projects = registry.projects_by_pk
    out: list[bytes] = []
    for cursor, s, t, v in zip(
        batch.cursors.tolist(),
        batch.series.tolist(),
        batch.times.tolist(),
        batch.values,
        strict=True,
    ):
        rec = series.get(s)
        proj = projects.get(rec.project_pk) if rec is not None else None
        if rec is None or proj is None or event_type_of(registry, rec) is None:
            out.append(b"")
            continue
        obj = event_obj(proj.doc.id, rec.device_id, rec.variable_id, v, t, cursor)
        out.append(b"" if obj is None else dumps_ascii(obj))
    return out


def event_type_of(registry: Registry, rec: SeriesRec) -> str | None:
    """The DT event type a series' rows render as, or None: rows of other variables, and the
    ``temperature`` rows of a device that has temperature event rows (they are its samples)."""
    vid = rec.variable_id
    if vid in EVENT_ROWS:
        return EVENT_ROWS[vid]
    if vid not in SPECS:
        return None
    if vid == "temperature" and (rec.device_pk, TEMPERATURE_EVENT) in registry.variables:
        return None
    return vid


def event_variables(types: Iterable[str]) -> frozenset[str]:
    """The variables whose rows may render as events of ``types``."""
    wanted = set(types)
    return frozenset(wanted | {v for v, t in EVENT_ROWS.items() if t in wanted})


def latest_by_type(
    rows: Iterable[tuple[str, int, int, object]],
) -> dict[str, tuple[int, int, object]]:
    """The latest (time, cursor, value) per event type among ``(type, time, cursor, value)``."""
    best: dict[str, tuple[int, int, object]] = {}
    for et, t, c, v in rows:
        have = best.get(et)
        if have is None or (t, c) > (have[0], have[1]):
            best[et] = (t, c, v)
    return best
