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
    .venv/bin/python -m bench feed-cpu --against ../other-tree [--bursts 10]
    .venv/bin/python -m bench feed-cpu --native [--against ../other-tree]

It prints the machine's core count, ms per round (p50, p90, max), microseconds per session per
round, and with ``--profile`` the functions that cost most (cProfile). ``--against TREE``
compares this tree with another source tree (a git worktree of another commit, its C module
built): both set up their engine side by side, then run bursts of rounds in turn, so that
both meet the machine alike however its speed drifts; it prints each burst's p50 and their
ratio, and the median ratio with its range. ``--native`` runs the same rounds to live native
NDJSON streams (``NativeStream``: the same filters, units and sessions' count, written by the
native round delivery, ``deliver_chunks``) instead of feed sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import orjson
from fastapi import WebSocket

from streamgauge.core.engine import Engine
from streamgauge.core.filters import CompiledSelection
from streamgauge.core.hub import Subscription
from streamgauge.domain.feeds import FeedSession
from streamgauge.faces.synoptic.args import parse_feed_args
from streamgauge.faces.synoptic.feed import _Sender, deliver_round
from streamgauge.faces.synoptic.messages import Metadata, feed_framing
from streamgauge.faces.websocket import WRITER, MessageWriter

from .common import machine_speed_ms
from .feed_cpu_engine import NativeStream, start


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
    with tempfile.TemporaryDirectory(prefix="sg-feedcpu-") as tmp:
        rounds = await start(
            a.stations,
            a.sessions,
            a.rows,
            a.fresh_series,
            lambda engine, query, pk, n: (
                NativeStream(engine, query, pk, n)
                if a.native
                else Session(engine, query, pk, n, not a.sinks_only)
            ),
            Path(tmp),
        )
        try:
            sessions = rounds.sessions
            bodies = [rounds.body(k) for k in range(a.batches)]
            wall: list[float] = []
            cpu: list[float] = []
            prof = cProfile.Profile() if a.profile else None
            for body in bodies:
                if prof is not None:
                    prof.enable()
                spent = await rounds.round(body)
                if prof is not None:
                    prof.disable()
                wall.append(spent[0])
                cpu.append(spent[1])
            ms = np.array(wall[1:]) * 1000  # the first round builds the encoders' caches
            sent = sum(s.sent for s in sessions)
            print(
                f"{kind(a)} fan-out CPU: cpu_count={os.cpu_count()} sessions={len(sessions)} "
                f"stations={a.stations} rows/batch={a.rows} rounds={len(wall)} "
                f"{'fresh series' if a.fresh_series else 'series exist'}  "
                f"{'sinks only' if a.sinks_only else 'round delivery'}  "
                f"machine speed {machine_speed_ms():.1f} ms (lower is faster)"
            )
            print(
                f"  ms per round: p50 {np.percentile(ms, 50):.1f}  p90 {np.percentile(ms, 90):.1f}"
                f"  max {ms.max():.1f}; first round {wall[0] * 1000:.1f}"
            )
            cpu_ms = np.array(cpu[1:]) * 1000  # the thread's CPU time: steadier on a busy machine
            print(
                f"  CPU ms per round: p50 {np.percentile(cpu_ms, 50):.1f}  "
                f"p90 {np.percentile(cpu_ms, 90):.1f}  mean {np.mean(cpu_ms):.1f}"
            )
            print(
                f"  us per session per round: {np.mean(ms) * 1000 / len(sessions):.1f}; "
                f"{sent / len(wall) / 1e6:.2f} MB framed per round"
            )
            if prof is not None:
                stats = pstats.Stats(prof)
                stats.sort_stats("tottime").print_stats(25)
                if os.environ.get("BENCH_CALLEES"):
                    stats.print_callees(os.environ["BENCH_CALLEES"])
        finally:
            await rounds.engine.stop()


def kind(a: argparse.Namespace) -> str:
    return "native NDJSON stream" if a.native else "feed"


def against(a: argparse.Namespace) -> None:
    """This tree's rounds against another tree's, in bursts that alternate (see
    ``feed_cpu_engine``): each side keeps its engine, so a burst of one and the next of the
    other meet the machine alike, however its speed drifts."""
    here = Path(__file__).resolve().parent.parent
    other = Path(a.against).resolve()
    script = Path(__file__).resolve().parent / "feed_cpu_engine.py"
    sides: dict[str, subprocess.Popen[str]] = {}
    for name, tree in (("this tree", here), ("other", other)):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "src"), str(tree)]))
        sides[name] = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(a.stations),
                str(a.sessions),
                str(a.rows),
                "native" if a.native else "feed",
            ],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        for name, proc in sides.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"feed-cpu --against: the {name} side did not start")
        print(
            f"{kind(a)} fan-out CPU, {here} against {other}: cpu_count={os.cpu_count()} "
            f"sessions={a.sessions} stations={a.stations} rows/batch={a.rows}, "
            f"{a.bursts} bursts of {a.burst_rounds} rounds each side, alternating"
        )
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        ratios: list[float] = []
        for b in range(a.bursts):
            medians: dict[str, float] = {}
            for name in list(sides)[:: 1 if b % 2 == 0 else -1]:
                proc = sides[name]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"{a.burst_rounds + (b == 0)}\n")
                proc.stdin.flush()
                got: list[float] = orjson.loads(proc.stdout.readline())[b == 0 :]
                cpu[name] += got
                medians[name] = float(np.median(got))
            ratios.append(medians["this tree"] / medians["other"])
            print(
                f"  burst {b + 1}: CPU ms per round (p50) this tree {medians['this tree']:.1f}"
                f"  other {medians['other']:.1f}  ratio {ratios[-1]:.3f}"
            )
        print(
            f"  CPU ms per round, p50 of every round: this tree {np.median(cpu['this tree']):.2f}"
            f"  other {np.median(cpu['other']):.2f}; ratio per burst: median "
            f"{np.median(ratios):.3f} ({min(ratios):.3f} .. {max(ratios):.3f}); "
            f"machine speed {machine_speed_ms():.1f} ms (lower is faster)"
        )
    finally:
        for proc in sides.values():
            if proc.stdin is not None and proc.poll() is None:
                proc.stdin.write("\n")
                proc.stdin.close()
        for proc in sides.values():
            proc.wait(timeout=60)


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
    ap.add_argument(
        "--native",
        action="store_true",
        help="native NDJSON streams with the same filters instead of feed sessions",
    )
    ap.add_argument(
        "--against",
        metavar="TREE",
        help="another source tree (a git worktree of another commit): its rounds and this "
        "tree's in alternating bursts, and the ratio",
    )
    ap.add_argument("--bursts", type=int, default=10, help="with --against (default 10)")
    ap.add_argument(
        "--burst-rounds", type=int, default=20, help="rounds a burst, with --against (default 20)"
    )
    a = ap.parse_args()
    if a.against:
        against(a)
    else:
        asyncio.run(run(a))


if __name__ == "__main__":
    main()
