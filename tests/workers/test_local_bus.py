"""The bus between the writer process and its workers (``bus/local.py``), over a socket pair."""

from __future__ import annotations

import asyncio
import socket

import pytest

from streamgauge.bus import local
from streamgauge.bus.api import BusMessage
from streamgauge.bus.local import LocalBus, Relay
from streamgauge.domain.feeds import FeedSession, FeedToken


async def test_runs_arrive_in_order_and_a_closed_writer_is_reported() -> None:
    ours, theirs = socket.socketpair()
    heard: list[BusMessage] = []
    lost = asyncio.Event()
    bus = LocalBus(theirs, "worker-1", lost.set)
    got = asyncio.Event()

    async def handler(msg: BusMessage) -> None:
        heard.append(msg)
        if len(heard) == 3:
            got.set()

    await bus.start(handler, lambda: None)
    relay = Relay()
    await relay.add("1", ours)
    relay.send("meta", 1, 2, b"m")
    relay.send("batch", 1, 10, b"x" * 100_000)
    relay.send("batch", 11, 11, b"")
    await asyncio.wait_for(got.wait(), 10)
    assert [(m.kind, m.first, m.last, len(m.payload)) for m in heard] == [
        ("meta", 1, 2, 1),
        ("batch", 1, 10, 100_000),
        ("batch", 11, 11, 0),
    ]
    assert bus.connected
    relay.close()
    await asyncio.wait_for(lost.wait(), 10)
    assert not bus.connected
    await bus.close()


async def test_a_worker_that_does_not_read_misses_runs_instead_of_stalling_the_writer() -> None:
    ours, theirs = socket.socketpair()
    relay = Relay(max_buffer=1 << 16)
    await relay.add("1", ours)
    for n in range(200):  # nobody reads ``theirs``
        relay.send("batch", n + 1, n + 1, b"x" * 4096)
    assert relay.skipped > 0
    assert relay.sent + relay.skipped == 200
    relay.close()
    theirs.close()


async def test_control_frames_go_both_ways_between_batches() -> None:
    ours, theirs = socket.socketpair()
    heard: list[BusMessage] = []
    at_worker: list[tuple[int, int, bytes]] = []
    at_writer: list[tuple[str, int, int, bytes]] = []
    got = asyncio.Event()
    bus = LocalBus(theirs, "worker-1", lambda: None)

    def worker_control(code: int, first: int, last: int, payload: bytes) -> None:
        at_worker.append((code, first, payload))
        if code == local.METRICS_ASK:  # answered at once, as a worker's engine does
            bus.send_control(local.METRICS, first, 0, b"# metrics\n")

    def writer_control(name: str, code: int, first: int, last: int, payload: bytes) -> None:
        at_writer.append((name, code, first, payload))
        got.set()

    async def handler(msg: BusMessage) -> None:
        heard.append(msg)

    bus.on_control = worker_control
    await bus.start(handler, lambda: None)
    relay = Relay(on_control=writer_control)
    await relay.add("1", ours)
    keys = local.encode_keys([("addr", "127.0.0.1"), ("key", "k1")])
    relay.send("batch", 1, 1, b"x")
    assert relay.send_control(local.AUTH_FAILED, 0, 0, keys) == 1
    assert relay.send_control(local.METRICS_ASK, 7, 0, b"", to="1") == 1
    assert relay.send_control(local.METRICS_ASK, 8, 0, b"", to="2") == 0  # no such worker
    relay.send("batch", 2, 2, b"y")
    await asyncio.wait_for(got.wait(), 10)
    assert at_writer == [("1", local.METRICS, 7, b"# metrics\n")]
    assert [(m.first, m.payload) for m in heard] == [(1, b"x"), (2, b"y")]
    assert at_worker[0] == (local.AUTH_FAILED, 0, keys)
    assert local.decode_keys(at_worker[0][2]) == [("addr", "127.0.0.1"), ("key", "k1")]
    relay.close()
    await bus.close()


def test_a_control_payload_that_is_not_keys_is_refused() -> None:
    for bad in (b"{}", b"[[1, 2]]", b'[["addr"]]', b"not json"):
        with pytest.raises(ValueError):
            local.decode_keys(bad)


def test_feed_sessions_cross_in_a_control_payload() -> None:
    tok = FeedToken(3, "ft01", 7, "lab", "2026-12-07T00:00:00Z")
    sessions = [
        (tok, FeedSession("s1", 3, "vars=air_temp", 42)),
        (tok, FeedSession("s2", 3, "", 0)),
    ]
    got = local.decode_sessions(local.encode_sessions(sessions))
    assert [(t, (s.id, s.token_pk, s.args, s.position)) for t, s in got] == [
        (tok, ("s1", 3, "vars=air_temp", 42)),
        (tok, ("s2", 3, "", 0)),
    ]
    assert local.decode_sessions(local.encode_sessions([])) == []
    for bad in (b"{}", b"[[1, 2]]", b'[[1, "a", 2, "n", "c", "s", "args", "9"]]', b"not json"):
        with pytest.raises(ValueError):
            local.decode_sessions(bad)
