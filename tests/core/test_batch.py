"""Columnar batches: time formatting, QC names, the JSON encoding of rows, take() and head()."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.batch import (
    QC_NAMES,
    encode_rows,
    format_time,
    kept_json,
    qc_json,
    qc_names,
    value_json,
)
from streamgauge.core.framing import NDJSON
from streamgauge.core.ingest import MAX_TIME, MIN_TIME
from streamgauge.core.registry import Registry
from streamgauge.core.units import ENGLISH, METRIC
from streamgauge.domain.batch import Batch, concat, empty_batch
from streamgauge.domain.events import SeriesAdded, SeriesDropped

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def registry() -> Registry:
    reg = Registry()
    for pk, dev, var, set_ in [(1, "d0", "air_temp", 1), (2, "d1", 'we"ird', 3)]:
        reg.apply(SeriesAdded(pk, 1, pk, pk, set_, dev, var))
    return reg


def batch(values: list[float | str | None] | None = None) -> Batch:
    values = values if values is not None else [1.5, "text", None, -2.0]
    n = len(values)
    return Batch(
        1,
        np.arange(10, 10 + n, dtype=np.int64),
        np.array([1, 2] * (n // 2) + [1] * (n % 2), np.int64),
        np.array([1_700_000_000_000 + 1000 * i + (i % 2) * 250 for i in range(n)], np.int64),
        values,
        np.array([0, 1, 0b10100, 0][:n] + [0] * max(0, n - 4), np.int64),
        received_ns=77,
    )


def test_format_time_whole_seconds_have_no_fraction() -> None:
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(1_700_000_000_000) == "2023-11-14T22:13:20Z"


def test_format_time_milliseconds() -> None:
    assert format_time(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert format_time(1_700_000_000_005) == "2023-11-14T22:13:20.005Z"
    assert format_time(MAX_TIME) == "9999-12-31T23:59:59.999Z"


def test_format_time_before_1970() -> None:
    assert format_time(-1) == "1969-12-31T23:59:59.999Z"
    assert format_time(-1500) == "1969-12-31T23:59:58.500Z"
    assert format_time(-1000) == "1969-12-31T23:59:59Z"
    assert format_time(-86_400_000 * 365) == "1969-01-01T00:00:00Z"


def test_format_time_pads_years_before_1000_to_four_digits() -> None:
    # RFC 3339 needs a four-digit year; ingest accepts times down to year 1 (MIN_TIME).
    assert format_time(MIN_TIME) == "0001-01-01T00:00:00Z"
    assert format_time(MIN_TIME + 1) == "0001-01-01T00:00:00.001Z"


@given(st.integers(MIN_TIME, MAX_TIME))
def test_format_time_matches_exact_datetime_arithmetic(ms: int) -> None:
    dt = _EPOCH + timedelta(milliseconds=ms)
    expected = f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}"
    expected += f".{ms % 1000:03d}Z" if ms % 1000 else "Z"
    assert format_time(ms) == expected
    parsed = datetime.fromisoformat(format_time(ms).replace("Z", "+00:00"))
    assert (parsed - _EPOCH) // timedelta(milliseconds=1) == ms


def test_qc_names() -> None:
    assert qc_names(0) == []
    assert qc_names(1) == ["sl_range_check"]
    assert qc_names(0b10100) == ["sl_pers_check", "sl_wind_gust_factor_check"]
    assert qc_names((1 << len(QC_NAMES)) - 1) == list(QC_NAMES)
    assert qc_names(1 << len(QC_NAMES)) == []  # unknown bits name nothing


def test_encode_rows_is_valid_json_with_every_key() -> None:
    reg = registry()
    b = batch()
    rows = [orjson.loads(r) for r in encode_rows(b, reg)]
    assert [list(r) for r in rows] == [
        ["cursor", "device", "variable", "set", "time", "value", "qc"]
    ] * 4
    assert rows[0] == {
        "cursor": 10,
        "device": "d0",
        "variable": "air_temp",
        "set": 1,
        "time": "2023-11-14T22:13:20Z",
        "value": 1.5,
        "qc": [],
    }
    assert rows[1] == {
        "cursor": 11,
        "device": "d1",
        "variable": 'we"ird',
        "set": 3,
        "time": "2023-11-14T22:13:21.250Z",
        "value": "text",
        "qc": ["sl_range_check"],
    }
    assert rows[2]["value"] is None and rows[2]["qc"] == [
        "sl_pers_check",
        "sl_wind_gust_factor_check",
    ]
    assert rows[3]["value"] == -2.0 and isinstance(rows[3]["value"], float)


def test_encode_rows_awkward_values() -> None:
    reg = registry()
    values: list[float | str | None] = ['quote " and \\ and \n', "ünïcode ☃", 1e300, 0.1]
    rows = [orjson.loads(r) for r in encode_rows(batch(values), reg)]
    assert [r["value"] for r in rows] == values


@given(
    st.lists(st.one_of(st.floats(), st.none(), st.text(alphabet='a,"\\ 1]\n'))),
    st.lists(st.integers(0, 2**8 - 1)),
)
def test_values_and_qc_flags_encode_as_one_by_one(
    values: list[float | str | None], flags: list[int]
) -> None:
    """``value_json`` (one call for a list without text) and ``qc_json`` (names per distinct
    mask) give each value's and each mask's own JSON."""
    assert value_json(values) == [orjson.dumps(v) for v in values]
    assert qc_json(np.array(flags, np.int64)) == [orjson.dumps(qc_names(q)) for q in flags]


def test_encode_rows_of_an_unknown_series_has_nulls() -> None:
    reg = registry()
    b = Batch(
        1,
        np.array([5], np.int64),
        np.array([999], np.int64),
        np.array([0], np.int64),
        [1.0],
        np.array([0], np.int64),
    )
    [row] = [orjson.loads(r) for r in encode_rows(b, reg)]
    assert row["device"] is None and row["variable"] is None and row["set"] is None
    assert row["cursor"] == 5 and row["value"] == 1.0


@given(st.lists(st.integers(-2, 6), min_size=1, max_size=30))
def test_encode_rows_say_what_the_series_records_say(series: list[int]) -> None:
    """Rows encoded from the series columns are byte for byte what each series' record
    (``series_by_pk``: its ``prefix``) gives, for live, dropped, unknown and negative pks,
    unicode and quotes in the ids, and other sets."""
    reg = registry()
    reg.apply(SeriesAdded(3, 1, 3, 3, 7, "dé\\v", "wind_speed"))
    reg.apply(SeriesAdded(4, 1, 1, 4, 1, "d0", "air_temp2"))
    reg.apply(SeriesDropped(4))
    n = len(series)
    b = Batch(
        1,
        np.arange(1, n + 1, dtype=np.int64),
        np.array(series, np.int64),
        np.full(n, 1_700_000_000_000, np.int64),
        [float(i) for i in range(n)],
        np.zeros(n, np.int64),
    )
    expected = []
    for cursor, pk in enumerate(series, 1):
        rec = reg.series_by_pk.get(pk)
        prefix = rec.prefix if rec is not None else b'"device":null,"variable":null,"set":null'
        expected.append(
            b'{"cursor":%d,%s,"time":"2023-11-14T22:13:20Z","value":%s,"qc":[]}'
            % (cursor, prefix, orjson.dumps(float(cursor - 1)))
        )
    assert encode_rows(b, reg) == expected
    assert encode_rows(b, reg) == expected  # the ids' JSON kept from the first call


def test_json_rows_and_framed_are_cached_per_batch() -> None:
    reg = registry()
    b = batch()
    assert b.json_rows(reg) is b.json_rows(reg)
    framed = b.framed("ndjson", reg, NDJSON.row)
    assert framed is b.framed("ndjson", reg, NDJSON.row)
    assert framed == [r + b"\n" for r in b.json_rows(reg)]


def test_json_rows_default_to_metric_through_the_core_encoder() -> None:
    reg = registry()
    b = batch()
    rows = b.json_rows(reg)
    assert b.json_rows(reg, METRIC) is rows  # one cache entry: no units means metric
    assert rows == encode_rows(b, reg, METRIC)
    assert b.framed("ndjson", reg, NDJSON.row) is b.framed("ndjson", reg, NDJSON.row, METRIC)
    assert b.json_rows(reg, ENGLISH) is not rows
    calls: list[object] = []

    def own(batch: Batch, reg: Registry, units: object) -> list[bytes]:
        calls.append(units)
        return [b"x"] * len(batch)

    assert b.encoded("own", reg, own) is b.encoded("own", reg, own, METRIC)
    assert calls == [METRIC]


def test_the_domain_batch_needs_no_core_until_rows_are_encoded() -> None:
    code = (
        "import sys, numpy as np\n"
        "from streamgauge.domain.batch import Batch, concat, empty_batch, merge_commits\n"
        "z = np.arange(3, dtype=np.int64)\n"
        "b = Batch(1, z, z.copy(), z.copy(), [1.0, 'a', None], z.copy())\n"
        "m = merge_commits([b, b.head(1)])\n"
        "assert m.derived['commit'].tolist() == [0, 0, 0, 1]\n"
        "assert len(concat([b, empty_batch()])) == 3\n"
        "assert not [n for n in sys.modules if n.startswith('streamgauge.core')]\n"
        "try:\n"
        "    b.json_rows(None)\n"
        "except RuntimeError as e:\n"
        "    assert 'core' in str(e)\n"
        "else:\n"
        "    raise AssertionError('encoded without an encoder')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_take_and_head() -> None:
    b = batch()
    picked = b.take(np.array([False, True, False, True]))
    assert picked.cursors.tolist() == [11, 13]
    assert picked.series.tolist() == [2, 2]
    assert picked.values == ["text", -2.0]
    assert picked.qc.tolist() == [1, 0]
    assert picked.times.tolist() == [b.times[1], b.times[3]]
    assert (picked.first, picked.last, len(picked), picked.received_ns) == (11, 13, 2, 77)
    assert picked.project_pk == 1
    none = b.take(np.zeros(4, np.bool_))
    assert len(none) == 0 and none.values == []

    head = b.head(3)
    assert head.cursors.tolist() == [10, 11, 12]
    assert head.values == [1.5, "text", None]
    assert (head.first, head.last, head.received_ns) == (10, 12, 77)
    # a derived batch encodes its own rows, not its parent's cached ones
    reg = registry()
    b.json_rows(reg)
    assert [orjson.loads(r)["cursor"] for r in picked.json_rows(reg)] == [11, 13]


def test_empty_and_concat() -> None:
    assert len(empty_batch(3)) == 0 and empty_batch(3).project_pk == 3
    assert len(concat([])) == 0
    b = batch()
    joined = concat([b.head(2), b.take(np.array([False, False, True, True]))])
    assert joined.cursors.tolist() == b.cursors.tolist()
    assert joined.values == b.values


def test_batch_module_imports_on_its_own() -> None:
    # Importing streamgauge.core.batch (or hub, filters) first must not hit an import cycle.
    for module in ("streamgauge.core.batch", "streamgauge.core.filters", "streamgauge.core.hub"):
        proc = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr


def _held(make: object) -> int:
    """Bytes still allocated by what ``make()`` returns (kept alive while measured)."""
    assert callable(make)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        held: int = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del kept
    return held


def test_kept_json_holds_its_length_not_orjsons_buffer() -> None:
    """A short text from ``orjson.dumps`` sits in a buffer of about 4 KiB (a cache of a
    thousand station ids held 4 MB); ``kept_json`` keeps the same bytes at their length."""
    names = [f"SG{k:05d}" for k in range(1000)]
    assert [kept_json(n) for n in names] == [orjson.dumps(n) for n in names]
    kept = _held(lambda: [kept_json(n) for n in names])
    assert kept < 100 * 1000  # the list and 1,000 objects of about 50 bytes
    assert type(kept_json({"a": [1, None, "x"]})) is bytes


def test_the_device_and_variable_ids_json_is_kept_at_its_length() -> None:
    """Native rows keep each device's and variable's id JSON in the registry for its life:
    at their length, not in orjson's buffers of 4 KiB (30,000 devices held 120 MB in each
    process that served native streams)."""
    reg = Registry()
    n = 300
    for pk in range(1, n + 1):
        reg.apply(SeriesAdded(pk, 1, pk, pk, 1, f"dev{pk:04d}", f"var{pk % 7}"))
    rows = Batch(
        1,
        np.arange(1, n + 1, dtype=np.int64),
        np.arange(1, n + 1, dtype=np.int64),
        np.full(n, 1_700_000_000_000, np.int64),
        [float(k) for k in range(n)],
        np.zeros(n, np.int64),
    )
    held = _held(lambda: encode_rows(rows, reg, METRIC) and None)  # the registry's tables only
    got = orjson.loads(b"[" + b",".join(encode_rows(rows, reg, METRIC)) + b"]")
    assert [r["device"] for r in got] == [f"dev{pk:04d}" for pk in range(1, n + 1)]
    assert held < n * 1024  # about 100 bytes a device (and the batch's row heads)
