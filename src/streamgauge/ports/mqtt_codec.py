"""MQTT messages to observation rows, and the reasons a message is rejected (pure: no I/O, no
clock; the arrival time is an argument).

Topics, under a prefix (``streamgauge`` by default)::

    PREFIX/{project}/{device}/{variable}   one observation: a JSON number (timed on arrival)
                                           or {"time": ..., "value": ...[, "set": ...]}
    PREFIX/{project}/observations          native rows: a JSON array, or NDJSON
    PREFIX/{project}/errors                where rejected messages are reported (not read)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec

from streamgauge.core import ingest
from streamgauge.domain.errors import StreamgaugeError

# The reasons a message is rejected: the ``reason`` label of streamgauge_mqtt_messages_total.
BAD_TOPIC = "bad_topic"
NOT_JSON = "not_json"
BAD_VALUE = "bad_value"
BAD_TIME = "bad_time"
BAD_ROWS = "bad_rows"
UNKNOWN_PROJECT = "unknown_project"
UNKNOWN_DEVICE = "unknown_device"
UNKNOWN_VARIABLE = "unknown_variable"
CONFLICT = "conflict"
TOO_LARGE = "too_large"
INTERNAL = "internal"
REASONS = (
    BAD_TOPIC,
    NOT_JSON,
    BAD_VALUE,
    BAD_TIME,
    BAD_ROWS,
    UNKNOWN_PROJECT,
    UNKNOWN_DEVICE,
    UNKNOWN_VARIABLE,
    CONFLICT,
    TOO_LARGE,
    INTERNAL,
)
# A row error's field (core.ingest.resolve) -> the reason.
FIELD_REASONS = {
    "device": UNKNOWN_DEVICE,
    "variable": UNKNOWN_VARIABLE,
    "time": BAD_TIME,
    "value": BAD_VALUE,
}


class One(msgspec.Struct, forbid_unknown_fields=True):
    """The object form of a one-observation message."""

    value: float | str | None
    time: Annotated[datetime, msgspec.Meta(tz=True)] | int | None = None
    set: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None


_one = msgspec.json.Decoder(One)
_any = msgspec.json.Decoder()
_BAD = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


@dataclass(frozen=True, slots=True)
class Decoded:
    project: str
    rows: list[ingest.Row]
    arrival: bool  # timed on arrival: the rows' time is the message's arrival time


@dataclass(frozen=True, slots=True)
class Rejected:
    project: str | None  # None: the topic names none
    reason: str  # one of REASONS
    message: str


def subscriptions(prefix: str, group: str | None = None) -> list[str]:
    """The topic filters to subscribe to (through ``$share/group/`` if a group is given). The
    errors topic is not among them: the bridge never reads its own reports."""
    share = f"$share/{group}/" if group else ""
    return [f"{share}{prefix}/+/+/+", f"{share}{prefix}/+/observations"]


def errors_topic(prefix: str, project: str) -> str:
    return f"{prefix}/{project}/errors"


def split(topic: str, prefix: str) -> tuple[str, str | None, str | None] | None:
    """(project, device, variable) of a one-observation topic, (project, None, None) of an
    observations topic, None for any other topic."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    if len(parts) == 2 and parts[0] and parts[1] == "observations":
        return parts[0], None, None
    return None


def decode(
    topic: str, payload: bytes, *, prefix: str, arrival_ms: int, max_errors: int = 100
) -> Decoded | Rejected:
    """The rows of one message, or why it is rejected."""
    where = split(topic, prefix)
    if where is None:
        return Rejected(None, BAD_TOPIC, f"topic {topic!r} is not one streamgauge reads")
    project, device, variable = where
    if device is None or variable is None:
        return _rows(project, payload, max_errors)
    try:
        raw = _any.decode(payload)
    except msgspec.ValidationError as exc:
        return Rejected(project, BAD_VALUE, f"not a value streamgauge can store: {exc}")
    except _BAD as exc:
        return Rejected(project, NOT_JSON, f"the payload is not JSON: {_reason(exc)}")
    if isinstance(raw, bool) or not isinstance(raw, int | float | dict):
        return Rejected(
            project,
            BAD_VALUE,
            f"expected a JSON number or an object with time and value, got {_kind(raw)}",
        )
    if isinstance(raw, dict):
        try:
            one = _one.decode(payload)
        except msgspec.ValidationError as exc:
            text = str(exc)
            reason = BAD_TIME if "$.time" in text or "$.set" in text else BAD_VALUE
            return Rejected(project, reason, text)
        stamp = one.time
        row = ingest.Row(
            device, variable, arrival_ms if stamp is None else stamp, one.value, one.set
        )
        return Decoded(project, [row], stamp is None)
    return Decoded(project, [ingest.Row(device, variable, arrival_ms, float(raw))], True)


def _rows(project: str, payload: bytes, max_errors: int) -> Decoded | Rejected:
    ndjson = not payload.lstrip()[:1] == b"["
    try:
        rows = ingest.decode(payload, ndjson=ndjson, max_errors=max_errors)
    except StreamgaugeError as exc:
        reason = NOT_JSON if exc.message.startswith("malformed JSON") else BAD_ROWS
        return Rejected(project, reason, describe(exc))
    if not rows:
        return Rejected(project, BAD_ROWS, "the message holds no observations")
    return Decoded(project, rows, False)


def describe(exc: StreamgaugeError) -> str:
    """An error's message with the first few of its details."""
    parts = []
    for d in exc.details[:5]:
        where = " ".join(f"{k} {d[k]}" for k in ("index", "line", "field") if k in d)
        parts.append(f"{where}: {d.get('reason', '')}" if where else str(d.get("reason", "")))
    return exc.message + (" (" + "; ".join(parts) + ")" if parts else "")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "invalid UTF-8"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
