"""Retry timing as a pure policy: a generator of delays, and ``Retry-After`` parsing.

The delivery loop only sleeps for what it is given (websockets' ``backoff()`` pattern), so the
schedule is tested with plain function calls and a seeded ``random.Random``.

Delay ``n`` (from 0) is ``min(cap, first * factor**n)`` scaled by a random factor in
``[1 - jitter, 1 + jitter]`` and never more than ``cap``: every delay is in
``[(1 - jitter) * base_n, cap]``, and the un-jittered base never decreases and stays at ``cap``
once it gets there.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

MAX_RETRY_AFTER = 3600.0  # a receiver cannot park a delivery for longer than this per attempt


def delays(
    *,
    first: float = 1.0,
    factor: float = 2.0,
    cap: float = 300.0,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """An endless sequence of retry delays in seconds (exponential, capped, jittered)."""
    if not first > 0:
        raise ValueError("first must be positive")
    if not factor >= 1:
        raise ValueError("factor must be at least 1")
    if not cap >= first:
        raise ValueError("cap must be at least first")
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    rand = rng if rng is not None else random.Random()
    base = first
    while True:
        scale = 1.0 + rand.uniform(-jitter, jitter) if jitter else 1.0
        yield min(cap, base * scale)
        base = min(cap, base * factor)


def retry_after(value: str | None, *, limit: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds from an integer ``Retry-After`` header (bounded by ``limit``); None when the header
    is absent or not a non-negative integer (HTTP dates are not honoured: the schedule applies)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        return None
    return min(float(int(text)), limit)


def next_delay(schedule: Iterator[float], retry_after_seconds: float | None) -> float:
    """The wait before the next attempt: the receiver's ``Retry-After`` when it sent one, else the
    schedule's next delay. The schedule advances either way, so a receiver asking for short waits
    does not reset the growth."""
    scheduled = next(schedule)
    return scheduled if retry_after_seconds is None else retry_after_seconds
