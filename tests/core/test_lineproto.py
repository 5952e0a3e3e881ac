"""The line-protocol decoder (core/lineproto.py): pure calls, and a hypothesis round trip
against the serializer of the ``influxdb-client`` package (``Point.to_line_protocol``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point as ClientPoint
from influxdb_client import WritePrecision

from streamgauge.core import lineproto
from streamgauge.core.lineproto import LineErrors, parse, precision_ns


def test_one_line_many_fields_and_types() -> None:
    body = (
        b"weather,device=D1,site=roof "
        b'air_temp=1.5,count=3i,up=7u,ok=true,note="hi \\"x\\"" 1700000000123456789'
    )
    (pt,) = parse(body)
    assert pt.line == 1 and pt.device == "D1" and pt.tags == {"site": "roof"}
    assert pt.fields == {"air_temp": 1.5, "count": 3.0, "up": 7.0, "ok": 1.0, "note": 'hi "x"'}
    assert pt.time_ms == 1700000000123  # ns floored to ms


@pytest.mark.parametrize(
    ("precision", "stamp", "ms"),
    [
        ("ns", 1_700_000_000_000_000_000, 1_700_000_000_000),
        ("us", 1_700_000_000_000_000, 1_700_000_000_000),
        ("u", 5_000, 5),
        ("ms", 1_700_000_000_001, 1_700_000_000_001),
        ("s", 1_700_000_000, 1_700_000_000_000),
        ("m", 2, 120_000),
        ("h", 1, 3_600_000),
        (None, 1_000_000, 1),
    ],
)
def test_precisions(precision: str | None, stamp: int, ms: int) -> None:
    (pt,) = parse(f"m,device=d f=1 {stamp}".encode(), precision=precision_ns(precision))
    assert pt.time_ms == ms


def test_negative_time_floors() -> None:
    (pt,) = parse(b"m,device=d f=1 -1")
    assert pt.time_ms == -1


def test_unknown_precision() -> None:
    with pytest.raises(ValueError, match="unknown precision 'x'"):
        precision_ns("x")


def test_blank_lines_comments_crlf_and_no_timestamp() -> None:
    body = b"# a comment\n\nm,device=a f=1\r\n  \nm,device=b g=2 1000000\n"
    points = parse(body)
    assert [(p.line, p.device, p.time_ms) for p in points] == [(3, "a", None), (5, "b", 1)]


def test_every_bad_line_is_named_with_its_number() -> None:
    body = b"m,device=a f=1\nbad line\nm,device=b f=\nm,other=x f=1\nm,device=c f=2"
    with pytest.raises(LineErrors) as caught:
        parse(body)
    lines = [(e.line, e.reason) for e in caught.value.errors]
    assert [n for n, _ in lines] == [2, 3, 4]
    assert "no 'device' tag" in lines[2][1]
    message = caught.value.message()
    assert message.startswith("line 2: unable to parse 'bad line': ")
    assert "line 3:" in message and "line 4:" in message


def test_device_tag_setting() -> None:
    (pt,) = parse(b"m,host=h1,device=x f=1", device_tag="host")
    assert pt.device == "h1" and pt.tags == {"device": "x"}


def test_ids_checked_for_autocreate() -> None:
    with pytest.raises(LineErrors, match="not a valid variable id"):
        parse(b"m,device=d bad\\ field=1", check_ids=True)
    with pytest.raises(LineErrors, match="not a valid device id"):
        parse(b"m,device=-d f=1", check_ids=True)
    assert parse(b"m,device=-d f=1")  # without autocreate the engine says it is unknown


def test_invalid_utf8_names_the_line() -> None:
    with pytest.raises(LineErrors) as caught:
        parse(b"m,device=d f=1\nm,device=\xff f=1")
    assert caught.value.errors[0].line == 2 and "UTF-8" in caught.value.errors[0].reason


def test_nul_out_of_range_time_and_long_tags() -> None:
    with pytest.raises(LineErrors) as caught:
        parse(
            b"m,device=d f=1\x00\n"
            b"m,device=d f=1 99999999999999999\n"
            b"m,device=d,k=" + b"v" * 300 + b" f=1",
            precision=precision_ns("s"),
        )
    assert [e.line for e in caught.value.errors] == [1, 2, 3]


def test_max_errors_bounds_the_list() -> None:
    with pytest.raises(LineErrors) as caught:
        parse(b"x\n" * 50, max_errors=3)
    assert len(caught.value.errors) == 3


_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
_key = _text.filter(lambda k: not k.startswith("#") and not k.endswith("\\") and k != "time")
_field_value = st.one_of(
    # line_protocol_parser refuses subnormal numbers (below 2.2e-308; strtod's ERANGE): no
    # sensor sends them, and docs/ports.md says so.
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    _text.filter(lambda s: not s.endswith("\\")),
)


@settings(max_examples=300, deadline=None)
@given(
    measurement=_key,
    device=_text.filter(lambda s: not s.endswith("\\")),
    tags=st.dictionaries(_key, _text.filter(lambda s: not s.endswith("\\")), max_size=3),
    fields=st.dictionaries(_key, _field_value, min_size=1, max_size=4),
    stamp=st.integers(min_value=-(10**17), max_value=10**17),
)
def test_round_trip_with_influxdb_client_serializer(
    measurement: str, device: str, tags: dict[str, str], fields: dict[str, object], stamp: int
) -> None:
    tags.pop("device", None)
    point = ClientPoint(measurement).tag("device", device)
    for k, v in tags.items():
        point = point.tag(k, v)
    for k, v in fields.items():
        point = point.field(k, v)
    point = point.time(stamp, WritePrecision.NS)
    line = point.to_line_protocol()
    (got,) = parse(line.encode())
    assert got.device == device
    assert got.tags == tags
    assert got.time_ms == stamp // 1_000_000
    assert set(got.fields) == set(fields)
    for k, v in fields.items():
        if isinstance(v, bool):
            assert got.fields[k] == (1.0 if v else 0.0)
        elif isinstance(v, int | float):
            assert isinstance(got.fields[k], float)
            assert got.fields[k] == float(v)
        else:
            assert got.fields[k] == v


def test_precision_table_covers_both_versions() -> None:
    assert {"ns", "us", "ms", "s"} <= set(lineproto.PRECISIONS)
    assert {"n", "u", "m", "h"} <= set(lineproto.PRECISIONS)
