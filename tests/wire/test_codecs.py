"""The pure wire codecs (``streamgauge.wire``): frames read back exactly as written, whatever
the chunk split; page tokens; the error envelope; row times."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.wire import WireError, framing, pages, rows
from streamgauge.wire.errors import envelope, parse_envelope


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


ROW = st.fixed_dictionaries(
    {"cursor": st.integers(1, 2**63 - 1), "value": st.floats(allow_nan=False, allow_infinity=False)}
)


@given(st.lists(ROW, max_size=20), st.lists(st.integers(0, 10_000), max_size=8))
def test_sse_frames_read_back_whatever_the_split(
    objs: list[dict[str, object]], cuts: list[int]
) -> None:
    stream = framing.sse_opened(1500) + framing.sse_units({"temperature": "degC"})
    for o in objs:
        stream += framing.sse_row(int(o["cursor"]), orjson.dumps(o))  # type: ignore[call-overload]
        stream += framing.sse_keepalive("2026-01-01T00:00:00Z")
    stream += framing.sse_closed("bye", 42)
    dec = framing.SseDecoder()
    events = [e for chunk in _split(stream, cuts) for e in dec.feed(chunk)]
    assert events[0] == framing.SseEvent("units", b'{"temperature":"degC"}', None)
    data = events[1:-1]
    assert [orjson.loads(e.data) for e in data] == objs
    assert [e.id for e in data] == [str(o["cursor"]) for o in objs]
    assert events[-1].event == "closed" and events[-1].id == "42"
    assert orjson.loads(events[-1].data) == {"reason": "bye", "resume": 42}


@given(st.lists(ROW, max_size=20), st.lists(st.integers(0, 10_000), max_size=8))
def test_ndjson_frames_read_back_whatever_the_split(
    objs: list[dict[str, object]], cuts: list[int]
) -> None:
    stream = framing.ndjson_units({"speed": "m/s"})
    for o in objs:
        stream += framing.ndjson_row(int(o["cursor"]), orjson.dumps(o))  # type: ignore[call-overload]
    stream += framing.ndjson_keepalive("2026-01-01T00:00:00Z") + framing.ndjson_closed("x", 7)
    dec = framing.LineDecoder()
    lines = [orjson.loads(x) for chunk in _split(stream, cuts) for x in dec.feed(chunk)]
    assert lines[0] == {"units": {"speed": "m/s"}}
    assert lines[1:-2] == objs
    assert lines[-2] == {"keepalive": "2026-01-01T00:00:00Z"}
    assert lines[-1] == {"closed": {"reason": "x", "resume": 7}}


def test_decoders_bound_their_buffers() -> None:
    with pytest.raises(ValueError, match="longer than"):
        framing.LineDecoder(max_line=10).feed(b"x" * 11)
    with pytest.raises(ValueError, match="longer than"):
        framing.SseDecoder(max_event=10).feed(b"data: " + b"x" * 20 + b"\n")


@given(st.text(max_size=200))
def test_page_tokens_round_trip(key: str) -> None:
    token = pages.encode_page(key)
    assert token.isascii()
    assert pages.decode_page(token) == key


@pytest.mark.parametrize("token", ["9r5\udcb5", "!!!", "a" * 2000, "_w", "gIA"])
def test_bad_page_tokens_are_wire_errors(token: str) -> None:
    """issue 11 item 13: a token that is not base64url or not UTF-8 inside is refused (the
    server answers it with a 400), never an unexpected ValueError deeper down."""
    with pytest.raises(WireError):
        pages.decode_page(token)


def test_error_envelope_round_trip() -> None:
    body = envelope(422, "invalid", "bad row", [{"index": 3, "field": "time", "reason": "x"}])
    got = parse_envelope(orjson.loads(orjson.dumps(body)), 422)
    assert (got.status, got.code, got.message) == (422, "invalid", "bad row")
    assert got.details == [{"index": 3, "field": "time", "reason": "x"}]
    extra = parse_envelope({"error": {**body["error"], "earliest": 10}}, 410)
    assert extra.extra == {"earliest": 10}
    plain = parse_envelope("upstream proxy said no", 502)
    assert (plain.status, plain.code, plain.message) == (502, "error", "upstream proxy said no")


@given(st.integers(-62_135_596_800_000, 253_402_300_799_999))
def test_row_times_round_trip(ms: int) -> None:
    text = rows.format_time(ms)
    assert rows.parse_time(text) == ms
    assert rows.to_ms(rows.from_ms(ms)) == ms


def test_row_times_need_a_zone() -> None:
    with pytest.raises(WireError, match="no timezone"):
        rows.parse_time("2026-01-01T00:00:00")
    assert rows.parse_time("2026-01-01T01:00:00+01:00") == rows.to_ms(
        datetime(2026, 1, 1, tzinfo=UTC)
    )
