"""Reconnect delays as a generator (the loop that reconnects only sleeps)."""

from __future__ import annotations

import random
from collections.abc import Iterator

MAX_DELAY_S = 3.0
"""Longest wait between two reconnection attempts."""


def backoff(
    first: float = 0.1, factor: float = 2.0, cap: float = MAX_DELAY_S, jitter: float = 0.2
) -> Iterator[float]:
    """Delays in seconds: ``first``, growing by ``factor`` up to ``cap``, forever, each with up
    to ``jitter`` (a fraction) added at random so clients cut off together do not return in step."""
    delay = first
    while True:
        yield min(cap, delay) * (1 + random.random() * jitter)
        delay = min(cap, delay * factor)
