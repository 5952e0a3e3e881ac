"""The simulator's I/O: create the network on a server and feed it observations over HTTP."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx
import orjson

from .network import (
    Network,
    Observation,
    Scheduler,
    ValueGenerator,
    build_network,
    device_payloads,
    project_payload,
    site_payloads,
)

__all__ = [
    "SimStats",
    "SimulationError",
    "encode_ndjson",
    "run_simulation",
    "run_until_signalled",
    "setup_network",
]

log = logging.getLogger("streamgauge.sim")
T = TypeVar("T")

API: Final = "/api/v1"
BULK_CHUNK: Final = 500  # objects per bulk create request
TICK_S: Final = 0.25  # one observations POST per tick
MAX_ATTEMPTS: Final = 4  # per batch, for transport errors, 429 and 5xx
SETUP_CONCURRENCY: Final = 8
RETRY_DELAY_S = 0.2  # first retry delay, doubled each time


class SimulationError(RuntimeError):
    """A fatal error: the server refused the setup or the credentials."""


@dataclass(slots=True)
class SimStats:
    posted: int = 0  # observations sent in batches that got an answer
    accepted: int = 0  # observations the server stored
    duplicates: int = 0  # observations the server already had (e.g. after a retry)
    rejected_batches: int = 0  # batches refused (4xx) or given up on after retries
    batches: int = 0  # observation POSTs made (one per batch, retries not counted)
    elapsed: float = 0.0  # seconds since the feed started


def _error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        text = f"HTTP {resp.status_code} {err.get('code', '')}: {err.get('message', '')}"
        details = err.get("details")
        if details:
            text += f" details={str(details)[:500]}"
        return text
    return f"HTTP {resp.status_code}: {str(body)[:300]}"


def _check(resp: httpx.Response, what: str, *, ok_conflict: bool = False) -> None:
    if resp.status_code in (200, 201, 204):
        return
    if ok_conflict and resp.status_code == 409:
        return
    raise SimulationError(f"{what} failed: {_error_text(resp)}")


def _chunks(items: Sequence[dict[str, Any]], size: int) -> list[Sequence[dict[str, Any]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def setup_network(
    client: httpx.AsyncClient, project: str, stations: int, seed: int
) -> Network:
    """Create the project, sites, devices and variables on the server; safe to repeat.

    ``client`` must carry the server's ``base_url`` and the ``Authorization`` header.
    Existing objects are left as they are (``?if_exists=skip``); variables are also posted per
    device so that devices created earlier without them get them.
    """
    network = build_network(project, stations, seed)
    skip = {"if_exists": "skip"}

    resp = await client.post(f"{API}/projects", params=skip, json=project_payload(network))
    _check(resp, f"creating project {project!r}", ok_conflict=True)

    base = f"{API}/projects/{quote(project, safe='')}"
    for chunk in _chunks(site_payloads(network), BULK_CHUNK):
        resp = await client.post(f"{base}/sites", params=skip, json=list(chunk))
        _check(resp, "creating sites")
    for chunk in _chunks(device_payloads(network), BULK_CHUNK):
        resp = await client.post(f"{base}/devices", params=skip, json=list(chunk))
        _check(resp, "creating devices")

    sem = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def ensure_variables(device: str, variables: list[dict[str, Any]]) -> None:
        async with sem:
            path = f"{base}/devices/{quote(device, safe='')}/variables"
            r = await client.post(path, params=skip, json=variables)
        _check(r, f"creating variables of device {device!r}")

    await asyncio.gather(
        *(
            ensure_variables(st.device_id, [v.payload() for v in st.variables])
            for st in network.stations
        )
    )
    return network


def encode_ndjson(observations: Sequence[Observation]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in observations)


async def _stopped_within(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile; True if it is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return False
    return True


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event | None) -> T | None:
    """``work``'s result, or None (``work`` cancelled) if ``stop`` is set first."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not only the work
    return None


async def _post_batch(
    client: httpx.AsyncClient,
    project: str,
    body: bytes,
    n: int,
    stats: SimStats,
    stop: asyncio.Event | None = None,
) -> None:
    url = f"{API}/projects/{quote(project, safe='')}/observations"
    headers = {"Content-Type": "application/x-ndjson"}
    stats.batches += 1
    delay = RETRY_DELAY_S
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            resp = await client.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if resp.status_code == 200:
                try:
                    data = resp.json()
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    data = {"accepted": n}
                stats.posted += n
                stats.accepted += int(data.get("accepted", 0))
                stats.duplicates += int(data.get("duplicates", 0))
                return
            if resp.status_code in (401, 403):
                raise SimulationError(f"posting observations: {_error_text(resp)}")
            if resp.status_code != 429 and resp.status_code < 500:
                stats.posted += n
                stats.rejected_batches += 1
                log.warning("batch of %d observations rejected: %s", n, _error_text(resp))
                return
            problem = _error_text(resp)
        if attempt == MAX_ATTEMPTS:
            break
        log.info("retrying batch (attempt %d): %s", attempt, problem)
        if await _stopped_within(stop, delay):
            return  # asked to stop: no more retries, and nothing to warn about
        delay *= 2
    stats.rejected_batches += 1
    log.warning("gave up on a batch of %d observations: %s", n, problem)


async def run_simulation(
    url: str,
    token: str,
    *,
    project: str = "demo",
    stations: int = 10,
    rate: float = 100.0,
    duration: float | None = None,
    seed: int = 1,
    on_progress: Callable[[SimStats], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    stop: asyncio.Event | None = None,
) -> SimStats:
    """Set up the network on the server at ``url`` and post observations at ``rate`` per second.

    Runs for ``duration`` seconds, or until ``stop`` is set (or until cancelled) when
    ``duration`` is None. Observations are sent as NDJSON, one batch about every 0.25 s;
    ``on_progress`` is called after each batch. Setting ``stop`` is the graceful way to end a
    run: a batch in flight gets its answer, no retry is started, nothing is logged, and the
    statistics so far are returned (a stop during setup abandons the setup). A cancelled run
    raises ``CancelledError`` instead. ``transport`` is for tests.
    """
    if stations < 0:
        raise ValueError("stations must be >= 0")
    if not rate > 0.0:
        raise ValueError("rate must be > 0")
    if duration is not None and duration < 0:
        raise ValueError("duration must be >= 0")
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(30.0, connect=10.0)
    stats = SimStats()
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=timeout, transport=transport
    ) as client:
        network = await _unless_stopped(setup_network(client, project, stations, seed), stop)
        if network is None:
            return stats
        scheduler = Scheduler(network, ValueGenerator(network), rate)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while stop is None or not stop.is_set():
            now = loop.time() - start
            wake = (math.floor(now / TICK_S) + 1) * TICK_S  # next tick, skipping missed ones
            if duration is not None:
                wake = min(wake, duration)
            if wake > now and await _stopped_within(stop, wake - now):
                break
            elapsed = loop.time() - start
            final = duration is not None and elapsed >= duration
            if final:
                assert duration is not None
                elapsed = duration
            batch = scheduler.next_batch(elapsed, int(time.time() * 1000))
            if batch:
                await _post_batch(client, project, encode_ndjson(batch), len(batch), stats, stop)
            stats.elapsed = loop.time() - start
            if on_progress is not None and (batch or final):
                on_progress(stats)
            if final:
                break
        stats.elapsed = loop.time() - start
    return stats


STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


async def run_until_signalled(url: str, token: str, **options: Any) -> tuple[SimStats, int | None]:
    """:func:`run_simulation` that SIGINT or SIGTERM stops gracefully (see ``stop`` there).

    Returns the statistics and the signal that stopped the run (None if it ran its
    ``duration``). A second signal cancels the run at once (``CancelledError``). Must run in
    the main thread; the signal handlers are removed on return.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if stop.is_set() and task is not None:
            task.cancel()  # a second signal: do not wait for the batch in flight
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        stats = await run_simulation(url, token, stop=stop, **options)
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    return stats, (received[0] if received else None)
