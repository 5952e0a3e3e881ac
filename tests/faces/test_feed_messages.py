"""The feed's per-connection metadata bookkeeping, without I/O."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.faces.synoptic.messages import _Bits


@given(st.lists(st.lists(st.integers(0, 5000), max_size=50), max_size=8))
def test_bits_behave_like_a_set(rounds: list[list[int]]) -> None:
    bits, seen = _Bits(), set()
    for keys in rounds:
        arr = np.array(keys, np.int64)
        assert sorted(bits.missing(arr, 5001).tolist()) == sorted(k for k in keys if k not in seen)
        bits.add(arr)
        seen |= set(keys)
