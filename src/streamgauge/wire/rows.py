"""The native observation row and its times.

A row, as history reads, streams and ingest write it::

    {"cursor": 17, "device": "ws1", "variable": "air_temp", "set": 1,
     "time": "2026-11-23T12:00:00Z", "value": 4.5, "qc": []}

Ingest takes ``device``, ``variable``, ``time`` (RFC 3339 or epoch ms), ``value`` and an optional
``set``; the server adds ``cursor`` and ``qc``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streamgauge.wire.errors import WireError

ROW_FIELDS = ("cursor", "device", "variable", "set", "time", "value", "qc")
"""The keys of a row the server writes, in the order it writes them."""

INGEST_FIELDS = frozenset({"device", "variable", "set", "time", "value"})
"""The keys a row sent to ingest may have."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_time(ms: int) -> str:
    """RFC 3339 UTC, with milliseconds only when they are not zero."""
    dt = EPOCH + timedelta(milliseconds=ms)
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else text + "Z"


def to_ms(dt: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact: no float rounding)."""
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_time(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 time with ``Z`` or an offset; ``WireError`` else."""
    if len(text) > 64 or not text.isascii():
        raise WireError(f"not an RFC 3339 time: {text[:40]!r}", "time")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise WireError(f"not an RFC 3339 time: {text[:40]!r}", "time") from exc
    if dt.tzinfo is None:
        raise WireError(f"time {text!r} has no timezone (add Z or an offset)", "time")
    return to_ms(dt)


def from_ms(ms: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return EPOCH + timedelta(milliseconds=ms)
