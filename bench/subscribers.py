"""Subscriber processes for the fan-out benchmark.

One process runs many subscribers on one asyncio loop. Each subscriber reads NDJSON lines, either
from a streamgauge HTTP stream (raw HTTP/1.1 with chunked decoding: low overhead) or from
WebSocket frames (the websockets baseline). It does not JSON-decode each line: a regex pulls the
"time" of every observation line, and per read it records (time, receive wall time, count). Each
fan-out batch has one distinct time, so the parent maps time -> batch send time afterwards.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
from collections import Counter
from typing import Any

import numpy as np

from .common import loop_factory

TIME_RE = re.compile(rb'"time"\s*:\s*"([^"]*)"')


class LineCounter:
    def __init__(self) -> None:
        self.buf = b""
        self.cache: dict[bytes, int] = {}
        self.t_ms: list[int] = []
        self.recv: list[float] = []
        self.cnt: list[int] = []
        self.lines = 0
        self.resume_lines: list[bytes] = []
        self.keepalives = 0
        self.units_lines = 0
        self.bytes = 0
        self.unparsed_times = 0
        self.sample = ""

    def feed(self, data: bytes, now: float) -> None:
        self.bytes += len(data)
        data = self.buf + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self.buf = data
            return
        self.buf = data[cut + 1 :]
        self.process(data[: cut + 1], now)

    def process(self, chunk: bytes, now: float) -> None:
        from .common import parse_time_ms

        times = TIME_RE.findall(chunk)
        if b'"resume"' in chunk:
            for ln in chunk.split(b"\n"):
                if b'"resume"' in ln:
                    self.resume_lines.append(ln[:300])
        nl = chunk.count(b"\n")
        units = 0
        if b'{"units"' in chunk:  # the opening line of a stream: {"units": {...}}
            units = chunk.count(b'{"units"')
            self.units_lines += units
        self.keepalives += max(0, nl - len(times) - units - (1 if b'"resume"' in chunk else 0))
        if not times:
            return
        self.lines += len(times)
        if not self.sample:
            m = TIME_RE.search(chunk)
            if m is not None:
                a = chunk.rfind(b"\n", 0, m.start()) + 1
                b = chunk.find(b"\n", m.end())
                self.sample = chunk[a:b].decode(errors="replace")
        for ts, c in Counter(times).items():
            ms = self.cache.get(ts)
            if ms is None:
                ms = parse_time_ms(ts)
                if ms is None:
                    self.unparsed_times += c
                    continue
                self.cache[ts] = ms
            self.t_ms.append(ms)
            self.recv.append(now)
            self.cnt.append(c)


async def http_subscriber(
    host: str,
    port: int,
    path: str,
    token: str,
    lc: LineCounter,
    ready: asyncio.Future[Any],
    state: dict[str, Any],
) -> None:
    r, w = await asyncio.open_connection(host, port, limit=1 << 22)
    try:
        w.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                "Accept: application/x-ndjson\r\n\r\n"
            ).encode()
        )
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        chunked = b"chunked" in head.lower()
        if status != 200:
            body = await asyncio.wait_for(r.read(2000), 5)
            raise RuntimeError(f"HTTP {status} for {path}: {body[:500]!r}")
        if not ready.done():
            ready.set_result(True)
        if not chunked:
            while True:
                data = await r.read(1 << 20)
                if not data:
                    break
                lc.feed(data, time.time())
        else:
            buf = b""
            while True:
                data = await r.read(1 << 20)
                now = time.time()
                if not data:
                    break
                buf += data
                out = []
                while True:
                    nl = buf.find(b"\r\n")
                    if nl < 0:
                        break
                    size = int(buf[:nl].split(b";")[0], 16)
                    if size == 0:
                        buf = b""
                        state["ended"] += 1
                        break
                    if len(buf) < nl + 2 + size + 2:
                        break
                    out.append(buf[nl + 2 : nl + 2 + size])
                    buf = buf[nl + 2 + size + 2 :]
                if out:
                    lc.feed(b"".join(out), now)
        state["closed"] += 1
    finally:
        w.close()


async def ws_subscriber(
    uri: str, lc: LineCounter, ready: asyncio.Future[Any], state: dict[str, Any]
) -> None:
    from websockets.asyncio.client import connect

    async with connect(uri, max_size=None, compression=None, ping_interval=None) as ws:
        if not ready.done():
            ready.set_result(True)
        async for msg in ws:
            lc.feed(msg if isinstance(msg, bytes) else msg.encode(), time.time())
    state["closed"] += 1


async def _main(
    kind: str,
    host: str,
    port: int,
    targets: list[str],
    indices: list[int],
    token: str,
    ready_q: Any,
    stop_evt: Any,
    result_q: Any,
    connect_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    counters = [LineCounter() for _ in targets]
    readies = [loop.create_future() for _ in targets]
    state: dict[str, Any] = {"closed": 0, "ended": 0, "errors": []}
    tasks = []
    for tgt, lc, rd in zip(targets, counters, readies, strict=True):
        if kind == "http":
            coro = http_subscriber(host, port, tgt, token, lc, rd, state)
        else:
            coro = ws_subscriber(f"ws://{host}:{port}{tgt}", lc, rd, state)
        tasks.append(asyncio.create_task(coro))

    def on_done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            state["errors"].append(f"{type(e).__name__}: {e}"[:400])

    for t in tasks:
        t.add_done_callback(on_done)

    done, _ = await asyncio.wait(readies, timeout=connect_timeout)
    ready_q.put(("ready", len(done), list(state["errors"])))
    while not stop_evt.is_set():
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    res = []
    for fi, lc in zip(indices, counters, strict=True):
        res.append(
            {
                "fi": fi,
                "t_ms": np.asarray(lc.t_ms, np.int64),
                "recv": np.asarray(lc.recv, np.float64),
                "cnt": np.asarray(lc.cnt, np.int64),
                "lines": lc.lines,
                "bytes": lc.bytes,
                "resume": lc.resume_lines,
                "keepalives": lc.keepalives,
                "units_lines": lc.units_lines,
                "unparsed": lc.unparsed_times,
                "sample": lc.sample,
            }
        )
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    result_q.put(
        (
            "result",
            res,
            {
                "closed": state["closed"],
                "ended": state["ended"],
                "errors": state["errors"][:20],
                "n_errors": len(state["errors"]),
                "cpu": ru.ru_utime + ru.ru_stime,
            },
        )
    )


def raise_nofile(want: int = 65536) -> None:
    """Raise this process's open-file limit (soft, up to the hard limit) for many sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def subscriber_process(
    kind: str,
    host: str,
    port: int,
    targets: list[str],
    indices: list[int],
    token: str,
    ready_q: Any,
    stop_evt: Any,
    result_q: Any,
    connect_timeout: float = 20.0,
) -> None:
    raise_nofile()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(
                _main(
                    kind,
                    host,
                    port,
                    targets,
                    indices,
                    token,
                    ready_q,
                    stop_evt,
                    result_q,
                    connect_timeout,
                )
            )
    except BaseException:  # noqa: BLE001
        msg = traceback.format_exc()
        ready_q.put(("ready", 0, [msg]))
        result_q.put(("error", msg, {}))
