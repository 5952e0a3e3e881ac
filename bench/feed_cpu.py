"""The push feed's fan-out round in one process, without sockets: CPU per round, per session.

The feed bench (bench/feed.py) measures the whole system on loopback, where the figures move
with everything else on the machine. This one isolates the server's own work of a live round:
the engine (SQLite store, registry, hub) with the same 30,000-station mesonet, 1,000 sessions
with bench/feed.py's arguments, each set up as the feed's stream sets it up (its compiled
selection, its ``Metadata``, its ``_Sender``) but writing to a writer that counts bytes instead
of a socket. Batches of 500 observations are committed one by one and each round is timed.
``--sinks-only`` leaves out the feed's round delivery (``deliver_round``): each session's sink
takes its share of the round, as before the twentieth session.

    .venv/bin/python -m bench feed-cpu [--sessions 1000] [--batches 200] [--profile]
    .venv/bin/python -m bench feed-cpu --sinks-only

It prints the machine's core count, ms per round (p50, p90, max), microseconds per session per
round, and with ``--profile`` the functions that cost most (cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np
from fastapi import WebSocket

from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.core.filters import CompiledSelection
from streamgauge.core.hub import Subscription
from streamgauge.domain.feeds import FeedSession
from streamgauge.domain.model import Device, DeviceIn, ProjectIn, SiteIn
from streamgauge.faces.synoptic.args import parse_feed_args
from streamgauge.faces.synoptic.feed import _Sender, deliver_round
from streamgauge.faces.synoptic.messages import Metadata, feed_framing
from streamgauge.faces.websocket import WRITER, MessageWriter
from streamgauge.store.sqlite import metadata

from .common import (
    NdjsonEncoder,
    device_bodies,
    machine_speed_ms,
    make_mesonet,
    site_bodies,
)
from .feed import make_feed_filters

if TYPE_CHECKING:
    from streamgauge.store.sqlite.store import Tx


class CountingWriter(MessageWriter):
    """The server's message writer (see ``faces/websocket.py``) without a connection: always
    ready, and it counts the bytes it is given instead of writing them."""

    __slots__ = ("sent",)

    def __init__(self) -> None:  # no protocol: nothing here reads one
        self.sent = 0

    @property
    def ready(self) -> bool:
        return True

    @property
    def open(self) -> bool:
        return True

    @property
    def paused(self) -> bool:
        return False

    @property
    def raw(self) -> bool:
        return True

    def write_ready(self, frames: bytes) -> None:
        self.sent += len(frames)

    def send(self, messages: Sequence[bytes]) -> bool:
        self.sent += sum(len(m) for m in messages)
        return True


class Session:
    """A live feed session as the feed's stream sets it up (``SessionConsumer.stream``): its
    subscription, its ``Metadata`` and its ``_Sender`` (the sink, and the state the round's
    ``prepare`` and ``deliver`` read), writing to a ``CountingWriter``."""

    def __init__(
        self, engine: Engine, query: str, project_pk: int, number: int, deliver: bool
    ) -> None:
        args = parse_feed_args(query, now_ms=int(time.time() * 1000), max_period_hours=48)
        self.meta = Metadata(engine.registry, args.select.units, args.metadata)
        self.writer = CountingWriter()
        ws = SimpleNamespace(scope={"extensions": {WRITER: self.writer}})
        self.session = FeedSession(f"bench-{number}", 0, query, 0)
        sender = _Sender(cast(WebSocket, ws), engine, self.session, self.meta)
        self.sub = Subscription(
            CompiledSelection(args.select.selection(project_pk), engine.registry),
            feed_framing(
                engine.settings.feed_message_rows,
                args.timeformat,
                deliver_round if deliver else None,
            ),
            engine.registry,
            engine.settings.subscriber_queue_bytes,
            args.select.units,
        )
        self.sub.selection.compile()
        self.sub.sink = sender.sink
        self.sub.state = sender

    @property
    def sent(self) -> int:
        return self.writer.sent

    @property
    def position(self) -> int:
        return self.session.position


async def run(a: argparse.Namespace) -> None:
    m = make_mesonet(a.stations)
    with tempfile.TemporaryDirectory(prefix="sg-feedcpu-") as tmp:
        engine = Engine(Settings(data=Path(tmp), durability="normal"), "bench-token")
        await engine.start()
        try:
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
            if not a.fresh_series:  # every series exists first, as in bench/feed.py
                for k in range(0, m.nseries, 20_000):
                    s = everything[k : k + 20_000]
                    body = enc.rows(s, np.full(len(s), t0), np.full(len(s), 1.0))
                    await engine.ingest(proj, body, ndjson=True)
            filters = make_feed_filters(m, a.sessions, a.rows)
            sessions = [
                Session(engine, f.query(), proj.pk, n, not a.sinks_only)
                for n, f in enumerate(filters)
            ]
            for session in sessions:
                engine.hub.subscribe(session.sub)
            bodies = []
            for k in range(a.batches):
                s = (np.arange(k * a.rows, (k + 1) * a.rows, dtype=np.int64)) % m.nseries
                t = np.full(len(s), t0 + (k + 1) * 60_000)
                bodies.append(enc.rows(s, t, np.round(m.base[s // 6, s % 6], 1)))
            hub = engine.hub
            rounds: list[float] = []
            cpu: list[float] = []
            drive = hub._drive  # the scheduled fan-out: a round may take several passes
            spent = [0.0, 0.0]

            def timed_drive() -> None:
                started, started_cpu = time.perf_counter(), time.thread_time()
                drive()
                spent[0] += time.perf_counter() - started
                spent[1] += time.thread_time() - started_cpu

            hub._drive = timed_drive  # type: ignore[method-assign]
            prof = cProfile.Profile() if a.profile else None
            for body in bodies:
                if prof is not None:
                    prof.enable()
                spent[:] = [0.0, 0.0]
                await engine.ingest(proj, body, ndjson=True)
                while hub._work is not None or hub._pending:
                    await asyncio.sleep(0)  # the round runs, in slices
                rounds.append(spent[0])
                cpu.append(spent[1])
                if prof is not None:
                    prof.disable()
            ms = np.array(rounds[1:]) * 1000  # the first round builds the encoders' caches
            sent = sum(s.sent for s in sessions)
            print(
                f"feed fan-out CPU: cpu_count={os.cpu_count()} sessions={len(sessions)} "
                f"stations={a.stations} rows/batch={a.rows} rounds={len(rounds)} "
                f"{'fresh series' if a.fresh_series else 'series exist'}  "
                f"{'sinks only' if a.sinks_only else 'round delivery'}  "
                f"machine speed {machine_speed_ms():.1f} ms (lower is faster)"
            )
            print(
                f"  ms per round: p50 {np.percentile(ms, 50):.1f}  p90 {np.percentile(ms, 90):.1f}"
                f"  max {ms.max():.1f}; first round {rounds[0] * 1000:.1f}"
            )
            cpu_ms = np.array(cpu[1:]) * 1000  # the thread's CPU time: steadier on a busy machine
            print(
                f"  CPU ms per round: p50 {np.percentile(cpu_ms, 50):.1f}  "
                f"p90 {np.percentile(cpu_ms, 90):.1f}  mean {np.mean(cpu_ms):.1f}"
            )
            print(
                f"  us per session per round: {np.mean(ms) * 1000 / len(sessions):.1f}; "
                f"{sent / len(rounds) / 1e6:.2f} MB framed per round"
            )
            if prof is not None:
                stats = pstats.Stats(prof)
                stats.sort_stats("tottime").print_stats(25)
                if os.environ.get("BENCH_CALLEES"):
                    stats.print_callees(os.environ["BENCH_CALLEES"])
        finally:
            await engine.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--stations", type=int, default=30_000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--fresh-series", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--sinks-only",
        action="store_true",
        help="no round delivery (deliver_round): each session's sink takes its share, as before",
    )
    a = ap.parse_args()
    asyncio.run(run(a))


if __name__ == "__main__":
    main()
