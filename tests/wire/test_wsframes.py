"""``joined_frames``: a fan-out round's WebSocket frames or HTTP chunks for many connections in
one call, and ``joined_lists``: many joins of the same items in one call; each in C
(``wire/_wsframes.c``) and its Python twin, which must give the same bytes."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.wire import wsframes
from streamgauge.wire.wsframes import joined_frames_py, joined_lists_py, text_frame


def test_the_c_frames_are_built() -> None:
    """The package builds ``_wsframes`` where it is installed with a compiler (as here): the
    fan-out must not silently run the Python twin."""
    assert wsframes.joined_frames is not joined_frames_py
    assert wsframes.joined_lists is not joined_lists_py


_rows = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=40)


@st.composite
def _frames_args(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int], list[int], list[int]]:
    rows = draw(_rows)
    picked = draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, max_size=400))
    cuts = (
        sorted(draw(st.sets(st.integers(1, len(picked) - 1), max_size=8)))
        if len(picked) > 1
        else []
    )
    edges = [0, *cuts, len(picked)]
    cursors = draw(
        st.lists(st.integers(0, 2**62), min_size=len(edges) - 1, max_size=len(edges) - 1)
    )
    return rows, np.array(picked, np.int64).tobytes(), edges[:-1], edges[1:], cursors


@given(_frames_args(), st.data())
@settings(max_examples=300)
def test_the_c_frames_are_the_python_twins(
    args: tuple[list[bytes], bytes, list[int], list[int], list[int]], data: st.DataObject
) -> None:
    rows, picked, los, his, cursors = args
    before = data.draw(
        st.lists(
            st.none()
            | st.binary(max_size=70_000).filter(lambda b: len(b) != 1)
            | st.just(b"x" * 126),
            min_size=len(los),
            max_size=len(los),
        )
    )
    trim = data.draw(st.integers(0, 1))
    numbered = data.draw(st.booleans())
    chunked = data.draw(st.booleans())
    call = (
        rows,
        picked,
        los,
        his,
        cursors if numbered else None,
        before,
        b'{"c":',
        b',"d":[',
        b"]}",
        trim,
        chunked,
    )
    assert wsframes.joined_frames(*call) == joined_frames_py(*call)


@given(_rows, st.lists(st.none() | st.binary(max_size=300), min_size=1, max_size=5))
def test_a_chunk_is_the_lead_and_the_rows_after_their_size(
    rows: list[bytes], before: list[bytes | None]
) -> None:
    """Chunked: each connection's lead and rows in one HTTP/1.1 chunk (size in hex, CRLF,
    data, CRLF), as a streamed response's body writes them."""
    n = len(before)
    picked = np.arange(len(rows) * n, dtype=np.int64) % len(rows)
    los = [k * len(rows) for k in range(n)]
    his = [lo + len(rows) for lo in los]
    chunks = wsframes.joined_frames(
        rows, picked.tobytes(), los, his, None, before, b"", b"", b"", 0, True
    )
    for chunk, lead in zip(chunks, before, strict=True):
        body = (lead or b"") + b"".join(rows)
        assert chunk == b"%x\r\n" % len(body) + body + b"\r\n"


def test_an_empty_chunk_is_refused() -> None:
    """A chunk of size 0 ends a chunked body: never made."""
    call = ([b""], np.zeros(1, np.int64).tobytes(), [0], [1], None, [None], b"", b"", b"", 0, True)
    for fn in (wsframes.joined_frames, joined_frames_py):
        with pytest.raises(ValueError, match="empty chunk"):
            fn(*call)


def test_the_frames_cross_the_length_forms_alike() -> None:
    """Payloads of 125, 126, 65,535 and 65,536 bytes: the three header forms of RFC 6455."""
    for size in (125, 126, 127, 65_535, 65_536, 70_000):
        head = b"h"
        row = b"r" * (size - len(head) - len("7") + 1)  # trim 1: one byte of the row left out
        call = ([row], np.zeros(1, np.int64).tobytes(), [0], [1], [7], [None], head, b"", b"", 1)
        (frame,) = wsframes.joined_frames(*call)
        assert frame == text_frame(b"h7" + row[:-1]) == joined_frames_py(*call)[0]
        assert len(frame) - size in (2, 4, 10)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"los": [0, 1]}, ValueError),  # lengths differ
        ({"his": [3]}, ValueError),  # beyond picked
        ({"los": [1], "his": [1]}, ValueError),  # no rows
        ({"picked": b"\x00" * 7}, ValueError),  # not int64 values
        ({"picked": np.array([5], np.int64).tobytes()}, IndexError),  # no such row
        ({"picked": np.array([-1], np.int64).tobytes()}, IndexError),
        ({"before": [b"ok", "text"]}, TypeError),
        ({"rows": [b"a", "b"]}, TypeError),
        ({"trim": -1}, ValueError),
        ({"trim": 5}, ValueError),  # more than the rows
    ],
)
def test_bad_arguments_raise_alike(change: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {
        "rows": [b"a", b"b"],
        "picked": np.array([0, 1], np.int64).tobytes(),
        "los": [0],
        "his": [2],
        "cursors": [1],
        "before": [None],
        "prefix": b"",
        "infix": b"",
        "tail": b"",
        "trim": 0,
    }
    if "before" in change and len(cast(list[object], change["before"])) == 2:
        args.update(los=[0, 1], his=[1, 2], cursors=[1, 2])
    if change.get("picked") is not None and len(cast(bytes, change["picked"])) == 8:
        args.update(his=[1])
    args.update(change)
    for fn in (wsframes.joined_frames, joined_frames_py):
        with pytest.raises(error):
            fn(*args.values())  # type: ignore[operator]


@given(_frames_args(), st.data())
def test_a_trim_longer_than_the_tail_leaves_out_the_rows_end_alike(
    args: tuple[list[bytes], bytes, list[int], list[int], list[int]], data: st.DataObject
) -> None:
    """``trim`` may take more than the tail gives back (a whole row, several): the frame is
    the rows' bytes up to the trim, never written past (the C one copies no further)."""
    rows, picked, los, his, cursors = args
    numbers = np.frombuffer(picked, np.int64)
    sizes = [sum(len(rows[r]) for r in numbers[lo:hi]) for lo, hi in zip(los, his, strict=True)]
    trim = data.draw(st.integers(0, min(sizes)))
    chunked = data.draw(st.booleans())
    call = (rows, picked, los, his, None, [None] * len(los), b"", b"", b"", trim, chunked)
    if chunked and trim in sizes:
        return  # an empty chunk: refused alike (test_an_empty_chunk_is_refused)
    assert wsframes.joined_frames(*call) == joined_frames_py(*call)


@given(
    st.lists(st.binary(max_size=200) | st.none(), min_size=1, max_size=30),
    st.data(),
    st.binary(max_size=40),
    st.binary(max_size=3),
    st.binary(max_size=40),
)
@settings(max_examples=300)
def test_the_c_lists_are_the_python_twins(
    items: list[bytes | None],
    data: st.DataObject,
    prefix: bytes,
    sep: bytes,
    tail: bytes,
) -> None:
    """``joined_lists``: each list's items joined between a prefix and a tail; lists may be
    empty, items no list names may be None."""
    named = [r for r, item in enumerate(items) if item is not None]
    picked = data.draw(st.lists(st.sampled_from(named), max_size=200)) if named else []
    cuts = sorted(data.draw(st.lists(st.integers(0, len(picked)), max_size=10)))
    edges = [0, *cuts, len(picked)]
    call = (
        items,
        np.array(picked, np.int64).tobytes(),
        edges[:-1],
        edges[1:],
        prefix,
        sep,
        tail,
    )
    got = wsframes.joined_lists(*call)
    assert got == joined_lists_py(*call)
    assert got == [
        prefix + sep.join([cast(bytes, items[r]) for r in picked[lo:hi]]) + tail
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"los": [0, 1]}, ValueError),  # lengths differ
        ({"his": [3]}, ValueError),  # beyond picked
        ({"los": [2], "his": [1]}, ValueError),  # backwards
        ({"picked": b"\x00" * 7}, ValueError),  # not int64 values
        ({"picked": np.array([0, 5], np.int64).tobytes()}, IndexError),  # no such item
        ({"picked": np.array([-1, 0], np.int64).tobytes()}, IndexError),
        ({"picked": np.array([0, 2], np.int64).tobytes()}, TypeError),  # None named
        ({"los": ["0"]}, TypeError),
    ],
)
def test_bad_list_arguments_raise_alike(change: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {
        "items": [b"a", b"b", None],
        "picked": np.array([0, 1], np.int64).tobytes(),
        "los": [0],
        "his": [2],
        "prefix": b"[",
        "sep": b",",
        "tail": b"]",
    }
    args.update(change)
    for fn in (wsframes.joined_lists, joined_lists_py):
        with pytest.raises(error):
            fn(*args.values())  # type: ignore[operator]
