"""The InfluxDB line protocol, decoded into points (pure: no I/O, no clock).

    measurement[,tag=value...] field=value[,field=value...] [timestamp]

Each line is parsed by ``line_protocol_parser`` (a C parser of the line protocol, on PyPI);
this module adds what the parser leaves to its caller: line numbers, the timestamp precision,
the device tag, value types, limits, and every bad line named (``LineErrors``), so a body is
taken whole or not at all.

Value types: floats as they are; integers (``3i``) and unsigned integers (``3u``) as floats;
booleans as 1.0 and 0.0; strings as strings. The measurement is not kept (a point's fields are
variables of the device its device tag names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from line_protocol_parser import LineFormatError, parse_line

from streamgauge.domain.model import ID_RE

# Nanoseconds per unit of each ``precision`` InfluxDB 1.x and 2.x accept.
PRECISIONS: dict[str, int] = {
    "ns": 1,
    "n": 1,
    "us": 1_000,
    "u": 1_000,
    "µ": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
MAX_LINE_BYTES = 64 * 1024
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
_NS_PER_MS = 1_000_000
MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z, as core.ingest
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z

Value = float | str


@dataclass(frozen=True, slots=True)
class Point:
    """One line: the device it names, its other tags, its fields and its time in ms (None: no
    timestamp, the server's clock decides)."""

    line: int  # 1-based line number in the body
    device: str
    tags: dict[str, str]
    fields: dict[str, Value]
    time_ms: int | None


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    reason: str
    text: str = ""  # the line (shortened), as InfluxDB quotes it

    def message(self) -> str:
        quoted = f"unable to parse '{self.text}': " if self.text else ""
        return f"line {self.line}: {quoted}{self.reason}"


class LineErrors(ValueError):
    """Bad lines of a body (at most ``max_errors``), in line order."""

    def __init__(self, errors: list[LineError]) -> None:
        self.errors = errors
        super().__init__(self.message())

    def message(self) -> str:
        return "; ".join(e.message() for e in self.errors)


def precision_ns(name: str | None) -> int:
    """Nanoseconds per timestamp unit of ``precision`` (None or empty: ns); ValueError if
    unknown."""
    if not name:
        return 1
    try:
        return PRECISIONS[name]
    except KeyError:
        allowed = "ns, us, ms, s (1.x also n, u, m, h)"
        raise ValueError(f"unknown precision {name!r}: use one of {allowed}") from None


def _short(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


def _value(v: object) -> Value | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, str):
        return v
    return None


def parse(
    body: bytes,
    *,
    precision: int = 1,
    device_tag: str = "device",
    check_ids: bool = False,
    max_errors: int = 100,
) -> list[Point]:
    """The points of a body, or ``LineErrors`` naming every bad line (up to ``max_errors``).

    ``precision``: nanoseconds per timestamp unit (``precision_ns``). ``check_ids``: device
    and field names must be valid ids (``model.ID_RE``), as they must be to create a device
    or variable."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = body[: exc.start].count(b"\n") + 1
        raise LineErrors([LineError(where, "invalid UTF-8")]) from None
    points: list[Point] = []
    errors: list[LineError] = []

    def bad(n: int, reason: str, raw: str = "") -> None:
        errors.append(LineError(n, reason, _short(raw)))

    for n, raw in enumerate(text.split("\n"), 1):
        if len(errors) >= max_errors:
            break
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if len(line) > MAX_LINE_BYTES:
            bad(n, f"the line is longer than {MAX_LINE_BYTES} characters")
            continue
        if "\x00" in line:
            bad(n, "a NUL character", line)
            continue
        try:
            parsed = parse_line(line)
        except LineFormatError as exc:
            bad(n, str(exc).rstrip(".").lower() or "invalid line", line)
            continue
        if parsed is None:
            continue
        tags: dict[str, str] = dict(parsed["tags"])
        device = tags.pop(device_tag, None)
        if device is None:
            bad(n, f"no {device_tag!r} tag (it names the device)", line)
            continue
        if check_ids and not ID_RE.match(device):
            bad(n, f"tag {device_tag}={device!r} is not a valid device id", line)
            continue
        long = [k for k, v in tags.items() if len(k) > MAX_TAG_KEY or len(v) > MAX_TAG_VALUE]
        if long:
            bad(n, f"tag {long[0][:40]!r}: keys up to {MAX_TAG_KEY}, values up to "
                f"{MAX_TAG_VALUE} characters", line)  # fmt: skip
            continue
        fields: dict[str, Value] = {}
        for key, raw_value in parsed["fields"].items():
            value = _value(raw_value)
            if value is None:
                bad(n, f"field {key!r}: not a finite number, a boolean or a string", line)
                break
            if check_ids and not ID_RE.match(key):
                bad(n, f"field {key!r} is not a valid variable id", line)
                break
            fields[key] = value
        else:
            stamp = parsed["time"]
            ms: int | None = None
            if stamp is not None:
                ms = (stamp * precision) // _NS_PER_MS
                if not MIN_MS <= ms <= MAX_MS:
                    bad(n, "timestamp out of range (years 1-9999)", line)
                    continue
            points.append(Point(n, device, tags, fields, ms))
    if errors:
        raise LineErrors(errors[:max_errors])
    return points
