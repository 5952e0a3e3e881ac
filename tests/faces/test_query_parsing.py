"""The query-value parsers every face shares (``faces/http.py``), the metadata check of the
model, and the lenient reply encoder: pure functions, no server (issue 11 items 13 and 17)."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from streamgauge.core.ingest import MAX_TIME, MIN_TIME
from streamgauge.domain.errors import BadRequest
from streamgauge.domain.model import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    ProjectIn,
    check_metadata,
)
from streamgauge.faces.http import (
    decode_page,
    dumps,
    parse_cursor,
    parse_int,
    parse_time,
    query_string_problem,
)
from streamgauge.faces.synoptic import messages
from streamgauge.faces.synoptic.args import parse_feed_args
from streamgauge.wire.pages import MAX_TOKEN_CHARS, encode_page


@pytest.mark.parametrize("text", ["²", "１", "٣", "9" * 5000, "9" * 20, "", "-", "+", "1.0", " 1"])
def test_parse_int_takes_ascii_digits_only(text: str) -> None:
    """issue 11 item 13: `str.isdigit` says yes to "²" and `int("²")` raises; 5,000 digits
    exceed Python's conversion limit. Each is a 400 naming the field, before int() runs."""
    with pytest.raises(BadRequest) as err:
        parse_int(text, "pageSize", lo=1, hi=10)
    assert err.value.status == 400
    assert err.value.details == [
        {"in": "query", "field": "pageSize", "reason": "expected an integer from 1 to 10"}
    ]
    assert len(err.value.message) < 200  # a long value is not echoed whole


def test_parse_int_range_and_cursor() -> None:
    assert parse_int("7", "n", lo=1, hi=10) == 7
    assert parse_int("-3", "n", lo=-5, hi=0) == -3
    with pytest.raises(BadRequest, match="out of range"):
        parse_int("11", "n", lo=1, hi=10)
    assert parse_cursor("0") == 0
    assert parse_cursor(str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", str(2**63), "²"):
        with pytest.raises(BadRequest) as err:
            parse_cursor(bad, "since")
        assert err.value.details[0]["field"] == "since"


def test_parse_time() -> None:
    """issue 11 item 13: `start`/`end` as `²` or 5,000 digits were a 500."""
    assert parse_time(None, "start") is None
    assert parse_time("0", "start") == 0
    assert parse_time(str(MAX_TIME), "end") == MAX_TIME
    assert parse_time(str(MIN_TIME), "end") == MIN_TIME
    assert parse_time("2024-01-01T00:00:00Z", "start") == 1_704_067_200_000
    assert parse_time("2024-01-01T01:00:00+01:00", "start") == 1_704_067_200_000
    for bad in ("²", "9" * 5000, "-" + "9" * 5000, str(MAX_TIME + 1), "yesterday", "2024-01-01",
                "x" * 5000, "2024-01-01T00:00:00ü"):  # fmt: skip
        with pytest.raises(BadRequest) as err:
            parse_time(bad, "start")
        assert err.value.details[0]["field"] == "start"
        assert len(err.value.message) < 200


def test_page_tokens() -> None:
    """issue 11 item 13: a page token that is not base64, or whose bytes are not UTF-8, was a
    ValueError (a 500) on every list endpoint."""
    for key in ("", "abc", "1700000000000:42", "ü" * 10):
        assert decode_page(encode_page(key)) == key
    assert decode_page(None) is None
    for bad in ("9r5\ud7f5", "²", "!!!", "a=b", "_w", "/w", "a" * (MAX_TOKEN_CHARS + 1)):
        with pytest.raises(BadRequest) as err:
            decode_page(bad)
        assert err.value.details == [
            {"in": "query", "field": "page", "reason": "not a token this server gave"}
        ]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"page=9r5%ED%A0%80", "page"),
        (b"a=1&type=%FF", "type"),
        (b"x%FF=1", "x\ufffd"),
        (b"vars=%C3", "vars"),
        (b"\xff=1", None),
    ],
)
def test_query_strings_that_are_not_utf8(raw: bytes, field: str | None) -> None:
    """issue 11 item 13: Starlette decodes query strings leniently; these are refused."""
    problem = query_string_problem(raw)
    assert problem is not None and problem.status == 400
    assert "UTF-8" in problem.message
    assert problem.details[0].get("field") == field


@pytest.mark.parametrize(
    "raw", [b"", b"a=1", b"type=%C3%BC", b"page=9r5%ED%9F%B5", b"a&b=&=c", b"x=%zz", b"q=a+b"]
)
def test_query_strings_that_are_fine(raw: bytes) -> None:
    assert query_string_problem(raw) is None


# -- metadata (item 17) -------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"n": 2**64}, "64 bits"),
        ({"n": -(2**63) - 1}, "64 bits"),
        ({"a": [{"n": 10**400}]}, "metadata.a[0].n"),
        ({"f": math.nan}, "finite"),
        ({"f": [math.inf]}, "finite"),
        ({"s": "\ud800"}, "surrogate"),
        ({"\udc00": 1}, "surrogate"),
        ({"d": _nested(MAX_METADATA_DEPTH)}, "deep"),
        ({"big": "x" * MAX_METADATA_BYTES}, "bytes"),
        ({"o": object()}, "not JSON"),
    ],
)
def test_metadata_that_no_reply_can_encode_is_refused(value: dict[str, Any], says: str) -> None:
    """issue 11 item 17: a 65-bit integer in metadata was committed and then failed every
    listing that included it. The model refuses it (a 4xx through every face)."""
    with pytest.raises(ValueError, match=says.replace("[", r"\[")):
        check_metadata(value)
    with pytest.raises(ValidationError):
        ProjectIn(id="p", metadata=value)


def test_metadata_within_bounds_is_kept_as_is() -> None:
    value = {"u": 2**64 - 1, "i": -(2**63), "f": 1.5, "s": "ü", "l": [None, True, {"k": []}]}
    assert ProjectIn(id="p", metadata=value).metadata == value
    assert orjson.loads(orjson.dumps(check_metadata(value))) == value


def test_dumps_keeps_a_reply_whole_around_a_value_it_cannot_encode() -> None:
    """issue 11 item 17: a stored row with a 65-bit integer must not take a listing down."""
    obj = {"ok": [1, "a"], "bad": {"n": 2**64, "s": "\ud800", "o": object(), "f": math.nan}}
    assert orjson.loads(dumps(obj)) == {
        "ok": [1, "a"],
        "bad": {"n": str(2**64), "s": "?", "o": None, "f": None},
    }
    assert dumps({"a": 1}) == b'{"a":1}'


def test_station_metadata_with_a_superscript_network() -> None:
    """issue 11 item 13: a site's network of "²" passed `isdigit()` and `int("²")` raised while
    the feed built its metadata message."""
    assert messages._number("²") == "²"
    assert messages._number("153") == 153
    assert messages._number("9" * 300) == "9" * 300


@pytest.mark.parametrize(
    "query",
    [
        "start=" + "²" * 12 + "&end=202401010000",
        "start=" + "9" * 5000,
        "start=202401010000&end=" + "9" * 5000,
        "rewind=" + "9" * 5000,
        "rewind=²",
        "start=%ED%A0%80",
        "filter_on=(a > " + "9" * 5000 + ")",
    ],
)
def test_feed_times_and_numbers(query: str) -> None:
    """issue 11 item 13: the feed's `start`/`end`/`rewind` given as `²` or 5,000 digits are a
    refused argument (a failed auth message), not an exception."""
    with pytest.raises(BadRequest):
        parse_feed_args(query, now_ms=1_704_067_200_000, max_period_hours=24)
