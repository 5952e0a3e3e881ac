"""The server's WebSocket protocol (faces/websocket.py) with real peers on loopback: keepalive
pings spread over connections opened together, and answered pings keep them open."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from tests.conftest import MS, start_server

INTERVAL = 400 * MS  # the server's ping interval in this test


async def first_pings(url: str, n: int, rounds: int) -> list[list[float]]:
    """Open ``n`` raw WebSocket connections at once (sans-I/O client, answering pings) and
    return, for each, when its first ``rounds`` pings arrived, in seconds after opening."""

    async def one() -> list[float]:
        uri = parse_uri(url)
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        proto = ClientProtocol(uri)
        proto.send_request(proto.connect())
        writer.write(b"".join(proto.data_to_send()))
        opened = time.monotonic()
        seen: list[float] = []
        while len(seen) < rounds:
            data = await asyncio.wait_for(reader.read(65536), 30)
            assert data, "the server closed the connection"
            proto.receive_data(data)
            for event in proto.events_received():
                if getattr(event, "opcode", None) is Opcode.PING:
                    seen.append(time.monotonic() - opened)
            writer.write(b"".join(proto.data_to_send()))  # the pongs
        writer.close()
        return seen

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_pings_of_connections_opened_together_are_spread_and_answered_ones_continue(
    tmp_path: Path,
) -> None:
    """Regression: uvicorn pings each connection exactly one interval after it opened, so a
    thousand sessions opened together were all pinged in the same instant, every interval,
    and the fan-out stalled on the pongs (bench/feed.py p99 117 ms). The first ping now comes
    at a random point of the second half of the first interval."""
    srv = start_server(tmp_path / "data", ws_ping_seconds=INTERVAL)
    try:
        with srv.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
            r = c.post("/api/v1/projects/p1/feedtokens", json={"name": "pings"})
            token = r.json()["token"]
        url = srv.url.replace("http://", "ws://") + f"/feed/{token}/"
        pings = await first_pings(url, n=20, rounds=2)
    finally:
        srv.stop()
    firsts = sorted(p[0] for p in pings)
    assert firsts[0] >= 0.45 * INTERVAL  # not before half an interval (a little scheduling slack)
    assert firsts[-1] - firsts[0] > 0.1 * INTERVAL  # spread, not one instant
    for first, second in pings:  # answered: pinged again about an interval later
        assert second - first > 0.5 * INTERVAL


def test_text_frames_made_once_are_the_frames_websockets_makes() -> None:
    """``text_frame`` writes the bytes ``websockets`` would for a server's text message, at each
    length encoding (7-bit, 16-bit, 64-bit) and at their edges."""
    from websockets.frames import Frame

    from streamgauge.wire.wsframes import text_frame

    for n in (0, 1, 125, 126, 127, 65535, 65536, 70_000):
        message = (b'{"type":"data","x":"' + b"\xc3\xa9" * n)[:n]
        expected = Frame(Opcode.TEXT, message).serialize(mask=False, extensions=[])
        assert text_frame(message) == expected, n


async def test_the_lean_receive_queue_keeps_order_and_survives_a_cancelled_getter() -> None:
    """The protocol's receive queue (``_Queue``): items in order, a getter waits for the next
    put, and a getter cancelled after being woken leaves the item to the next one."""
    import asyncio

    from streamgauge.faces.websocket import _Queue

    q = _Queue()
    assert q.empty()
    q.put_nowait(1)
    q.put_nowait(2)
    assert not q.empty()
    assert [await q.get(), await q.get()] == [1, 2]
    assert q.empty()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put_nowait(3)
    first.cancel()  # woken by the put, cancelled before it ran
    assert await second == 3
    assert first.cancelled()
    assert q.empty()


async def test_an_idle_feed_connection_keeps_no_handshake_state_and_still_reads_frames(
    tmp_path: Path,
) -> None:
    """What an idle push-feed connection holds (issue 17, memory per idle session): its
    protocol's attributes in slots (no instance dict), a scope cut to its type and extensions
    once the session is detached, and websockets' frame parser alone (not the handshake
    parser that kept the request in its frame). Frames from the client are still read: the
    stop message ends the session with 1000."""
    import gc

    from websockets.asyncio.client import connect
    from websockets.protocol import Protocol

    from streamgauge.faces.websocket import DirectWebSocketProtocol

    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
            token = c.post("/api/v1/projects/p1/feedtokens", json={"name": "idle"}).json()["token"]
        url = srv.url.replace("http://", "ws://") + f"/feed/{token}/?vars=air_temp"
        async with connect(url, compression=None) as ws:
            assert '"success"' in str(await ws.recv())
            deadline = time.monotonic() + 10
            while True:
                found = [
                    o
                    for o in gc.get_objects()
                    if isinstance(o, DirectWebSocketProtocol) and not o.disconnected
                ]
                if found and found[0].detached or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            assert len(found) == 1 and found[0].detached
            protocol = found[0]
            assert vars(protocol) == {}
            assert set(protocol.scope) == {"type", "extensions"}
            assert protocol.conn.parser.gi_code is Protocol.parse.__code__
            await ws.send('{"feed_action": "stop"}')
            async for _ in ws:
                pass
            assert ws.close_code == 1000
    finally:
        srv.stop()
