"""The feed's per-connection metadata bookkeeping, without I/O."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.hub import Item
from streamgauge.faces.synoptic.messages import _Bits, data_message, merge_items


@given(st.lists(st.lists(st.integers(0, 5000), max_size=50), max_size=8))
def test_bits_behave_like_a_set(rounds: list[list[int]]) -> None:
    bits, seen = _Bits(), set()
    for keys in rounds:
        arr = np.array(keys, np.int64)
        assert sorted(bits.missing(arr, 5001).tolist()) == sorted(k for k in keys if k not in seen)
        bits.add(arr)
        seen |= set(keys)


def test_merge_items_joins_consecutive_messages_within_the_row_bound() -> None:
    def item(first: int, rows: list[int]) -> Item:
        body = b"".join(b'{"v":%d},' % r for r in rows)
        last = first + len(rows) - 1
        return Item(
            first,
            last,
            len(rows),
            data_message(body, first, last),
            5 + first,
            np.array(rows, np.int64),
        )

    a, b, c = item(1, [1, 2]), item(3, [3]), item(4, [4, 5, 6])
    assert merge_items([a], 3) == [a]
    merged = merge_items([a, b, c], 3)
    assert [(m.first, m.last, m.count) for m in merged] == [(1, 3, 3), (4, 6, 3)]
    assert merged[1] is c  # a group of one is sent as the hub built it
    first = json.loads(merged[0].data)
    assert first == {"type": "data", "cursor": 3, "data": [{"v": 1}, {"v": 2}, {"v": 3}]}
    assert merged[0].series is not None and merged[0].series.tolist() == [1, 2, 3]
    assert merged[0].received_ns == 6
    assert [m.count for m in merge_items([a, b, c], 100)] == [6]
