"""The positions of durable consumers (``store.api.ConsumerPositions``, used by
``core/consumers``): absent until saved, the last save wins, per name, kept across a reopen,
forgotten on request."""

from __future__ import annotations

from tests.store.conformance.harness import Harness


async def test_consumer_positions(backend: Harness) -> None:
    positions = backend.positions()
    assert await positions.load("dt-connector:a") is None
    await positions.save("dt-connector:a", 5)
    await positions.save("rules", 0)
    await positions.save("dt-connector:a", 12)  # moves, not a second position
    assert await positions.load("dt-connector:a") == 12
    assert await positions.load("rules") == 0
    await backend.reopen()
    positions = backend.positions()
    assert await positions.load("dt-connector:a") == 12
    assert await positions.load("rules") == 0
    await positions.forget("dt-connector:a")
    assert await positions.load("dt-connector:a") is None
    assert await positions.load("rules") == 0
    await positions.forget("never-saved")  # forgetting nothing is no error
    assert await positions.load("never-saved") is None


async def test_a_large_position_round_trips(backend: Harness) -> None:
    positions = backend.positions()
    await positions.save("c", 2**62 + 3)
    assert await positions.load("c") == 2**62 + 3
