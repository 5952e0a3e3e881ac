"""Aggregates of series over calendar buckets: the pure part (no I/O, no clock).

* ``parse_every``, ``parse_aggs``, ``parse_tz``: the query parameters ``every``, ``agg``, ``tz``.
* ``Calendar``: the buckets of ``every`` milliseconds, aligned to the UTC epoch or, in a time
  zone, to local midnight (a day is then 23, 24 or 25 hours; a bucket shorter than a day is
  counted in elapsed time from local midnight, and the day's last one ends at the next
  midnight; ``Nd`` buckets start at local midnights of days whose number since 1970-01-01 is a
  multiple of N).
* ``plan``: given one series' hour summaries, which hours are whole inside a bucket and the read
  range (a whole hour is answered by its summary; the others, by their rows), and where a page
  of at most ``limit`` buckets ends.
* ``combine``: summaries and rows to buckets (count, sum, min, max, first, last per bucket).
* ``render``: the requested aggregates of a bucket in a unit (an affine map ``a * x + b``:
  ``sum`` becomes ``a * sum + b * count``, so offset units such as degC -> degF are right).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from streamgauge.domain.errors import BadRequest
from streamgauge.domain.model import AGGREGATES
from streamgauge.domain.timeseries import HOUR_MS, I64, Points, Summaries
from streamgauge.wire.rows import format_time, from_ms, to_ms

DAY_MS = 86_400_000
UNIT_MS = {"s": 1000, "m": 60_000, "h": HOUR_MS, "d": DAY_MS}
MAX_EVERY_MS = 3660 * DAY_MS  # ten years
DEFAULT_AGGS = ("mean", "min", "max", "count")
SITE = "site"
_EVERY = re.compile(r"^([1-9][0-9]{0,9})([smhd])$")
_EPOCH_ORD = date(1970, 1, 1).toordinal()
_LAST_ORD = date.max.toordinal()
_FIRST_MS = -62135596800000  # 0001-01-01T00:00:00Z
_LAST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_SPAN_MS = 4000 * DAY_MS  # times within this span: one table of midnights from first to last
_GAP_MS = 64 * DAY_MS  # further apart: a table around each run of times closer than this


def _bad(field: str, reason: str, message: str) -> BadRequest:
    return BadRequest(message, [{"in": "query", "field": field, "reason": reason}])


def parse_every(text: str) -> int:
    """``every`` (``30s``, ``15m``, ``1h``, ``1d``) in milliseconds."""
    found = _EVERY.match(text.strip())
    if found is None:
        raise _bad("every", "a whole number and a unit: s, m, h or d (e.g. 1h)", "bad every")
    ms = int(found.group(1)) * UNIT_MS[found.group(2)]
    if ms > MAX_EVERY_MS:
        raise _bad("every", "at most 3660d", "bad every")
    return ms


def parse_aggs(text: str | None) -> tuple[str, ...]:
    """``agg``: a comma list of ``AGGREGATES`` (default ``mean,min,max,count``)."""
    if text is None:
        return DEFAULT_AGGS
    out: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if name not in AGGREGATES:
            raise _bad(
                "agg", f"{part.strip()[:40]!r} is not one of {', '.join(AGGREGATES)}", "bad agg"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def parse_tz(text: str | None) -> ZoneInfo | str | None:
    """``tz``: None (UTC), ``site`` (each station's own zone) or an IANA zone name."""
    if text is None or text in ("UTC", "Z", "utc"):
        return None
    if text == SITE:
        return SITE
    zone = zone_named(text)
    if zone is None:
        raise _bad("tz", f"unknown time zone {text[:60]!r}: use an IANA name or site", "bad tz")
    return zone


def zone_named(name: str | None) -> ZoneInfo | None:
    """The IANA zone of that name, or None (no name, or not a zone)."""
    if not name or len(name) > 64 or not name.isascii() or name.startswith("/") or ".." in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def check_every(every: int, tz: object) -> None:
    """In a time zone, a bucket is at most a day or a whole number of days."""
    if tz is not None and every > DAY_MS and every % DAY_MS:
        raise _bad(
            "every",
            "with tz, every is at most 1d or a whole number of days",
            "bad every for a time zone",
        )


class Calendar:
    """The buckets of ``every`` ms in ``zone`` (None: UTC); see the module docstring."""

    def __init__(self, every: int, zone: ZoneInfo | None) -> None:
        self.every = every
        self.zone = zone
        self.days = every // DAY_MS if every % DAY_MS == 0 else 0
        # The bucket edges computed so far: the local midnights of every day (buckets shorter
        # than a day) or of every ``days``-th day from 1970-01-01, as day numbers (sorted,
        # unique) and times. Contiguous around every time asked about, not between times far
        # apart: a read whose rows span centuries costs the edges near its rows.
        self._step = self.days or 1
        self._ords: I64 = np.zeros(0, np.int64)
        self._starts: I64 = np.zeros(0, np.int64)

    def _local_ord(self, ms: int) -> int:
        assert self.zone is not None
        try:
            return from_ms(ms).astimezone(self.zone).date().toordinal()
        except OverflowError:  # within a day of year 1 or 9999
            return from_ms(ms).date().toordinal()

    def _midnight(self, ordinal: int) -> int:
        # Days past the calendar's ends (padding around years 1 and 9999) are a day apart.
        d = date.fromordinal(min(max(ordinal, 2), _LAST_ORD - 1))
        edge = to_ms(datetime(d.year, d.month, d.day, tzinfo=self.zone))
        return edge + (ordinal - d.toordinal()) * DAY_MS

    def _has(self, first: int, last: int) -> bool:
        """Whether the table holds every edge from day ``first`` to day ``last``."""
        i = int(np.searchsorted(self._ords, first))
        j = i + (last - first) // self._step
        return j < len(self._ords) and self._ords[i] == first and self._ords[j] == last

    def _cover(self, times: I64) -> None:
        """Make the table of bucket edges cover the bucket of each of ``times`` and the next
        one, for each run of times less than ``_GAP_MS`` apart (one run when they all lie
        within ``_SPAN_MS``)."""
        lo, hi = int(times.min()), int(times.max())
        if hi - lo <= _SPAN_MS:
            runs = [(lo, hi)]
        else:
            u = np.unique(times)
            cut = np.flatnonzero(np.diff(u) > _GAP_MS)
            firsts = u[np.concatenate(([0], cut + 1))].tolist()
            lasts = u[np.concatenate((cut, [len(u) - 1]))].tolist()
            runs = list(zip(firsts, lasts, strict=True))
        step = self._step
        need = []
        for a, b in runs:
            first, last = self._local_ord(a), self._local_ord(b)
            first -= (first - _EPOCH_ORD) % step + step
            last -= (last - _EPOCH_ORD) % step - 2 * step
            if not self._has(first, last):
                need.append(np.arange(first, last + 1, step, dtype=np.int64))
        if not need:
            return
        new = np.setdiff1d(np.concatenate(need), self._ords)
        ords = np.concatenate((self._ords, new))
        starts = np.concatenate(
            (self._starts, np.array([self._midnight(o) for o in new.tolist()], np.int64))
        )
        order = np.argsort(ords, kind="stable")
        self._ords, self._starts = ords[order], starts[order]

    def bounds(self, times: I64) -> tuple[I64, I64]:
        """Start and end (ms) of the bucket of each time."""
        e = self.every
        if self.zone is None:
            starts = times - times % e
            return starts, starts + e
        if not len(times):
            return times.copy(), times.copy()
        self._cover(times)
        table = self._starts
        i = np.searchsorted(table, times, side="right") - 1
        if self.days:
            return table[i], table[i + 1]
        day = table[i]
        starts = day + (times - day) // e * e
        return starts, np.minimum(starts + e, table[i + 1])

    def bound(self, t: int) -> tuple[int, int]:
        s, e = self.bounds(np.array([t], np.int64))
        return int(s[0]), int(e[0])

    def label(self, ms: int) -> str:
        """RFC 3339 of a bucket edge: ``Z`` in UTC, the zone's offset otherwise."""
        ms = min(max(ms, _FIRST_MS), _LAST_MS)  # a bucket edge past the calendar's ends
        if self.zone is None:
            return format_time(ms)
        try:
            local = from_ms(ms).astimezone(self.zone)
        except OverflowError:
            return format_time(ms)
        return local.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")


@dataclass(frozen=True, slots=True)
class Plan:
    """What one read of a series covers: hours answered by their summary (``whole``), the
    row ranges to read, the candidate bucket starts, and the page's end (``cut``: the start of
    the first bucket left for the next page, or the read's end)."""

    whole: np.ndarray[Any, np.dtype[np.bool_]]
    ranges: list[tuple[int, int, int]]
    cut: int
    more: bool  # buckets (maybe) remain at or after ``cut``


def plan(cal: Calendar, found: Summaries, series: int, lo: int, hi: int, limit: int) -> Plan:
    """Decide how to answer ``found`` (one series' summaries over [lo, hi)): at most ``limit``
    candidate buckets, ending at a bucket start."""
    u0 = found.hour * HOUR_MS
    u1 = u0 + HOUR_MS
    _, ends = cal.bounds(np.maximum(u0, lo))
    whole = (u1 <= ends) & (u0 >= lo) & (u1 <= hi)
    starts, _ = cal.bounds(np.maximum(u0, lo))
    candidates: list[int] = []
    cut = hi
    more = False
    last_hour = None
    for hour, w, st in zip(found.hour.tolist(), whole.tolist(), starts.tolist(), strict=True):
        if hour == last_hour:  # another QC flag set of the same hour
            continue
        last_hour = hour
        if w:
            points = [st]
        else:
            points = []
            t = max(hour * HOUR_MS, lo)
            stop = min((hour + 1) * HOUR_MS, hi)
            while t < stop:
                s, e = cal.bound(t)
                points.append(s)
                t = e
                if len(points) > limit + 1:
                    break
        for p in points:
            if candidates and p <= candidates[-1]:
                continue
            candidates.append(p)
            if len(candidates) > limit:
                cut = p
                more = True
                break
        if more:
            break
    ranges: list[tuple[int, int, int]] = []
    seen: set[int] = set()
    for hour, w in zip(found.hour.tolist(), whole.tolist(), strict=True):
        if w or hour in seen:
            continue
        seen.add(hour)
        a, b = max(hour * HOUR_MS, lo), min((hour + 1) * HOUR_MS, hi, cut)
        if a < b:
            ranges.append((series, a, b))
    return Plan(whole & (u1 <= cut), ranges, cut, more)


@dataclass(frozen=True, slots=True)
class Buckets:
    """Buckets of one series as columns."""

    start: I64
    end: I64
    n: I64
    sum: np.ndarray[Any, np.dtype[np.float64]]
    min: np.ndarray[Any, np.dtype[np.float64]]
    max: np.ndarray[Any, np.dtype[np.float64]]
    first: np.ndarray[Any, np.dtype[np.float64]]
    last: np.ndarray[Any, np.dtype[np.float64]]

    def __len__(self) -> int:
        return len(self.start)


def combine(cal: Calendar, found: Summaries, whole: np.ndarray[Any, Any], pts: Points) -> Buckets:
    """Buckets from whole-hour summaries (``found`` where ``whole``) and raw rows ``pts``."""
    s = found.take(whole)
    t0 = np.concatenate([s.hour * HOUR_MS, pts.time])
    n = np.concatenate([s.n, np.ones(len(pts), np.int64)])
    total = np.concatenate([s.sum, pts.value])
    lo = np.concatenate([s.min, pts.value])
    hi = np.concatenate([s.max, pts.value])
    ft = np.concatenate([s.first_time, pts.time])
    fv = np.concatenate([s.first_value, pts.value])
    lt = np.concatenate([s.last_time, pts.time])
    lv = np.concatenate([s.last_value, pts.value])
    starts, ends = cal.bounds(t0)
    if not len(starts):
        z = np.zeros(0, np.int64)
        f = np.zeros(0, np.float64)
        return Buckets(z, z, z, f, f, f, f, f)
    by_first = np.lexsort((ft, starts))
    by_last = np.lexsort((lt, starts))
    st = starts[by_first]
    new = np.ones(len(st), np.bool_)
    new[1:] = st[1:] != st[:-1]
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], len(st)) - 1
    return Buckets(
        st[heads],
        ends[by_first][heads],
        np.add.reduceat(n[by_first], heads),
        np.add.reduceat(total[by_first], heads),
        np.minimum.reduceat(lo[by_first], heads),
        np.maximum.reduceat(hi[by_first], heads),
        fv[by_first][heads],
        lv[by_last][tails],
    )


def render(
    b: Buckets, i: int, aggs: tuple[str, ...], scale: float, offset: float
) -> dict[str, Any]:
    """The aggregates of bucket ``i`` in the unit ``scale * x + offset`` of the stored one."""
    n = int(b.n[i])
    raw = {
        "mean": float(b.sum[i]) / n,
        "min": float(b.min[i] if scale >= 0 else b.max[i]),
        "max": float(b.max[i] if scale >= 0 else b.min[i]),
        "first": float(b.first[i]),
        "last": float(b.last[i]),
    }
    out: dict[str, Any] = {}
    identity = scale == 1.0 and offset == 0.0
    for name in aggs:
        if name == "count":
            out[name] = n
        elif name == "sum":
            v = float(b.sum[i])
            out[name] = v if identity else round(v * scale + offset * n, 6)
        else:
            v = raw[name]
            out[name] = v if identity else round(v * scale + offset, 6)
    return out
