"""The simulator stops gracefully: ``stop`` ends a run quietly, at any stage of it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import httpx
import pytest

from streamgauge.sim import SimStats, run_simulation, run_until_signalled
from streamgauge.sim import runner as runner_mod
from tests.sim.test_network import FakeServer

URL = "http://127.0.0.1:9"


async def test_stop_ends_an_endless_run_after_the_batch_in_flight() -> None:
    """issue 11 item 23: setting ``stop`` ends a run (duration None) with its statistics, after
    the batch in flight got its answer."""
    server = FakeServer()
    stop = asyncio.Event()
    seen: list[SimStats] = []

    def progress(stats: SimStats) -> None:
        seen.append(stats)
        if stats.batches >= 2:
            stop.set()

    stats = await run_simulation(
        URL,
        "tok",
        stations=2,
        rate=400.0,
        on_progress=progress,
        transport=httpx.MockTransport(server.handler),
        stop=stop,
    )
    assert stats.batches == 2 and stats.posted == stats.accepted == len(server.obs) > 0
    assert stats.rejected_batches == 0 and seen[-1] is stats


async def test_stop_during_retries_gives_up_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """issue 11 item 23: a stop while a batch waits for its retry (the server is gone) ends the
    run at once, without a "gave up on a batch" warning and without counting the batch as
    rejected."""
    server = FakeServer()
    stop = asyncio.Event()
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        if request.url.path.endswith("/observations"):
            attempts += 1
            stop.set()  # the user presses Ctrl-C while the server is unreachable
            raise httpx.ConnectError("connection refused", request=request)
        return server.handler(request)

    caplog.set_level(logging.INFO, logger="streamgauge.sim")
    stats = await run_simulation(
        URL, "tok", stations=1, rate=400.0, transport=httpx.MockTransport(handler), stop=stop
    )
    assert attempts == 1  # no retry once stopping
    assert stats.batches == 1 and stats.rejected_batches == 0 and stats.posted == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "gave up" not in caplog.text


async def test_stop_during_setup_abandons_it() -> None:
    """issue 11 item 23: a stop while the setup waits on the server ends the run with empty
    statistics (the setup request is cancelled, nothing is posted)."""
    stop = asyncio.Event()
    arrived = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await asyncio.Event().wait()  # a server that never answers
        raise AssertionError("unreachable")

    run = asyncio.create_task(
        run_simulation(URL, "tok", stations=1, transport=httpx.MockTransport(handler), stop=stop)
    )
    await arrived.wait()
    stop.set()
    stats = await run
    assert stats.batches == 0 and stats.posted == 0


async def test_cancel_still_cancels() -> None:
    """A cancelled run (not stopped) still raises CancelledError, during setup too."""
    arrived = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    run = asyncio.create_task(
        run_simulation(
            URL, "tok", stations=1, transport=httpx.MockTransport(handler), stop=asyncio.Event()
        )
    )
    await arrived.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_sigterm_stops_run_until_signalled() -> None:
    """issue 11 item 23: SIGTERM (how the demo stops its simulator) and SIGINT (Ctrl-C) stop
    ``run_until_signalled`` gracefully; it reports which signal, and removes its handlers."""
    server = FakeServer()
    before = signal.getsignal(signal.SIGTERM)
    loop = asyncio.get_running_loop()

    def progress(stats: SimStats) -> None:
        if stats.batches == 1:
            loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)

    stats, signum = await run_until_signalled(
        URL,
        "tok",
        stations=1,
        rate=400.0,
        on_progress=progress,
        transport=httpx.MockTransport(server.handler),
    )
    assert signum == signal.SIGTERM
    assert stats.batches >= 1 and stats.accepted == len(server.obs) > 0
    assert signal.getsignal(signal.SIGTERM) == before


async def test_retry_delay_is_unchanged_without_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``stop``, retries still wait and the batch is given up after MAX_ATTEMPTS."""
    monkeypatch.setattr(runner_mod, "RETRY_DELAY_S", 0.0)
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    stats = SimStats()
    async with httpx.AsyncClient(base_url=URL, transport=httpx.MockTransport(handler)) as client:
        await runner_mod._post_batch(client, "p", b"{}\n", 1, stats)
    assert calls == runner_mod.MAX_ATTEMPTS and stats.rejected_batches == 1
