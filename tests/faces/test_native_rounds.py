"""A live native stream's round delivery (``deliver_chunks``: every ready stream's HTTP chunk of a
fan-out round made in one call) against each stream's sink taking its share."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core.filterlang import parse_filter_on
from streamgauge.core.filters import CompiledSelection, Selection
from streamgauge.core.framing import NDJSON, SSE
from streamgauge.core.hub import SLICE_SUBSCRIBERS, STACK_MIN, Hub, Item, Subscription
from streamgauge.core.registry import Registry
from streamgauge.core.units import ENGLISH, METRIC
from streamgauge.faces.limits import ChunkWriter
from streamgauge.faces.native.observations import _CHUNKED
from tests.faces.test_feed_messages import _registry
from tests.faces.test_feed_rounds import _batch


class _Chunks(ChunkWriter):
    """A chunk writer without a connection: it keeps the chunks, and is ready or not as the
    test says (not ready: its buffer is full, the sink declines the round)."""

    __slots__ = ("written", "full")

    def __init__(self) -> None:  # no uvicorn cycle: nothing here reads one
        self.written = bytearray()
        self.full = False

    @property
    def paused(self) -> bool:
        return self.full

    @property
    def ready(self) -> bool:
        return not self.full

    def write(self, body: bytes) -> bool:
        if body:
            self.written += b"%x\r\n%s\r\n" % (len(body), body)
        return True

    def write_chunk(self, chunk: bytes) -> None:
        self.written += chunk


SELECTIONS = [
    Selection(1),
    Selection(1, variables=frozenset({"air_temp"})),
    Selection(1, variables=frozenset({"wind_speed"})),
    Selection(1, expr=parse_filter_on("(air_temp > 4)")),
]


class _Stream:
    """A live native stream as ``engine.stream`` sets it up when the connection offers a
    ``ChunkWriter``: its sink writes a round's items as one chunk, its state is the writer."""

    def __init__(self, reg: Registry, number: int, rounds: bool) -> None:
        self.writer = _Chunks()
        framing = SSE if number % 3 == 2 else NDJSON
        if rounds:
            framing = _CHUNKED[framing.name]
        self.sub = Subscription(
            CompiledSelection(SELECTIONS[number % len(SELECTIONS)], reg),
            framing,
            reg,
            1 << 20,
            ENGLISH if number % 5 == 1 else METRIC,
        )
        self.sub.selection.compile()
        self.sub.state = self.writer if rounds else None
        self.sub.sink = self.sink

    def sink(self, items: list[Item], position: int) -> bool:
        w = self.writer
        return not items or (not w.paused and w.write(b"".join([i.data for i in items])))

    def drain(self) -> None:
        """What the stream's generator does when the sink declined a round: its queued items
        go out through ASGI (one chunk), then the sink is given again."""
        items = []
        while (item := self.sub.take()) is not None:
            items.append(item)
        if items:
            self.writer.write(b"".join([i.data for i in items]))
        self.sub.sink = self.sink


STREAMS = SLICE_SUBSCRIBERS + STACK_MIN  # two slices of a round


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(-1, 24), min_size=1, max_size=40),  # the batch's series pks
            st.sets(st.integers(0, STREAMS - 1)),  # streams whose connection is full
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=40, deadline=None)
def test_round_delivery_writes_what_the_sinks_write(
    rounds: list[tuple[list[int], set[int]]],
) -> None:
    """Each stream's body gets the same bytes whether the round's chunks are made for all at
    once (``deliver_chunks``) or by each stream's sink: NDJSON and SSE, metric and English,
    filters, and streams whose connection is full in a round (they queue and drain)."""
    reg, _ = _registry()
    hubs = {True: Hub(), False: Hub()}
    streams = {k: [_Stream(reg, i, k) for i in range(STREAMS)] for k in hubs}
    for k, hub in hubs.items():
        for s in streams[k]:
            hub.subscribe(s.sub)
    cursor = 1
    for n, (series, full) in enumerate(rounds):
        for k, hub in hubs.items():
            for i, s in enumerate(streams[k]):
                s.writer.full = i in full
            hub.publish(_batch(series, cursor, n))
            hub.flush()
            assert hub._stacks  # the round used the stack, so ``deliver`` was asked
            for s in streams[k]:
                s.writer.full = False
                s.drain()
        cursor += len(series) + 2
        for a, b in zip(streams[True], streams[False], strict=True):
            assert a.writer.written == b.writer.written
            assert a.sub.direct_last == b.sub.direct_last


def test_round_delivery_takes_the_ready_streams_and_leaves_the_rest() -> None:
    """The streams whose connection is ready are written by ``deliver_chunks`` (their sink is
    not called); a full one is left to its sink, which declines, and queues."""
    reg, _ = _registry()
    hub = Hub()
    streams = [_Stream(reg, 0, True) for _ in range(STACK_MIN)]
    calls: list[int] = []
    for i, s in enumerate(streams):

        def counted(items: list[Item], position: int, i: int = i, s: _Stream = s) -> bool:
            calls.append(i)
            return s.sink(items, position)

        s.sub.sink = counted
        hub.subscribe(s.sub)
    streams[3].writer.full = True
    hub.publish(_batch([1, 2, 3], 1, 0))
    assert calls == [3]
    assert streams[3].sub.sink is None and len(streams[3].sub.queue) == 1
    for i, s in enumerate(streams):
        if i != 3:
            size, _, rest = bytes(s.writer.written).partition(b"\r\n")  # one chunk
            assert int(size, 16) == len(rest) - 2 > 0 and rest.endswith(b"\r\n")
            assert s.sub.direct_last == 3
