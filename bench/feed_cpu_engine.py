"""The engine of ``python -m bench feed-cpu``: the mesonet, the feed sessions, the batches and
the timed fan-out rounds, in one process without sockets.

``NativeStream`` is a live native NDJSON stream with the same filters (``feed-cpu --native``).

Run by path (``python bench/feed_cpu_engine.py``) with another source tree first on
``PYTHONPATH``, it serves ``feed-cpu --against TREE``: it sets up that tree's engine and
sessions (``bench.feed_cpu.Session`` as that tree defines it), prints ``ready``, then for each
line ``N`` on stdin runs the next ``N`` rounds and prints their CPU ms as a JSON list; an empty
line ends it. Both trees commit the same batches in the same order. It uses only what every
tree since the twentieth session has (``Session(engine, query, project_pk, number, deliver)``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.core.filters import CompiledSelection
from streamgauge.core.hub import Item, Subscription
from streamgauge.domain.model import Device, DeviceIn, ProjectIn, SiteIn
from streamgauge.domain.records import ProjectRec
from streamgauge.faces.limits import ChunkWriter
from streamgauge.faces.native.observations import _CHUNKED
from streamgauge.faces.synoptic.args import parse_feed_args
from streamgauge.store.sqlite import metadata

if TYPE_CHECKING:
    from bench.common import Mesonet, NdjsonEncoder
    from streamgauge.store.sqlite.store import Tx


@dataclass
class Rounds:
    """An engine with its feed sessions subscribed, committing batch after batch."""

    engine: Engine
    project: ProjectRec
    mesonet: Mesonet
    encoder: NdjsonEncoder
    t0: int
    rows: int
    sessions: list[Any]
    committed: int = 0
    spent: tuple[float, float] = (0.0, 0.0)  # the last round: wall and CPU seconds

    def body(self, k: int) -> bytes:
        """Batch ``k``: ``rows`` consecutive series (cycling), one minute after batch k - 1."""
        m = self.mesonet
        s = np.arange(k * self.rows, (k + 1) * self.rows, dtype=np.int64) % m.nseries
        t = np.full(len(s), self.t0 + (k + 1) * 60_000)
        return self.encoder.rows(s, t, np.round(m.base[s // 6, s % 6], 1))

    async def round(self, body: bytes) -> tuple[float, float]:
        """Commit ``body`` and wait until its fan-out round is done: its wall and CPU
        seconds (the hub's scheduled work only)."""
        hub = self.engine.hub
        spent = [0.0, 0.0]
        drive = hub._drive  # the scheduled fan-out: a round may take several passes

        def timed_drive() -> None:
            started, started_cpu = time.perf_counter(), time.thread_time()
            drive()
            spent[0] += time.perf_counter() - started
            spent[1] += time.thread_time() - started_cpu

        hub._drive = timed_drive  # type: ignore[method-assign]
        try:
            await self.engine.ingest(self.project, body, ndjson=True)
            while hub._work is not None or hub._pending:
                await asyncio.sleep(0)  # the round runs, in slices
        finally:
            del hub._drive  # the class's method again
        self.committed += 1
        return spent[0], spent[1]


async def start(
    stations: int,
    count: int,
    rows: int,
    fresh_series: bool,
    session: Callable[[Engine, str, int, int], Any],
    data: Path,
) -> Rounds:
    """An engine on ``data`` with the mesonet of ``stations`` and ``count`` feed sessions
    (``session(engine, query, project_pk, number)``) subscribed; every series has one
    observation first unless ``fresh_series``."""
    # (absolute: run by path, this module is no package's, and takes the tree on the path)
    from bench.common import NdjsonEncoder, device_bodies, make_mesonet, site_bodies
    from bench.feed import make_feed_filters

    m = make_mesonet(stations)
    engine = Engine(Settings(data=data, durability="normal"), "bench-token")
    await engine.start()
    reg = engine.registry
    await engine.store.write(
        lambda tx: metadata.create_projects(
            tx, reg, [ProjectIn(id="bench")], skip_existing=False, admin_account=None
        )
    )
    proj = reg.projects["bench"]
    sites = [SiteIn(**b) for b in site_bodies(m)]
    await engine.store.write(
        lambda tx: metadata.create_sites(tx, reg, proj, sites, skip_existing=False)
    )
    devices = [DeviceIn(**b) for b in device_bodies(m)]
    for k in range(0, len(devices), 5000):
        part = devices[k : k + 5000]

        def create_part(tx: Tx, part: list[DeviceIn] = part) -> list[Device]:
            return metadata.create_devices(tx, reg, proj, part, skip_existing=False)

        await engine.store.write(create_part)
    enc = NdjsonEncoder(m)
    t0 = (int(time.time()) // 60 - 10 * 60) * 60_000
    everything = np.arange(m.nseries, dtype=np.int64)
    if not fresh_series:  # every series exists first, as in bench/feed.py
        for k in range(0, m.nseries, 20_000):
            s = everything[k : k + 20_000]
            body = enc.rows(s, np.full(len(s), t0), np.full(len(s), 1.0))
            await engine.ingest(proj, body, ndjson=True)
    filters = make_feed_filters(m, count, rows)
    sessions = [session(engine, f.query(), proj.pk, n) for n, f in enumerate(filters)]
    for one in sessions:
        engine.hub.subscribe(one.sub)
    return Rounds(engine, proj, m, enc, t0, rows, sessions)


class CountingChunks(ChunkWriter):
    """A chunk writer without a connection: always ready; it counts what it is given."""

    __slots__ = ("sent",)

    def __init__(self) -> None:  # no uvicorn cycle: nothing here reads one
        self.sent = 0

    @property
    def paused(self) -> bool:
        return False

    @property
    def ready(self) -> bool:
        return True

    def write(self, body: bytes) -> bool:
        self.sent += len(body)
        return True

    def write_chunk(self, chunk: bytes) -> None:
        self.sent += len(chunk)


class NativeStream:
    """A live native NDJSON stream as ``Engine.stream`` sets it up when its connection offers a
    ``ChunkWriter`` (the round delivery's ``deliver_chunks`` writes it): the selection of a
    feed session's arguments (the same filters), its units, a sink that writes a round's items
    as one chunk, and a writer that counts the bytes instead of a socket."""

    def __init__(self, engine: Engine, query: str, project_pk: int, number: int) -> None:
        args = parse_feed_args(query, now_ms=int(time.time() * 1000), max_period_hours=48)
        self.writer = CountingChunks()
        self.sub = Subscription(
            CompiledSelection(args.select.selection(project_pk), engine.registry),
            _CHUNKED["ndjson"],
            engine.registry,
            engine.settings.subscriber_queue_bytes,
            args.select.units,
        )
        self.sub.selection.compile()
        self.sub.state = self.writer
        self.sub.sink = self.sink

    def sink(self, items: list[Item], position: int) -> bool:
        return not items or self.writer.write(b"".join([item.data for item in items]))

    @property
    def sent(self) -> int:
        return self.writer.sent


async def serve_bursts(stations: int, count: int, rows: int, kind: str) -> None:
    """``--against``'s side: rounds on request (see the module's docstring), of feed sessions
    or (``kind`` "native") native streams."""
    from bench.feed_cpu import Session  # this tree's (first on the path)

    def make(engine: Engine, query: str, pk: int, n: int) -> Any:
        if kind == "native":
            return NativeStream(engine, query, pk, n)
        return Session(engine, query, pk, n, True)

    with tempfile.TemporaryDirectory(prefix="sg-feedcpu-") as tmp:
        rounds = await start(stations, count, rows, False, make, Path(tmp))
        try:
            print("ready", flush=True)
            loop = asyncio.get_running_loop()
            while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
                cpu = []
                for _ in range(int(line)):
                    _, seconds = await rounds.round(rounds.body(rounds.committed))
                    cpu.append(seconds * 1000)
                print(orjson.dumps(cpu).decode(), flush=True)
        finally:
            await rounds.engine.stop()


if __name__ == "__main__":
    stations, count, rows = (int(x) for x in sys.argv[1:4])
    asyncio.run(serve_bursts(stations, count, rows, sys.argv[4] if len(sys.argv) > 4 else "feed"))
