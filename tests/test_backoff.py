"""The retry schedule (``core/backoff.py``): pure, property-tested."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.backoff import MAX_RETRY_AFTER, delays, next_delay, retry_after

firsts = st.floats(min_value=0.001, max_value=100, allow_nan=False)
factors = st.floats(min_value=1, max_value=10, allow_nan=False)
jitters = st.floats(min_value=0, max_value=0.99, allow_nan=False)


@given(first=firsts, factor=factors, extra=st.floats(0, 1000), jitter=jitters, seed=st.integers())
def test_every_delay_is_within_its_bounds(
    first: float, factor: float, extra: float, jitter: float, seed: int
) -> None:
    cap = first + extra
    base = first
    for d in itertools.islice(
        delays(first=first, factor=factor, cap=cap, jitter=jitter, rng=random.Random(seed)), 60
    ):
        assert 0 < d <= cap
        assert d >= base * (1 - jitter) * (1 - 1e-9)
        base = min(cap, base * factor)


@given(first=firsts, factor=factors, extra=st.floats(0, 1000))
def test_without_jitter_the_schedule_grows_then_stays_at_the_cap(
    first: float, factor: float, extra: float
) -> None:
    cap = first + extra
    seq = list(itertools.islice(delays(first=first, factor=factor, cap=cap, jitter=0), 200))
    assert seq[0] == first
    assert all(a <= b for a, b in itertools.pairwise(seq))
    assert max(seq) <= cap
    if factor >= 1.1:  # grows fast enough to reach any cap here within 200 steps
        assert seq[-1] == cap
        reached = seq.index(cap)
        assert all(d == cap for d in seq[reached:])


def test_the_default_schedule() -> None:
    seq = list(itertools.islice(delays(jitter=0), 12))
    assert seq == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_a_seeded_rng_gives_a_repeatable_schedule() -> None:
    a = list(itertools.islice(delays(rng=random.Random(7)), 20))
    b = list(itertools.islice(delays(rng=random.Random(7)), 20))
    assert a == b
    assert a != list(itertools.islice(delays(jitter=0), 20))


@pytest.mark.parametrize(
    "kw",
    [{"first": 0}, {"first": -1}, {"factor": 0.5}, {"cap": 0.5}, {"jitter": 1}, {"jitter": -0.1}],
)
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        next(delays(**kw))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("-3", None),
        ("1.5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("٣", None),  # a non-ASCII digit
        ("99999999", MAX_RETRY_AFTER),
    ],
)
def test_retry_after_takes_integer_seconds_only(header: str | None, seconds: float | None) -> None:
    assert retry_after(header) == seconds


def test_next_delay_prefers_retry_after_and_still_advances() -> None:
    schedule = delays(jitter=0)
    assert next_delay(schedule, None) == 1
    assert next_delay(schedule, 7.0) == 7.0  # the receiver's wish; the schedule consumed 2
    assert next_delay(schedule, None) == 4
