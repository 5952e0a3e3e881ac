"""NDJSON and SSE framing, and the incremental line decoder with awkward chunk splits."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.framing import NDJSON, SSE
from streamgauge.wire.framing import LineDecoder


def test_ndjson_frames() -> None:
    assert NDJSON.row(7, b'{"a":1}') == b'{"a":1}\n'
    ka = orjson.loads(NDJSON.keepalive("2026-01-01T00:00:00Z"))
    assert "cursor" not in ka and ka["keepalive"] == "2026-01-01T00:00:00Z"
    closed = orjson.loads(NDJSON.closed("slow consumer", 42))
    assert closed == {"closed": {"reason": "slow consumer", "resume": 42}}
    assert NDJSON.opened(1000) == b""


def test_sse_frames() -> None:
    assert SSE.row(7, b'{"a":1}') == b'id: 7\ndata: {"a":1}\n\n'
    assert SSE.keepalive("x").startswith(b":")  # a comment: no id, no event
    closed = SSE.closed("bye", 9)
    assert closed.startswith(b"event: closed\nid: 9\ndata: ") and closed.endswith(b"\n\n")
    assert SSE.opened(1500) == b"retry: 1500\n\n"


@given(
    lines=st.lists(
        st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b.strip()),
        max_size=20,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_line_decoder_any_split(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    dec = LineDecoder()
    out: list[bytes] = []
    for a, b in zip(points, points[1:], strict=False):
        out += dec.feed(data[a:b])
    assert out == [line.rstrip(b"\r") for line in lines]


def test_line_decoder_is_bounded() -> None:
    dec = LineDecoder(max_line=10)
    with pytest.raises(ValueError):
        dec.feed(b"x" * 11)
