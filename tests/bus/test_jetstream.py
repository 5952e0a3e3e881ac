"""The NATS JetStream bus against the machine's NATS server (127.0.0.1:4222)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from streamgauge.bus.api import BusMessage, BusUnavailable
from streamgauge.bus.codec import BadMessage, decode_batch, encode_batch
from streamgauge.bus.jetstream import NatsBus, check_cluster_name, delete_cluster_stream
from streamgauge.domain.batch import Batch
from tests.conftest import free_port

NATS_URL = os.environ.get("STREAMGAUGE_TEST_NATS", "nats://127.0.0.1:4222")


def _nats_up() -> bool:
    host, port = NATS_URL.removeprefix("nats://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


if not _nats_up():
    if os.environ.get("CI"):
        raise RuntimeError(f"NATS is not answering at {NATS_URL} (CI requires it)")
    pytest.skip(f"NATS is not answering at {NATS_URL}", allow_module_level=True)


@pytest.fixture
async def cluster() -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    await delete_cluster_stream(NATS_URL, name)


def make_batch(first: int, n: int, project_pk: int = 3) -> Batch:
    cur = np.arange(first, first + n, dtype=np.int64)
    return Batch(project_pk, cur, cur % 7, cur * 1000, [float(c) / 2 for c in cur], cur % 2)


def test_codec_round_trip() -> None:
    b = make_batch(10, 5)
    b.values[1] = "text"
    b.values[2] = None
    back = decode_batch(encode_batch(b))
    assert back.project_pk == 3
    for col in ("cursors", "series", "times", "qc"):
        assert np.array_equal(getattr(back, col), getattr(b, col))
    assert back.values == b.values


def test_codec_refuses_garbage() -> None:
    with pytest.raises(BadMessage):
        decode_batch(b"\x00not msgpack")


def test_cluster_name_is_checked() -> None:
    assert check_cluster_name("prod-1_a") == "prod-1_a"
    for bad in ("", "a.b", "a b", "x" * 65, "a>"):
        with pytest.raises(ValueError):
            check_cluster_name(bad)


async def test_every_node_hears_every_publish_in_order(cluster: str) -> None:
    got: dict[str, list[tuple[int, int, str]]] = {"a": [], "b": []}
    buses = {n: NatsBus(NATS_URL, cluster, node_id=n) for n in ("a", "b")}
    for n, bus in buses.items():

        async def handler(m: BusMessage, n: str = n) -> None:
            got[n].append((m.first, m.last, m.origin))

        await bus.start(handler, lambda: None)
    try:
        for i in range(20):
            b = make_batch(1 + i * 5, 5)
            assert await buses["a" if i % 2 else "b"].publish(
                "batch", b.first, b.last, encode_batch(b)
            )
        for _ in range(100):
            if all(len(v) == 20 for v in got.values()):
                break
            await asyncio.sleep(0.05)
        for n in ("a", "b"):
            assert [f for f, _, _ in got[n]] == [1 + i * 5 for i in range(20)]
            assert {o for _, _, o in got[n]} == {"a", "b"}
    finally:
        for bus in buses.values():
            await bus.close()


async def test_republish_of_a_run_is_dropped(cluster: str) -> None:
    seen: list[int] = []

    async def handler(m: BusMessage) -> None:
        seen.append(m.first)

    bus = NatsBus(NATS_URL, cluster)
    await bus.start(handler, lambda: None)
    try:
        for _ in range(3):
            assert await bus.publish("batch", 1, 4, b"x")
        assert await bus.publish("batch", 5, 5, b"y")
        for _ in range(100):
            if 5 in seen:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert seen == [1, 5]
    finally:
        await bus.close()


async def test_two_clusters_on_one_server_do_not_see_each_other() -> None:
    c1, c2 = f"t{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}"
    seen: dict[str, list[int]] = {c1: [], c2: []}
    buses = []
    try:
        for c in (c1, c2):

            async def handler(m: BusMessage, c: str = c) -> None:
                seen[c].append(m.first)

            bus = NatsBus(NATS_URL, c)
            await bus.start(handler, lambda: None)
            buses.append(bus)
        await buses[0].publish("batch", 1, 1, b"one")
        await buses[1].publish("meta", 7, 7, b"seven")
        for _ in range(100):
            if seen[c1] and seen[c2]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert seen == {c1: [1], c2: [7]}
    finally:
        for bus in buses:
            await bus.close()
        for c in (c1, c2):
            await delete_cluster_stream(NATS_URL, c)


async def test_unreachable_bus_is_reported() -> None:
    bus = NatsBus(f"nats://127.0.0.1:{free_port()}", "nobody", connect_timeout=1.0)

    async def handler(m: BusMessage) -> None:
        pass

    with pytest.raises(BusUnavailable, match="NATS at nats://127.0.0.1"):
        await bus.start(handler, lambda: None)
    assert await bus.publish("batch", 1, 1, b"") is False
