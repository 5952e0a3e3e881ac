"""Fan-out yardstick: a plain `websockets` asyncio server broadcasting NDJSON frames.

It sends the same observations (the same lines a streamgauge stream would send, one frame per batch
per subscriber holding that subscriber's matching lines) to the same subscribers at the same rate.
Frames for batch k+1 are built (filtered and encoded) in the idle time after batch k is broadcast,
so the measured latency is the transport floor: `websockets.broadcast` + the kernel + the client.
Subscribers with identical filters share one broadcast call.

Run by `python -m bench ingest` (alone: `python -m bench ingest --skip sg-ingest,sg-fanout,influx`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from .common import (
    NVARS,
    VAR_NAMES,
    Filter,
    Mesonet,
    fanout_series,
    loop_factory,
    make_mesonet,
    output_line,
    rfc3339,
    values_for,
)


def build_frames(
    m: Mesonet, groups: list[Filter], k: int, rows: int, t1_ms: int, cursor0: int
) -> list[bytes]:
    series = fanout_series(m, k, rows)
    t_ms = t1_ms + k * 1000
    ts = rfc3339(t_ms)
    vals = values_for(m, series, np.full(series.shape, 10_000 + k)).tolist()
    sl = series.tolist()
    lines = [
        output_line(cursor0 + i, m.ids[s // NVARS], VAR_NAMES[s % NVARS], ts, v)
        for i, (s, v) in enumerate(zip(sl, vals, strict=True))
    ]
    frames = []
    for f in groups:
        idx = np.flatnonzero(f.mask(m, series)).tolist()
        frames.append(b"".join([lines[i] for i in idx]))
    return frames


async def _serve(
    n_stations: int,
    filters: list[Filter],
    rows: int,
    rate: float,
    seconds: float,
    t1_ms: int,
    port: int,
    ready_q: Any,
    go_evt: Any,
    stop_evt: Any,
    result_q: Any,
) -> None:
    from websockets.asyncio.server import broadcast, serve

    m = make_mesonet(n_stations)
    # group identical filters
    keys: dict[str, int] = {}
    groups: list[Filter] = []
    sub_group: list[int] = []
    for f in filters:
        q = f.query()
        if q not in keys:
            keys[q] = len(groups)
            groups.append(f)
        sub_group.append(keys[q])
    conns: list[set[Any]] = [set() for _ in groups]

    async def handler(ws: Any) -> None:
        path = ws.request.path
        sub = int(path.split("sub=")[1])
        g = sub_group[sub]
        conns[g].add(ws)
        try:
            await ws.wait_closed()
        finally:
            conns[g].discard(ws)

    nbatches = int(round(rate * seconds))
    interval = 1.0 / rate
    async with serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=None, max_size=None
    ):
        ready_q.put(("ready", port))
        frames = build_frames(m, groups, 0, rows, t1_ms, 1)
        while not go_evt.is_set():
            await asyncio.sleep(0.02)
        send_ms = np.zeros(nbatches, np.int64)
        send_wall = np.zeros(nbatches)
        t0 = time.time() + 0.05
        lag_max = 0.0
        for k in range(nbatches):
            delay = t0 + k * interval - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
            send_ms[k] = t1_ms + k * 1000
            send_wall[k] = time.time()
            for g, fr in enumerate(frames):
                if fr and conns[g]:
                    broadcast(conns[g], fr)
            if k + 1 < nbatches:
                frames = build_frames(m, groups, k + 1, rows, t1_ms, 1 + (k + 1) * rows)
        elapsed = time.time() - t0
        result_q.put(("sent", send_ms, send_wall, elapsed, lag_max))
        while not stop_evt.is_set():
            await asyncio.sleep(0.05)


def ws_baseline_process(
    n_stations: int,
    filters: list[Filter],
    rows: int,
    rate: float,
    seconds: float,
    t1_ms: int,
    port: int,
    ready_q: Any,
    go_evt: Any,
    stop_evt: Any,
    result_q: Any,
) -> None:
    import traceback

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(
                _serve(
                    n_stations,
                    filters,
                    rows,
                    rate,
                    seconds,
                    t1_ms,
                    port,
                    ready_q,
                    go_evt,
                    stop_evt,
                    result_q,
                )
            )
    except BaseException:  # noqa: BLE001
        msg = traceback.format_exc()
        ready_q.put(("error", msg))
        result_q.put(("error", msg))
