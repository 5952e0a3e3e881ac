"""The pure aggregate core: calendars (UTC, DST days), the plan of whole hours and row ranges,
and buckets combined from summaries and rows, checked against a brute force."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core import aggregate
from streamgauge.domain.errors import BadRequest
from streamgauge.domain.timeseries import HOUR_MS, Points, summaries_from_rows, summarize

DENVER = ZoneInfo("America/Denver")
KOLKATA = ZoneInfo("Asia/Kolkata")  # +05:30: local midnight is not on a UTC hour
EPOCH_ORD = datetime(1970, 1, 1).toordinal()


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_parse_every_and_aggs() -> None:
    assert aggregate.parse_every("30s") == 30_000
    assert aggregate.parse_every("15m") == 900_000
    assert aggregate.parse_every("1h") == HOUR_MS
    assert aggregate.parse_every("2d") == 2 * 86_400_000
    for bad in ("", "0h", "1w", "h", "1.5h", "-1h", "99999999999d"):
        with pytest.raises(BadRequest) as err:
            aggregate.parse_every(bad)
        assert err.value.details[0]["field"] == "every"
    assert aggregate.parse_aggs(None) == ("mean", "min", "max", "count")
    assert aggregate.parse_aggs("sum,first,last,sum") == ("sum", "first", "last")
    with pytest.raises(BadRequest):
        aggregate.parse_aggs("median")


def test_parse_tz() -> None:
    assert aggregate.parse_tz(None) is None
    assert aggregate.parse_tz("site") == "site"
    assert aggregate.parse_tz("America/Denver") == DENVER
    for bad in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime", "x" * 200):
        with pytest.raises(BadRequest) as err:
            aggregate.parse_tz(bad)
        assert err.value.details[0]["field"] == "tz"
    with pytest.raises(BadRequest):
        aggregate.check_every(36 * HOUR_MS, DENVER)
    aggregate.check_every(36 * HOUR_MS, None)


def test_denver_days_are_23_24_and_25_hours() -> None:
    cal = aggregate.Calendar(86_400_000, DENVER)
    spring = ms(datetime(2024, 3, 10, 12, tzinfo=DENVER))
    normal = ms(datetime(2024, 6, 1, 12, tzinfo=DENVER))
    fall = ms(datetime(2024, 11, 3, 12, tzinfo=DENVER))
    starts, ends = cal.bounds(np.array([spring, normal, fall], np.int64))
    assert ((ends - starts) // HOUR_MS).tolist() == [23, 24, 25]
    assert cal.label(int(starts[0])) == "2024-03-10T00:00:00-07:00"
    assert cal.label(int(starts[1])) == "2024-06-01T00:00:00-06:00"
    assert cal.label(int(ends[2])) == "2024-11-04T00:00:00-07:00"


def test_hour_buckets_on_the_fall_back_day_are_25() -> None:
    cal = aggregate.Calendar(HOUR_MS, DENVER)
    day0 = ms(datetime(2024, 11, 3, tzinfo=DENVER))
    times = np.arange(day0, day0 + 25 * HOUR_MS, 60_000, dtype=np.int64)
    starts, ends = cal.bounds(times)
    assert len(np.unique(starts)) == 25
    assert (ends - starts == HOUR_MS).all()


def test_utc_buckets_align_to_the_epoch_also_before_1970() -> None:
    cal = aggregate.Calendar(86_400_000, None)
    starts, ends = cal.bounds(np.array([-1, 0, 86_399_999], np.int64))
    assert starts.tolist() == [-86_400_000, 0, 0]
    assert (ends - starts == 86_400_000).all()


def test_multi_day_buckets_in_a_zone_start_on_aligned_local_midnights() -> None:
    cal = aggregate.Calendar(7 * 86_400_000, DENVER)
    t = np.arange(
        ms(datetime(2024, 1, 1, tzinfo=DENVER)),
        ms(datetime(2024, 12, 31, tzinfo=DENVER)),
        HOUR_MS,
        dtype=np.int64,
    )
    starts, ends = cal.bounds(t)
    for s in np.unique(starts).tolist():
        local = datetime.fromtimestamp(s / 1000, DENVER)
        assert (local.hour, local.minute) == (0, 0)
        assert (local.date().toordinal() - datetime(1970, 1, 1).toordinal()) % 7 == 0
    assert ((t >= starts) & (t < ends)).all()


def brute(
    times: list[int],
    values: list[float],
    qc: list[int],
    remove: int,
    cal: aggregate.Calendar,
    lo: int,
    hi: int,
) -> dict[int, tuple[int, float, float, float, float, float]]:
    out: dict[int, list[tuple[int, float]]] = {}
    for t, v, q in sorted(zip(times, values, qc, strict=True)):
        if q & remove or not lo <= t < hi:
            continue
        out.setdefault(cal.bound(t)[0], []).append((t, v))
    return {
        k: (
            len(r),
            sum(v for _, v in r),
            min(v for _, v in r),
            max(v for _, v in r),
            r[0][1],
            r[-1][1],
        )
        for k, r in out.items()
    }


def run(
    times: list[int],
    values: list[float],
    qc: list[int],
    remove: int,
    cal: aggregate.Calendar,
    lo: int,
    hi: int,
    limit: int,
) -> dict[int, tuple[int, float, float, float, float, float]]:
    """What the service does with a store: read summaries, plan, read rows, combine, page."""
    t = np.array(times, np.int64)
    v = np.array(values, np.float64)
    q = np.array(qc, np.int64)
    s = np.ones(len(t), np.int64)
    units = [u for u in summarize(s, t, v, q) if not u[2] & remove]
    found_all = summaries_from_rows([[u[0], u[1], *u[3:]] for u in units])
    out: dict[int, tuple[int, float, float, float, float, float]] = {}
    while lo < hi:
        keep = (found_all.hour * HOUR_MS + HOUR_MS > lo) & (found_all.hour * HOUR_MS < hi)
        found = found_all.take(keep)
        p = aggregate.plan(cal, found, 1, lo, hi, limit)
        sel = np.zeros(len(t), np.bool_)
        for _, a, b in p.ranges:
            sel |= (t >= a) & (t < b)
        sel &= (q & remove) == 0
        b = aggregate.combine(cal, found, p.whole, Points(s[sel], t[sel], v[sel]))
        assert len(b) <= limit
        for i in range(len(b)):
            k = int(b.start[i])
            assert k not in out, "a bucket on two pages"
            out[k] = (
                int(b.n[i]),
                float(b.sum[i]),
                float(b.min[i]),
                float(b.max[i]),
                float(b.first[i]),
                float(b.last[i]),
            )
        if not p.more:
            break
        lo = p.cut
    return out


T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6 * 86_400_000),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.sampled_from([0, 0, 0, 1, 2]),
        ),
        min_size=1,
        max_size=200,
        unique_by=lambda r: r[0],
    ),
    st.sampled_from(["1m", "7m", "1h", "90m", "6h", "1d", "2d"]),
    st.sampled_from([None, DENVER, KOLKATA]),
    st.sampled_from([0, 1, 3]),
    st.integers(1, 40),
    st.integers(0, 3 * 86_400_000),
    st.integers(0, 7 * 86_400_000),
)
def test_every_aggregate_is_exact_against_a_brute_force(
    rows: list[tuple[int, float, int]],
    every: str,
    zone: ZoneInfo | None,
    remove: int,
    limit: int,
    lo_off: int,
    span: int,
) -> None:
    e = aggregate.parse_every(every)
    if zone is not None and e > 86_400_000 and e % 86_400_000:
        return
    cal = aggregate.Calendar(e, zone)
    times = [T0 + r[0] for r in rows]
    values = [r[1] for r in rows]
    qc = [r[2] for r in rows]
    lo, hi = T0 + lo_off, T0 + lo_off + span
    want = brute(times, values, qc, remove, cal, lo, hi)
    got = run(times, values, qc, remove, cal, lo, hi, limit)
    assert got.keys() == want.keys()
    for k, (n, total, mn, mx, first, last) in want.items():
        g = got[k]
        assert g[0] == n
        assert g[1] == pytest.approx(total, rel=1e-9, abs=1e-6)
        assert (g[2], g[3], g[4], g[5]) == (mn, mx, first, last)


def test_render_converts_offset_units_right() -> None:
    t = np.array([0, 1000, 2000], np.int64)
    v = np.array([0.0, 10.0, 20.0])
    cal = aggregate.Calendar(HOUR_MS, None)
    found = summaries_from_rows(
        [[u[0], u[1], *u[3:]] for u in summarize(np.ones(3, np.int64), t, v, np.zeros(3, np.int64))]
    )
    p = aggregate.plan(cal, found, 1, 0, HOUR_MS, 10)
    b = aggregate.combine(cal, found, p.whole, Points(np.ones(0, np.int64), t[:0], v[:0]))
    out = aggregate.render(b, 0, ("mean", "min", "max", "sum", "count", "first", "last"), 1.8, 32.0)
    degf = [x * 1.8 + 32 for x in (0.0, 10.0, 20.0)]
    assert out["mean"] == pytest.approx(sum(degf) / 3)
    assert out["sum"] == pytest.approx(sum(degf))
    assert (out["min"], out["max"], out["first"], out["last"]) == (32.0, 68.0, 32.0, 68.0)
    assert out["count"] == 3


def test_zone_buckets_at_the_ends_of_the_calendar() -> None:
    """Padding the table of midnights past year 9999 (or before year 1) raised."""
    for zone in (DENVER, KOLKATA):
        cal = aggregate.Calendar(3 * 86_400_000, zone)
        t = np.array([-62135596800000, 253402300799999], np.int64)
        starts, ends = cal.bounds(t)
        assert (starts <= t).all() and (t < ends).all()
        for edge in (*starts.tolist(), *ends.tolist()):
            assert cal.label(edge)


@pytest.mark.parametrize("every", [HOUR_MS, 86_400_000, 7 * 86_400_000, 3660 * 86_400_000])
def test_times_centuries_apart_get_the_buckets_each_gets_alone(every: int) -> None:
    """Times spread over eight thousand years, in runs and alone, in one read: the table of
    midnights is built around them, not for every day between, and each time's bucket is the
    one a calendar asked about that time alone gives."""
    rng = np.random.default_rng(7)
    alone = rng.integers(-62_000_000_000_000, 253_000_000_000_000, 40)
    runs = [t + np.arange(0, 200 * 86_400_000, 9 * 3_600_000) for t in alone[:3]]
    times = np.concatenate((alone, *runs)).astype(np.int64)
    for zone in (DENVER, KOLKATA):
        cal = aggregate.Calendar(every, zone)
        starts, ends = cal.bounds(times)
        assert len(cal._ords) < 100_000  # the days between are not all computed
        for t, s, e in zip(times.tolist(), starts.tolist(), ends.tolist(), strict=True):
            assert s <= t < e
            assert (s, e) == aggregate.Calendar(every, zone).bound(t)
            if every % 86_400_000 == 0:  # starts at a local midnight N days from 1970-01-01
                local = datetime.fromtimestamp(s / 1000, zone)
                assert (local.hour, local.minute, local.second) == (0, 0, 0)
                assert (local.date().toordinal() - EPOCH_ORD) % (every // 86_400_000) == 0
        # Asked again, and about one time among them, it answers from its table alike.
        again = cal.bounds(times)
        assert (again[0] == starts).all() and (again[1] == ends).all()
        assert cal.bound(int(times[5])) == (int(starts[5]), int(ends[5]))
