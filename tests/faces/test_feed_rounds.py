"""The feed's round delivery (``deliver_round``: every ready session's frames of a fan-out round
made in one call) against each session's sink taking its share (the frames themselves:
tests/wire/test_wsframes.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from fastapi import WebSocket
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core.engine import Engine
from streamgauge.core.filters import CompiledSelection
from streamgauge.core.hub import SLICE_SUBSCRIBERS, STACK_MIN, Hub, Item, Subscription
from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.feeds import FeedSession
from streamgauge.faces.synoptic.args import parse_feed_args
from streamgauge.faces.synoptic.feed import _Sender, deliver_round
from streamgauge.faces.synoptic.messages import Metadata, feed_framing
from streamgauge.faces.websocket import WRITER, MessageWriter
from streamgauge.wire.wsframes import text_frame
from tests.faces.test_feed_messages import _registry

# -- the round -------------------------------------------------------------------------------


class _Writer(MessageWriter):
    """A message writer without a socket: it keeps what it is given, and is ready or not as
    the test says (not ready: its buffer is full, the sink declines the round)."""

    __slots__ = ("written", "full", "broken")

    def __init__(self) -> None:
        self.written = bytearray()
        self.full = False
        self.broken = False  # its writes raise

    @property
    def ready(self) -> bool:
        return not self.full

    @property
    def paused(self) -> bool:
        return self.full

    @property
    def open(self) -> bool:
        return True

    @property
    def raw(self) -> bool:
        return True

    async def writable(self) -> None:
        self.full = False

    def write_ready(self, frames: bytes) -> None:
        if self.broken:
            raise OSError("the connection broke")
        self.written += frames

    def send(self, messages: Sequence[bytes]) -> bool:
        for message in messages:
            self.written += text_frame(message)
        return True


class _Feeds:
    def moved(self, session: FeedSession, position: int, after_time: int | None = None) -> None:
        session.position = position


QUERIES = [
    "",
    "vars=air_temp",
    "vars=wind_speed&units=english",
    "stid=ST1,ST2,ST3",
    "stid=ST0&metadata=off",
    "timeformat=iso",
    "units=english&timeformat=iso&vars=air_temp,wind_speed",
    "metadata=off",
    "filter_on=(air_temp > 4)",
]


class _Session:
    """One feed session as the feed's stream sets it up, on a hub."""

    def __init__(self, reg: Registry, query: str, number: int, rows: int, rounds: bool) -> None:
        args = parse_feed_args(query, now_ms=int(time.time() * 1000), max_period_hours=48)
        self.writer = _Writer()
        self.session = FeedSession(f"s{number}", 1, query, 0)
        engine = SimpleNamespace(feeds=_Feeds(), settings=SimpleNamespace(feed_message_rows=rows))
        ws = SimpleNamespace(scope={"extensions": {WRITER: self.writer}})
        meta = Metadata(reg, args.select.units, args.metadata)
        self.sender = _Sender(cast(WebSocket, ws), cast(Engine, engine), self.session, meta)
        self.sub = Subscription(
            CompiledSelection(args.select.selection(1), reg),
            feed_framing(rows, args.timeformat, deliver_round if rounds else None),
            reg,
            1 << 20,
            args.select.units,
        )
        self.sub.selection.compile()
        self.sub.sink = self.sender.sink
        self.sub.state = self.sender

    def drain(self, position: int) -> None:
        """What the session's task does when the sink declined a round: send the queued
        items, then give the sink again (``Engine.events``)."""
        items = []
        while (item := self.sub.take()) is not None:
            items.append(item)
        if items:
            asyncio.run(self.sender.chunk(items, position))
        self.sub.sink = self.sender.sink


SESSIONS = SLICE_SUBSCRIBERS + STACK_MIN  # two slices of a round


def _batch(series: list[int], cursor: int, seed: int) -> Batch:
    n = len(series)
    rng = np.random.default_rng(seed)
    return Batch(
        1,
        np.arange(cursor, cursor + n, dtype=np.int64),
        np.array(series, np.int64),
        1_700_000_000_000 + 60_000 * rng.integers(0, 3, n),
        [float(v) for v in rng.integers(-20, 40, n)],
        np.zeros(n, np.int64),
        received_ns=time.monotonic_ns(),
    )


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(-1, 24), min_size=1, max_size=40),  # the batch's series pks
            st.sets(st.integers(0, SESSIONS - 1)),  # sessions whose connection is full
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([1000, 3]),  # most rows in a data message
)
@settings(max_examples=40, deadline=None)
def test_round_delivery_writes_what_the_sinks_write(
    rounds: list[tuple[list[int], set[int]]], rows: int
) -> None:
    """Each session gets the same bytes and moves to the same positions whether the round's
    frames are made for all at once (``deliver_round``) or by each session's sink: metadata
    before the rows that need it (and only once), every form (units, time format, metadata
    off, filters), sessions whose connection is full that round (they queue and drain), and
    rounds whose rows make several messages for some sessions."""
    reg, _ = _registry()
    hubs = {True: Hub(), False: Hub()}
    sessions = {
        k: [_Session(reg, QUERIES[i % len(QUERIES)], i, rows, k) for i in range(SESSIONS)]
        for k in hubs
    }
    for k, hub in hubs.items():
        for s in sessions[k]:
            hub.subscribe(s.sub)
    cursor = 1
    for n, (series, full) in enumerate(rounds):
        for k, hub in hubs.items():
            for i, s in enumerate(sessions[k]):
                s.writer.full = i in full
            hub.publish(_batch(series, cursor, n))
            hub.flush()
            assert hub._stacks  # the round used the stack, so ``deliver`` was asked
            for s in sessions[k]:
                s.writer.full = False
                s.drain(cursor + len(series) - 1)
        cursor += len(series) + 2  # gaps: other projects' rows
        for a, b in zip(sessions[True], sessions[False], strict=True):
            assert a.writer.written == b.writer.written, a.session.args
            assert a.session.position == b.session.position == cursor - 3


def test_round_delivery_takes_the_ready_sessions_and_leaves_the_rest() -> None:
    """In a round, the sessions whose connection is ready are written by ``deliver_round``
    (their sink is not called); a full one is left to its sink, which declines, and queues."""
    reg, _ = _registry()
    hub = Hub()
    sessions = [_Session(reg, "", i, 1000, True) for i in range(STACK_MIN)]
    for s in sessions:
        hub.subscribe(s.sub)
    calls: list[int] = []
    for i, s in enumerate(sessions):

        def counted(items: list[Item], position: int, i: int = i, s: _Session = s) -> bool:
            calls.append(i)
            return s.sender.direct(items, position)

        s.sub.sink = counted
    sessions[3].writer.full = True
    hub.publish(_batch([1, 2, 3], 1, 0))
    assert calls == [3]
    assert sessions[3].sub.sink is None and len(sessions[3].sub.queue) == 1
    for i, s in enumerate(sessions):
        if i != 3:
            assert s.writer.written and s.session.position == 3


def test_a_write_that_raises_leaves_the_next_sessions_their_metadata(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session whose write raises inside the round delivery fails alone: the sessions after
    it in the round get what their sinks would have written, metadata included (the plans
    taken for them are given back before their sinks run)."""
    reg, _ = _registry()
    hubs = {True: Hub(), False: Hub()}
    sessions = {k: [_Session(reg, "", i, 1000, k) for i in range(STACK_MIN)] for k in hubs}
    for k, hub in hubs.items():
        for s in sessions[k]:
            hub.subscribe(s.sub)
        sessions[k][5].writer.broken = True
        hub.publish(_batch([1, 2, 3, 4], 1, 0))
        assert sessions[k][5].sub.error is not None  # its stream ends with the error
    assert "deliver failed" in caplog.text
    for i, (a, b) in enumerate(zip(sessions[True], sessions[False], strict=True)):
        if i != 5:
            assert a.writer.written == b.writer.written and b'"type":"metadata"' in a.writer.written
