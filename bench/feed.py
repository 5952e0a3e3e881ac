"""streamgauge push-feed benchmark: 1,000 Synoptic-style feed sessions vs a plain websockets
broadcast of the same frames.

    .venv/bin/python -m bench feed               # about 2 minutes
    .venv/bin/python -m bench feed --subscribers 100 --fanout-rate 2000 --fanout-seconds 5
    .venv/bin/python -m bench feed --busy 0.8    # another process using 80 % of one core
    .venv/bin/python -m bench feed --budget      # and where the feed's CPU goes (4 minutes)

(1) A streamgauge server (QC on) gets the 30,000-station mesonet and a feed token. 1,000 sessions
    (`ws://HOST/feed/{token}/?{arguments}`, each with different arguments: state, network, radius
    in both forms, bbox, stid, nwszone, vars, filter_on and mixes, some with units=english or
    metadata=off) are opened by several subscriber processes using the `websockets` client.
    Server RSS before and after opening them (no ingest yet) gives the memory per idle session.
(2) Observations are POSTed paced at 10,000 obs/s (batches of 500) for 20 s. Batch k has its own
    observation minute, so the feed's `date` (minute resolution) says which batch a data item
    came from; latency = receive wall time - wall time just before that batch's POST. Expected
    deliveries come from the numpy mirror of bench/quality.py (exact), so delivered vs expected
    must be 100 %. A session the server closes for slowness (code 4000) resumes with its session
    id and the cursor of the last data message it processed, as a Synoptic client would.
(3) A plain `websockets` server (separate process) sends each of 1,000 clients the feed messages
    that client's arguments select (metadata and data, the same JSON layout), pre-filtered, with
    `websockets.broadcast` at the same rate: the ceiling of Python WebSocket fan-out here.
Printed side by side: delivered obs/s, % of expected, latency p50/p90/p99/max, closes, CPU and the
ratios. With --budget, a loopback send's CPU and a run of the feed server with 4 sessions split
the feed's CPU against what the 0.9 target allows. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from streamgauge.config import default_processes

from .common import (
    NVARS,
    STATES,
    VARIABLES,
    Busy,
    Mesonet,
    NdjsonEncoder,
    anon_mb,
    build_request,
    children,
    device_id,
    fanout_series,
    free_port,
    ingest_batches,
    loop_factory,
    machine_speed_ms,
    make_mesonet,
    node_mb,
    post_all,
    proc_cpu_seconds,
    proc_rss_mb,
    site_bodies,
    start_profile,
    system_busy_seconds,
    values_for,
    wait_quiet,
    weighted_percentiles,
)
from .harness import (
    HOST,
    PROJECT,
    TOKEN,
    FanoutCfg,
    FanoutResult,
    StreamgaugeServer,
    analyse,
    collect_subscribers,
    log,
    paced_phase,
    print_fanout,
    run_async,
    setup_mesonet,
    wait_ready,
)
from .quality import _REPORT_CACHE, QFilter, make_quality_filters
from .subscribers import raise_nofile

MINUTE_MS = 60_000
DATA_PREFIX = '{"type":"data","cursor":'
DATE_RE = re.compile(r'"date":(\d{12})')
CLOSE_SLOW = 4000  # the feed's close code for a client that fell behind its queue


def feed_t1_ms(nbatches: int) -> int:
    """Time of fan-out batch 0: whole minutes, far enough back that the last batch is past."""
    now_min = int(time.time()) // 60 * MINUTE_MS
    return now_min - (nbatches + 10) * MINUTE_MS


def date_ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y%m%d%H%M").replace(tzinfo=UTC).timestamp() * 1000)


# ---------------------------------------------------------------------------------------------
# Feed arguments and their exact numpy mirror (the mirror of bench/quality.py, plus stid/nwszone)


def zones(m: Mesonet) -> np.ndarray:
    """Each station's nwszone as bench/common.site_bodies sends it."""
    return np.array([f"{STATES[m.state[i]]}Z{i % 500:03d}" for i in range(m.n)])


@dataclass
class FeedFilter(QFilter):
    stids: list[int] | None = None
    nwszones: list[str] | None = None
    units: str | None = None  # a units argument (changes values, not which observations)
    metadata: bool = True

    def query(self) -> str:
        parts = [p for p in super().query().split("&") if p]
        # the feed's name for a filter expression is filter_on
        parts = ["filter_on=" + p[7:] if p.startswith("filter=") else p for p in parts]
        if self.stids:
            parts.append("stid=" + ",".join(device_id(i) for i in self.stids))
        if self.nwszones:
            parts.append("nwszone=" + ",".join(self.nwszones))
        if self.units:
            parts.append(f"units={self.units}")
        if not self.metadata:
            parts.append("metadata=off")
        return "&".join(parts)

    def station_mask(self, m: Mesonet) -> np.ndarray:
        ok = super().station_mask(m)
        if self.stids:
            ok &= np.isin(np.arange(m.n), self.stids)
        if self.nwszones:
            ok &= np.isin(zones(m), [z.upper() for z in self.nwszones])
        return ok


def make_feed_filters(m: Mesonet, count: int = 1000, rows: int = 500) -> list[FeedFilter]:
    """``count`` different feed argument sets: the quality mix (state, network, radius both
    forms, bbox, vars, filter_on and their combinations), plus stid lists and nwszone lists
    (about 5 %); every 8th without metadata, every 10th without filter_on in english units."""
    rng = np.random.default_rng(20240603)
    n_extra = max(2, round(count * 0.05)) if count >= 20 else 0
    base = make_quality_filters(m, count - n_extra, rows)
    fs: list[FeedFilter] = [
        FeedFilter(
            kind=q.kind,
            states=q.states,
            networks=q.networks,
            radius=q.radius,
            radius_stid=q.radius_stid,
            bbox=q.bbox,
            vars=q.vars,
            expr=q.expr,
            rows=rows,
        )
        for q in base
    ]
    zs = zones(m)
    while len(fs) < count:
        if len(fs) % 2 == 0:
            f = FeedFilter("stid", rows=rows)
            f.stids = sorted(rng.choice(m.n, 20, replace=False).tolist())
        else:
            f = FeedFilter("nwszone", rows=rows)
            picked = rng.choice(m.n, int(rng.integers(1, 4)), replace=False)
            f.nwszones = sorted(
                {str(zs[i]) if rng.random() < 0.7 else str(zs[i]).lower() for i in picked.tolist()}
            )
        fs.append(f)
    for i, f in enumerate(fs):
        if i % 8 == 3:
            f.metadata = False
        if i % 10 == 7 and not f.expr:
            f.units = "english"
    assert len({f.query() for f in fs}) == len(fs), "feed arguments must all differ"
    return fs


# ---------------------------------------------------------------------------------------------
# Subscriber processes (websockets client): count data items per `date`, record latencies


class FeedCounter:
    def __init__(self) -> None:
        self.t_ms: list[int] = []
        self.recv: list[float] = []
        self.cnt: list[int] = []
        self.cache: dict[str, int] = {}
        self.lines = 0
        self.messages = 0
        self.metadata = 0
        self.stations = 0
        self.other = 0
        self.bytes = 0
        self.cursor: int | None = None
        self.session = ""
        self.closes: list[str] = []
        self.resumes = 0
        self.sample = ""

    def data(self, msg: str, now: float) -> None:
        self.messages += 1
        self.bytes += len(msg)
        comma = msg.find(",", len(DATA_PREFIX))
        self.cursor = int(msg[len(DATA_PREFIX) : comma])
        dates = DATE_RE.findall(msg)
        if not dates:
            return
        self.lines += len(dates)
        if not self.sample:
            self.sample = msg[:200]
        groups = [(dates[0], len(dates))] if dates[0] == dates[-1] else Counter(dates).items()
        for d, n in groups:
            ms = self.cache.get(d)
            if ms is None:
                ms = self.cache[d] = date_ms(d)
            self.t_ms.append(ms)
            self.recv.append(now)
            self.cnt.append(n)

    def meta(self, msg: str) -> None:
        self.metadata += 1
        self.bytes += len(msg)
        self.stations += msg.count('"stid"')


async def feed_client(
    base: str,
    query: str,
    fc: FeedCounter,
    ready: asyncio.Future[Any],
    state: dict[str, Any],
    resume_slow: bool,
) -> None:
    """One session: the auth message, then data and metadata until the server closes; after a
    close for slowness resume with the session id and the last processed cursor."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    url = f"{base}/?{query}" if query else f"{base}/"
    while True:
        async with connect(
            url, max_size=None, compression=None, ping_interval=None, open_timeout=120
        ) as ws:
            first = await ws.recv()
            first = first if isinstance(first, str) else first.decode()
            if '"code":"success"' not in first:
                raise RuntimeError(f"auth failed for {query[:200]}: {first[:300]}")
            fc.session = json.loads(first).get("session", "")
            if not ready.done():
                ready.set_result(True)
            try:
                async for msg in ws:
                    now = time.time()
                    text = msg if isinstance(msg, str) else msg.decode()
                    if text.startswith(DATA_PREFIX):
                        fc.data(text, now)
                    elif text.startswith('{"type":"metadata"'):
                        fc.meta(text)
                    else:
                        fc.other += 1
            except ConnectionClosed:
                pass
            code, reason = ws.close_code, ws.close_reason or ""
        fc.closes.append(f"{code} {reason}"[:200])
        if code == CLOSE_SLOW and resume_slow and fc.session:
            fc.resumes += 1
            url = f"{base}/{fc.session}"
            if fc.cursor is not None:
                url += f"?cursor={fc.cursor}"
            continue
        state["closed"] += 1
        return


async def _subscribers_main(
    base: str,
    queries: list[str],
    indices: list[int],
    ready_q: Any,
    stop_evt: Any,
    result_q: Any,
    connect_timeout: float,
    resume_slow: bool,
) -> None:
    loop = asyncio.get_running_loop()
    counters = [FeedCounter() for _ in queries]
    readies = [loop.create_future() for _ in queries]
    state: dict[str, Any] = {"closed": 0, "ended": 0, "errors": []}

    def on_done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            e = t.exception()
            state["errors"].append(f"{type(e).__name__}: {e}"[:400])

    tasks = []
    for q, fc, rd in zip(queries, counters, readies, strict=True):
        t = asyncio.create_task(feed_client(base, q, fc, rd, state, resume_slow))
        t.add_done_callback(on_done)
        tasks.append(t)
    done, _ = await asyncio.wait(readies, timeout=connect_timeout)
    ready_q.put(("ready", len(done), list(state["errors"])))
    while not stop_evt.is_set():
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=15)
    res = [
        {
            "fi": fi,
            "t_ms": np.asarray(fc.t_ms, np.int64),
            "recv": np.asarray(fc.recv, np.float64),
            "cnt": np.asarray(fc.cnt, np.int64),
            "lines": fc.lines,
            "bytes": fc.bytes,
            "messages": fc.messages,
            "metadata": fc.metadata,
            "stations": fc.stations,
            "other": fc.other,
            # analyse() counts these as closes for falling behind
            "resume": [c.encode() for c in fc.closes if c.startswith(f"{CLOSE_SLOW} ")],
            "closes": fc.closes,
            "resumes": fc.resumes,
            "sample": fc.sample,
        }
        for fi, fc in zip(indices, counters, strict=True)
    ]
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    result_q.put(
        (
            "result",
            res,
            {
                "closed": state["closed"],
                "ended": 0,
                "errors": state["errors"][:20],
                "n_errors": len(state["errors"]),
                "cpu": ru.ru_utime + ru.ru_stime,
            },
        )
    )


def feed_subscriber_process(
    base: str,
    queries: list[str],
    indices: list[int],
    ready_q: Any,
    stop_evt: Any,
    result_q: Any,
    connect_timeout: float = 120.0,
    resume_slow: bool = True,
) -> None:
    raise_nofile()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(
                _subscribers_main(
                    base,
                    queries,
                    indices,
                    ready_q,
                    stop_evt,
                    result_q,
                    connect_timeout,
                    resume_slow,
                )
            )
    except BaseException:  # noqa: BLE001
        msg = traceback.format_exc()
        ready_q.put(("ready", 0, [msg]))
        result_q.put(("error", msg, {}))


def start_feed_subscribers(
    bases: list[str], queries: list[str], procs: int, resume_slow: bool = True
) -> tuple[list[Any], Any, Any, Any]:
    """``procs`` subscriber processes; process ``i`` opens its sessions with the feed URL base
    ``bases[i % len(bases)]`` (one feed token per server process, ``feed_tokens``)."""
    ctx = mp.get_context("spawn")
    ready_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    ps = []
    for i in range(procs):
        p = ctx.Process(
            target=feed_subscriber_process,
            args=(
                bases[i % len(bases)],
                queries[i::procs],
                list(range(len(queries)))[i::procs],
                ready_q,
                stop,
                result_q,
                120.0,
                resume_slow,
            ),
            daemon=True,
        )
        p.start()
        ps.append(p)
    return ps, ready_q, result_q, stop


def stop_processes(ps: list[Any], stop: Any) -> None:
    if stop is not None:
        stop.set()
    for p in ps:
        p.join(5)
        if p.is_alive():
            p.terminate()


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class FeedRun:
    res: FanoutResult
    t1_ms: int = 0
    rss_before_mb: float = float("nan")
    rss_connected_mb: float = float("nan")
    rss_after_mb: float = float("nan")
    connect_s: float = 0.0
    ingest_s: float = 0.0
    messages: int = 0
    metadata_messages: int = 0
    stations_described: int = 0
    other_messages: int = 0
    resumes: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    expected_by_kind: dict[str, list[int]] = field(default_factory=dict)
    off_sessions: list[str] = field(default_factory=list)
    batch_diff: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    gc_pauses: list[str] = field(default_factory=list)  # the server's warnings (over 100 ms)
    gc_full: tuple[int, float, float] = (0, 0.0, 0.0)  # full collections: count, total s, max s
    # event-loop lag samples during ingest: count, over 50 ms, over 100 ms, highest bucket bound
    loop_lag: tuple[int, int, int, float] = (0, 0, 0, 0.0)
    # the server's commit-to-send time of its fan-out rounds (its own side of the latency):
    # rounds, and the bucket bounds holding the p50 and the p99, in seconds
    commit_to_send: tuple[int, float, float] = (0, 0.0, 0.0)
    server_cpu_s: float = float("nan")  # server CPU seconds over the paced phase and grace
    steady_p50_ms: float = float("nan")  # latency without the first second of ingest
    steady_p99_ms: float = float("nan")
    # (session, batch) pairs with rows: the writes the server makes, one a session a round
    session_rounds: int = 0

    @property
    def kb_per_idle_session(self) -> float:
        n = max(self.res.connected, 1)
        return (self.rss_connected_mb - self.rss_before_mb) * 1024 / n


def to_virtual_times(subs: list[dict[str, Any]], t1_ms: int) -> None:
    """Map each data item's minute (batch k = t1 + k minutes) onto the 1-second grid analyse()
    expects (t1 + k seconds); anything off the grid becomes unmatched."""
    for s in subs:
        off = s["t_ms"] - t1_ms
        on_grid = off % MINUTE_MS == 0
        s["t_ms"] = np.where(on_grid, t1_ms + off // MINUTE_MS * 1000, t1_ms - 1)


def finish(
    name: str,
    run: FeedRun,
    cfg: FanoutCfg,
    m: Mesonet,
    filters: list[FeedFilter],
    subs: list[dict[str, Any]],
    meta: dict[str, Any],
    send_wall: np.ndarray,
) -> FeedRun:
    """Latency, delivered vs expected (per session, per filter kind, per batch), message counts."""
    res = run.res
    to_virtual_times(subs, run.t1_ms)
    send_ms = run.t1_ms + np.arange(cfg.nbatches) * 1000
    analyse(name, cfg, m, filters, subs, meta, send_ms, send_wall, run.t1_ms, res)
    if res.ingest_obs_s:
        run.ingest_s = res.sent_obs / res.ingest_obs_s
        res.delivered_obs_s = res.delivered / max(run.ingest_s, cfg.seconds)
    all_series = _REPORT_CACHE[next(iter(_REPORT_CACHE))][0] if _REPORT_CACHE else None
    if all_series is None:
        all_series = np.concatenate([fanout_series(m, k, cfg.rows) for k in range(cfg.nbatches)])
    got = {s["fi"]: s["lines"] for s in subs}
    bidx = np.arange(all_series.size) // cfg.rows
    exp_b = np.zeros(cfg.nbatches, np.int64)
    got_b = np.zeros(cfg.nbatches, np.int64)
    for i, f in enumerate(filters):
        mask = f.mask(m, all_series)
        exp = int(mask.sum())
        per_batch = np.bincount(bidx[mask], minlength=cfg.nbatches)
        exp_b += per_batch
        run.session_rounds += int(np.count_nonzero(per_batch))
        e = run.expected_by_kind.setdefault(f.kind, [0, 0, 0, 0])
        e[0] += 1
        e[1] += exp
        e[2] += got.get(i, 0)
        e[3] += int(got.get(i, 0) != exp)
        if got.get(i, 0) != exp and len(run.off_sessions) < 8:
            run.off_sessions.append(f"{f.query()[:90] or '(none)'}: {got.get(i, 0)}/{exp}")
        f._memo = None
    for s in subs:
        off = s["t_ms"] - run.t1_ms
        k = off // 1000
        good = (off % 1000 == 0) & (k >= 0) & (k < cfg.nbatches)
        got_b += np.bincount(k[good], weights=s["cnt"][good], minlength=cfg.nbatches).astype(
            np.int64
        )
        run.messages += s["messages"]
        run.metadata_messages += s["metadata"]
        run.stations_described += s["stations"]
        run.other_messages += s["other"]
        run.resumes += s["resumes"]
        for c in s["closes"]:
            key = c.split(" ", 1)[0]
            run.close_codes[key] = run.close_codes.get(key, 0) + 1
    # latency once the first second is past (the first batches after 1,000 sessions connect pay
    # one-time costs such as compiling each session's selection)
    first = max(1, int(round(cfg.batches_per_s)))
    lat_parts, w_parts = [], []
    for s in subs:
        off = s["t_ms"] - run.t1_ms
        k = off // 1000
        good = (off % 1000 == 0) & (k >= first) & (k < cfg.nbatches)
        lat_parts.append(s["recv"][good] - send_wall[k[good]])
        w_parts.append(s["cnt"][good])
    if lat_parts:
        run.steady_p50_ms, run.steady_p99_ms = weighted_percentiles(
            np.concatenate(lat_parts) * 1000, np.concatenate(w_parts), [50, 99]
        )
    short = np.flatnonzero(got_b != exp_b)
    run.batch_diff = [
        f"batch {int(k)}: {int(got_b[k])}/{int(exp_b[k])}" for k in short[:12].tolist()
    ] + ([f"... {len(short)} batches differ"] if len(short) > 12 else [])
    return run


def print_run(title: str, run: FeedRun) -> None:
    print_fanout(title, run.res)
    log(
        f"    messages: {run.messages:,} data, {run.metadata_messages:,} metadata "
        f"({run.stations_described:,} station descriptions), {run.other_messages} other; "
        f"closes by code {run.close_codes or '{}'}; resumed after a slow close: {run.resumes}"
    )
    log(
        f"    latency after the first second of ingest: p50 {run.steady_p50_ms:.1f} ms, "
        f"p99 {run.steady_p99_ms:.1f} ms"
    )
    log("    by filter kind (sessions, expected, delivered, sessions off):")
    for k, (n, e, d, bad) in run.expected_by_kind.items():
        log(f"      {k:28s} n={n:4d} expected={e:10,d} delivered={d:10,d} off={bad}")
    if run.off_sessions:
        log(f"    sessions delivered != expected (delivered/expected): {run.off_sessions}")
    if run.batch_diff:
        log(f"    batches delivered != expected (delivered/expected): {run.batch_diff}")


# ---------------------------------------------------------------------------------------------
# (1)+(2) streamgauge feed


def histogram(port: int, name: str) -> tuple[int, float, float, dict[float, int]]:
    """A histogram of the server's /metrics: (count, sum, the bound of the highest bucket with
    observations, cumulative counts by bound)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    count, total, longest = 0, 0.0, 0.0
    buckets: dict[float, int] = {}
    previous = 0
    for line in text.splitlines():
        if line.startswith(f"{name}_count"):
            count = int(float(line.split()[-1]))
        elif line.startswith(f"{name}_sum"):
            total = float(line.split()[-1])
        elif line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            n = int(float(line.split()[-1]))
            if le != "+Inf":
                buckets[float(le)] = n
                if n > previous:
                    longest = float(le)
            previous = n
    return count, total, longest, buckets


def bucket_quantiles(
    before: tuple[int, float, float, dict[float, int]],
    after: tuple[int, float, float, dict[float, int]],
) -> tuple[int, float, float]:
    """Observations between two reads of a histogram, and the upper bounds of the buckets that
    hold their p50 and p99 (inf: beyond the last bound)."""
    n = after[0] - before[0]
    within = sorted((le, after[3][le] - before[3].get(le, 0)) for le in after[3])

    def bound(q: float) -> float:
        return next((le for le, k in within if k >= q * n), float("inf"))

    return n, bound(0.5), bound(0.99)


def loop_lag_during(
    before: tuple[int, float, float, dict[float, int]],
    after: tuple[int, float, float, dict[float, int]],
) -> tuple[int, int, int, float]:
    """Event-loop lag samples between two reads of the histogram: (samples, over 50 ms, over
    100 ms, the bound of the highest bucket that gained samples)."""
    n = after[0] - before[0]
    within = {le: after[3][le] - before[3].get(le, 0) for le in after[3]}
    worst = 0.0
    previous = 0
    for le in sorted(within):
        if within[le] > previous:
            worst = le
        previous = within[le]
    if n > previous:  # some samples beyond the last finite bucket
        worst = float("inf")
    return n, n - within.get(0.05, 0), n - within.get(0.1, 0), worst


def server_mb(pid: int) -> float:
    """The server's memory: its resident set (``proc_rss_mb``), or with fan-out workers the sum
    of every process's proportional set size (``node_mb``): with the push feed in the workers
    (``STREAMGAUGE_WORKERS_FEED``) the sessions are theirs, and the writer's memory alone
    did not count them (0.3 KB a session with ``--owners 1``)."""
    total, processes = node_mb(pid)
    return total if processes > 1 else proc_rss_mb(pid)


def sessions_mb(pid: int) -> float:
    """The memory the idle sessions are measured by: the anonymous (heap) memory of the server
    and its fan-out workers together. Not their resident or proportional set: those count the
    pages of the database files the processes have mapped too, which come and go with what
    SQLite reads (with two processes, opening 1,000 sessions moved them by 2 to 5 MB, more
    than the sessions themselves, and the reading came out negative)."""
    return sum(anon_mb(p) for p in [pid, *children(pid)])


def settled_rss_mb(pid: int, seconds: float = 15.0) -> float:
    """``sessions_mb`` once two samples half a second apart agree within 1 MB (at most
    ``seconds``): after the warm-up ingest the server's memory sometimes is still being
    released (seen: 418 MB falling to 380), which counted as negative per-session memory."""
    last = sessions_mb(pid)
    samples = [last]
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.5)
        now = sessions_mb(pid)
        samples.append(now)
        if abs(now - last) <= 1.0:
            break
        last = now
    if len(samples) > 2:
        log(f"  server rss settling before the sessions: {' '.join(f'{x:.0f}' for x in samples)}")
    return samples[-1]


def feed_token(port: int) -> str:
    import httpx

    r = httpx.post(
        f"http://{HOST}:{port}/api/v1/projects/{PROJECT}/feedtokens",
        json={"name": "bench"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    if r.status_code != 201:
        raise RuntimeError(f"create feed token: {r.status_code} {r.text[:500]}")
    return str(r.json()["token"])


def feed_tokens(port: int, workers: int, owners: list[int] | None = None) -> list[str]:
    """One feed token owned by each of the server's ``workers`` processes, or by each of
    ``owners`` (a token's sessions are served by one process, ``workers/routing.owner``; a
    real deployment has many tokens): with the push feed served by every process, the
    sessions spread over all of them."""
    from streamgauge.workers.routing import owner

    wanted = sorted(set(range(workers) if owners is None else owners))
    found: dict[int, str] = {}
    for _ in range(64 * workers):
        token = feed_token(port)
        found.setdefault(owner(hashlib.sha256(token.encode()).digest(), workers), token)
        if all(w in found for w in wanted):
            break
    return [found[w] for w in wanted]


async def warm_up_session(base: str, queries: list[str]) -> None:
    """Short sessions (auth, stop), one per filter kind and one in English units, so one-time
    costs (the first connection, the server's per-project tables of site attributes, station
    reports and stations, pint's unit registry) are not counted as per-session memory."""
    from websockets.asyncio.client import connect

    for query in queries:
        async with connect(f"{base}/?{query}", compression=None) as ws:
            first = await ws.recv()
            if '"success"' not in str(first):
                raise RuntimeError(f"feed warm-up session failed: {first!r}")
            await ws.send('{"feed_action": "stop"}')
            async for _ in ws:
                pass


def loopback_send_us(
    connections: int, size: int, procs: int, rounds: int = 20, pause: float = 0.05
) -> float:
    """CPU microseconds of one ``send`` of ``size`` bytes on a loopback TCP connection, made to
    each of ``connections`` connections a round (``rounds`` rounds ``pause`` apart, the median
    of three such runs), the receiving ends read by ``procs`` other processes waiting in
    ``select`` as the bench's subscribers do. On loopback the receiving side's TCP work and
    its wake-up run in the sender's call, so this is the kernel's part of a fan-out's write:
    the feed makes one a session a round, the broadcast one a client a message
    (``--budget``)."""
    import selectors
    import socket

    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(connections)
    clients: list[socket.socket] = []
    served: list[socket.socket] = []
    readers: list[int] = []
    try:
        for _ in range(connections):
            clients.append(socket.create_connection(listener.getsockname()))
            served.append(listener.accept()[0])
        for p in range(procs):
            pid = os.fork()
            if pid == 0:  # a reader: its share of the clients' ends, until the sender closes
                code = 0
                try:
                    for sock in served:
                        sock.close()
                    mine = clients[p::procs]
                    with selectors.DefaultSelector() as sel:
                        for sock in mine:
                            sock.setblocking(False)
                            sel.register(sock, selectors.EVENT_READ)
                        while sel.get_map():
                            for key, _ in sel.select():
                                sock = cast(socket.socket, key.fileobj)
                                try:
                                    while data := sock.recv(1 << 16):
                                        del data
                                    sel.unregister(sock)  # (b"": the sender closed)
                                except BlockingIOError:
                                    pass
                except BaseException:  # noqa: BLE001
                    code = 1
                os._exit(code)
            readers.append(pid)
        for sock in clients:
            sock.close()
        clients.clear()
        frame = b"x" * size
        runs = []
        for _ in range(3):
            cpu = 0.0
            for _ in range(rounds):
                t0 = time.thread_time()
                for sock in served:
                    sock.send(frame)
                cpu += time.thread_time() - t0
                time.sleep(pause)
            runs.append(cpu / (rounds * connections) * 1e6)
        return float(np.median(runs))
    finally:
        for sock in clients + served:
            sock.close()
        listener.close()
        for pid in readers:
            os.waitpid(pid, 0)


def feed_fanout(
    m: Mesonet,
    cfg: FanoutCfg,
    srv: StreamgaugeServer,
    filters: list[FeedFilter],
    t1: int,
    fresh_series: bool = False,
    busy: float = 0.0,
    workers: int = 1,
    owners: list[int] | None = None,
) -> FeedRun:
    assert srv.proc is not None
    pid = srv.proc.pid
    run = FeedRun(FanoutResult("streamgauge-feed", asdict(cfg)), t1_ms=t1)
    res = run.res
    enc = NdjsonEncoder(m)
    path = f"/api/v1/projects/{PROJECT}/observations"
    hdr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    reqs = []
    for k in range(cfg.nbatches):
        s = fanout_series(m, k, cfg.rows)
        body = enc.rows(
            s,
            np.full(s.shape, t1 + k * MINUTE_MS),
            values_for(m, s, np.full(s.shape, 10_000 + k)),
        )
        reqs.append(build_request("POST", HOST, srv.port, path, hdr, body))
    if not fresh_series:
        # Every series gets one older observation first, so the run measures sessions on a
        # network whose series exist, as bench/quality.py does after its QC-ingest phase
        # (--fresh-series measures a network whose first observations arrive during the run).
        warm = [
            build_request("POST", HOST, srv.port, path, hdr, body)
            for body in ingest_batches(m, enc, 0, m.nseries, 5000, t1 - 10 * MINUTE_MS, 0)
        ]
        _, answers, _ = run_async(post_all(HOST, srv.port, warm, 2, (200,)))
        bad = [a for a in answers if a[0] != 200]
        if bad:
            raise RuntimeError(f"warm-up ingest failed: {bad[0]!r}")
        log(f"  every series got one observation first ({m.nseries:,} rows)")
    bases = [f"ws://{HOST}:{srv.port}/feed/{t}" for t in feed_tokens(srv.port, workers, owners)]
    kinds = {f.kind: f.query() for f in reversed(filters)}  # the first filter of each kind
    # and the first in other units: pint's registry is loaded once per process, by the first
    # session that needs a conversion (about 4 MB, not a per-session cost)
    warm_queries = list(kinds.values()) + [f.query() for f in filters if f.units][:1]
    for each in bases:  # every process that serves sessions has its own one-time tables
        run_async(warm_up_session(each, warm_queries))
    time.sleep(1.0)
    # the warm-up ingest's upkeep (indexing, folding summaries) done: memory at rest
    quiet_s = wait_quiet(pid)
    run.rss_before_mb = settled_rss_mb(pid)
    t = time.time()
    ps, rq, resq, stop = start_feed_subscribers(bases, [f.query() for f in filters], cfg.procs)
    subs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"errors": []}
    send_wall = np.zeros(cfg.nbatches)
    try:
        res.connected, errs = wait_ready(rq, cfg.procs, timeout=180)
        run.connect_s = time.time() - t
        res.errors.extend(errs[:5])
        time.sleep(2.0)
        # at rest with the sessions open: 1,000 idle sessions use 2 to 8 % of a core (the
        # keepalive clock), so "quiet" is below 15 % here
        quiet_after_s = wait_quiet(pid, limit_s=30.0, quiet_cores=0.15)
        run.rss_connected_mb = sessions_mb(pid)
        log(
            f"  {res.connected} sessions open in {run.connect_s:.1f} s; server heap "
            f"{run.rss_before_mb:.0f} -> {run.rss_connected_mb:.0f} MB = "
            f"{run.kb_per_idle_session:.1f} KB per idle session (each reading once the server "
            f"was quiet: waited {quiet_s:.0f} s and {quiet_after_s:.0f} s)"
        )
        lag_before = histogram(srv.port, "streamgauge_event_loop_lag_seconds")
        sent_before = histogram(srv.port, "streamgauge_delivery_seconds")
        spy = start_profile(pid, cfg.seconds)
        with Busy(busy) as burner:
            server_s, busy_s, client_s, wall, send_wall = paced_phase(pid, srv.port, reqs, cfg, res)
            busy_s -= burner.cpu_seconds()
        if spy is not None:
            spy.wait()
        run.server_cpu_s = server_s
        run.rss_after_mb = server_mb(pid)
        gc_n, gc_s, gc_max, _ = histogram(srv.port, "streamgauge_gc_pause_seconds")
        run.gc_full = (gc_n, gc_s, gc_max)
        lag = histogram(srv.port, "streamgauge_event_loop_lag_seconds")
        run.loop_lag = loop_lag_during(lag_before, lag)
        run.commit_to_send = bucket_quantiles(
            sent_before, histogram(srv.port, "streamgauge_delivery_seconds")
        )
        subs, meta = collect_subscribers(ps, rq, resq, stop, len(filters), cfg.procs)
        res.subscriber_cpu_pct = meta["cpu"] / wall * 100
        res.other_cpu_pct = max(0.0, busy_s - server_s - client_s - meta["cpu"]) / wall * 100
    finally:
        stop_processes(ps, stop)
    finish("streamgauge", run, cfg, m, filters, subs, meta, send_wall)
    tail = srv.log_tail(200_000)
    run.log_errors = [
        ln for ln in tail.splitlines() if "Traceback" in ln or " ERROR" in ln or "rror:" in ln
    ][:5]
    run.gc_pauses = [ln for ln in tail.splitlines() if "garbage collection paused" in ln]
    return run


# ---------------------------------------------------------------------------------------------
# (3) the plain websockets broadcast yardstick

UNIT_LABELS = {"degC": "Celsius", "%": "%", "m/s": "m/s", "Pa": "Pascals", "mm": "Millimeters"}
M_TO_FT = 3.280839895013123


def station_json(m: Mesonet) -> list[bytes]:
    """Each station as the feed's metadata message describes it."""
    out = []
    for b in site_bodies(m):
        out.append(
            json.dumps(
                {
                    "stid": b["id"],
                    "name": b["name"],
                    "latitude": str(b["lat"]),
                    "longitude": str(b["lon"]),
                    "elevation": round(b["elevation"] * M_TO_FT, 1),
                    "network": b["network"],
                    "state": b["state"],
                    "nwszone": b["nwszone"],
                    "nwsfirezone": b["nwsfirezone"],
                },
                separators=(",", ":"),
            ).encode()
        )
    return out


class FrameMaker:
    """Every client's messages per batch, as the feed would send them: a metadata message for the
    stations and sensors it has not described yet (when on), then data messages of at most
    ``message_rows`` rows. Masks come from the same mirror; frames are built per batch."""

    def __init__(
        self,
        m: Mesonet,
        filters: list[FeedFilter],
        rows: int,
        nbatches: int,
        t1_ms: int,
        message_rows: int,
    ):
        self.m, self.rows, self.t1, self.message_rows = m, rows, t1_ms, message_rows
        self.series = np.concatenate([fanout_series(m, k, rows) for k in range(nbatches)])
        edges = np.arange(nbatches + 1) * rows
        self.idx: list[np.ndarray] = []
        self.bounds: list[np.ndarray] = []
        self.new_st: list[tuple[np.ndarray, np.ndarray] | None] = []
        self.new_var: list[tuple[np.ndarray, np.ndarray] | None] = []
        for f in filters:
            sel = np.flatnonzero(f.mask(m, self.series))
            f._memo = None
            self.idx.append(sel)
            self.bounds.append(np.searchsorted(sel, edges))
            if f.metadata:
                self.new_st.append(self._firsts(self.series[sel] // NVARS, sel, nbatches))
                self.new_var.append(self._firsts(self.series[sel] % NVARS, sel, nbatches))
            else:
                self.new_st.append(None)
                self.new_var.append(None)
        _REPORT_CACHE.clear()
        self.stations = station_json(m)
        self.units = [
            b'{"sensor":"%s","unit":"%s"}' % (v.encode(), UNIT_LABELS[u].encode())
            for v, u in VARIABLES
        ]
        self.prefix = [
            b'{"stid":"%s","sensor":"%s","set":1,"date":'
            % (m.ids[s // NVARS].encode(), VARIABLES[s % NVARS][0].encode())
            for s in range(m.nseries)
        ]

    def _firsts(
        self, keys: np.ndarray, sel: np.ndarray, nbatches: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(keys ordered by the batch they first appear in, bounds of each batch)."""
        uniq, first = np.unique(keys, return_index=True)
        fb = sel[first] // self.rows
        order = np.argsort(fb, kind="stable")
        return uniq[order], np.searchsorted(fb[order], np.arange(nbatches + 1))

    def frames(self, k: int) -> list[list[str]]:
        import orjson

        a = k * self.rows
        series = self.series[a : a + self.rows]
        vals = values_for(self.m, series, np.full(series.shape, 10_000 + k)).tolist()
        date = time.strftime("%Y%m%d%H%M", time.gmtime((self.t1 + k * MINUTE_MS) // 1000))
        tail = date.encode() + b',"value":'
        lines = [
            self.prefix[s] + tail + orjson.dumps(v) + b',"qc":[]}'
            for s, v in zip(series.tolist(), vals, strict=True)
        ]
        out: list[list[str]] = []
        mr = self.message_rows
        for i, sel in enumerate(self.idx):
            b = self.bounds[i]
            picked = (sel[b[k] : b[k + 1]] - a).tolist()
            msgs: list[str] = []
            if picked:
                ns, nv = self.new_st[i], self.new_var[i]
                if ns is not None and nv is not None:
                    st = ns[0][ns[1][k] : ns[1][k + 1]].tolist()
                    vs = nv[0][nv[1][k] : nv[1][k + 1]].tolist()
                    if st or vs:
                        msgs.append(
                            (
                                b'{"type":"metadata","units":[%s],"stations":[%s]}'
                                % (
                                    b",".join([self.units[v] for v in vs]),
                                    b",".join([self.stations[s] for s in st]),
                                )
                            ).decode()
                        )
                for j in range(0, len(picked), mr):
                    part = picked[j : j + mr]
                    msgs.append(
                        (
                            b'{"type":"data","cursor":%d,"data":[%s]}'
                            % (a + part[-1] + 1, b",".join([lines[r] for r in part]))
                        ).decode()
                    )
            out.append(msgs)
        return out


async def _broadcast_serve(
    n_stations: int,
    filters: list[FeedFilter],
    rows: int,
    rate: float,
    seconds: float,
    t1_ms: int,
    message_rows: int,
    port: int,
    ready_q: Any,
    go_evt: Any,
    stop_evt: Any,
    result_q: Any,
) -> None:
    from websockets.asyncio.server import broadcast, serve

    m = make_mesonet(n_stations)
    nbatches = int(round(rate * seconds))
    maker = FrameMaker(m, filters, rows, nbatches, t1_ms, message_rows)
    conns: list[set[Any]] = [set() for _ in filters]

    async def handler(ws: Any) -> None:
        sub = int(ws.request.path.split("sub=")[1])
        await ws.send(
            '{"type":"auth","code":"success","messages":["Starting new session."],'
            f'"session":"plain-{sub}"}}'
        )
        conns[sub].add(ws)
        try:
            await ws.wait_closed()
        finally:
            conns[sub].discard(ws)

    interval = 1.0 / rate
    async with serve(
        handler, HOST, port, compression=None, ping_interval=None, max_size=None, backlog=2048
    ):
        ready_q.put(("ready", port))
        frames = maker.frames(0)
        while not go_evt.is_set():
            await asyncio.sleep(0.02)
        send_wall = np.zeros(nbatches)
        t0 = time.time() + 0.05
        lag_max = 0.0
        for k in range(nbatches):
            delay = t0 + k * interval - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
            send_wall[k] = time.time()
            for i, msgs in enumerate(frames):
                if msgs and conns[i]:
                    for msg in msgs:
                        broadcast(conns[i], msg)
            if k + 1 < nbatches:
                frames = maker.frames(k + 1)
        elapsed = time.time() - t0
        result_q.put(("sent", send_wall, elapsed, lag_max))
        while not stop_evt.is_set():
            await asyncio.sleep(0.05)


def broadcast_process(*args: Any) -> None:
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_broadcast_serve(*args))
    except BaseException:  # noqa: BLE001
        msg = traceback.format_exc()
        args[-4].put(("error", msg))  # ready_q
        args[-1].put(("error", msg))  # result_q


def broadcast_fanout(
    m: Mesonet,
    cfg: FanoutCfg,
    filters: list[FeedFilter],
    t1: int,
    message_rows: int,
    busy: float = 0.0,
) -> FeedRun:
    run = FeedRun(FanoutResult("websockets-broadcast", asdict(cfg)), t1_ms=t1)
    res = run.res
    for f in filters:
        f._memo = None
    ctx = mp.get_context("spawn")
    wready, wres, go, wstop = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    port = free_port()
    wp = ctx.Process(
        target=broadcast_process,
        args=(
            m.n,
            filters,
            cfg.rows,
            cfg.batches_per_s,
            cfg.seconds,
            t1,
            message_rows,
            port,
            wready,
            go,
            wstop,
            wres,
        ),
        daemon=True,
    )
    wp.start()
    ps: list[Any] = []
    stop = None
    subs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"errors": []}
    send_wall = np.zeros(cfg.nbatches)
    try:
        item = wready.get(timeout=180)
        if item[0] == "error":
            raise RuntimeError(item[1])
        assert wp.pid is not None
        run.rss_before_mb = proc_rss_mb(wp.pid)
        t = time.time()
        ps, rq, resq, stop = start_feed_subscribers(
            [f"ws://{HOST}:{port}"], [f"sub={i}" for i in range(len(filters))], cfg.procs, False
        )
        res.connected, errs = wait_ready(rq, cfg.procs, timeout=180)
        run.connect_s = time.time() - t
        res.errors.extend(errs[:5])
        time.sleep(2.0)
        run.rss_connected_mb = proc_rss_mb(wp.pid)
        log(
            f"  {res.connected} clients connected in {run.connect_s:.1f} s; broadcast server rss "
            f"{run.rss_before_mb:.0f} -> {run.rss_connected_mb:.0f} MB"
        )
        with Busy(busy) as burner:
            cpu0, t0 = proc_cpu_seconds(wp.pid), time.time()
            b0 = system_busy_seconds()
            go.set()
            item = wres.get(timeout=cfg.seconds + 180)
            if item[0] == "error":
                raise RuntimeError(item[1])
            _, send_wall, elapsed, lag = item
            time.sleep(cfg.grace)
            server_s = run.server_cpu_s = proc_cpu_seconds(wp.pid) - cpu0
            busy_s, wall = system_busy_seconds() - b0 - burner.cpu_seconds(), time.time() - t0
        res.server_cpu_pct = server_s / wall * 100
        res.sent_obs = cfg.nbatches * cfg.rows
        res.ingest_obs_s = res.sent_obs / elapsed
        res.send_lag_max_s = lag
        run.rss_after_mb = proc_rss_mb(wp.pid)
        subs, meta = collect_subscribers(ps, rq, resq, stop, len(filters), cfg.procs)
        res.subscriber_cpu_pct = meta["cpu"] / wall * 100
        res.other_cpu_pct = max(0.0, busy_s - server_s - meta["cpu"]) / wall * 100
    finally:
        wstop.set()
        stop_processes([*ps, wp], stop)
    return finish("websockets", run, cfg, m, filters, subs, meta, send_wall)


# ---------------------------------------------------------------------------------------------


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--durability", default="full", choices=["full", "normal"])
    ap.add_argument("--stations", type=int, default=30_000)
    ap.add_argument("--subscribers", type=int, default=1000, help="feed sessions (and clients)")
    ap.add_argument("--sub-procs", type=int, default=4, help="subscriber processes")
    ap.add_argument("--fanout-seconds", type=float, default=20.0)
    ap.add_argument("--fanout-rate", type=float, default=10_000.0, help="observations/s")
    ap.add_argument("--fanout-batch", type=int, default=500, help="observations per POST")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds to wait after ingest")
    ap.add_argument(
        "--message-rows",
        type=int,
        default=1000,
        help="STREAMGAUGE_FEED_MESSAGE_ROWS for the server and the broadcast (default 1000)",
    )
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server setting, e.g. STREAMGAUGE_SUBSCRIBER_QUEUE_BYTES=50000 (repeatable)",
    )
    ap.add_argument("--skip", default="", help="comma list of: feed, ws")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes serving the port (serve --workers N; 1: one process; default: "
        "serve's, the number of cores)",
    )
    ap.add_argument(
        "--owners",
        type=lambda text: [int(x) for x in text.split(",")],
        default=None,
        metavar="N,..",
        help="with --workers above 1 (the push feed in every process): the processes whose feed "
        "tokens the sessions use (default: every process; 0 is the writer)",
    )
    ap.add_argument(
        "--fresh-series",
        action="store_true",
        help="no warm-up ingest: the series are created by the run's own first observations",
    )
    ap.add_argument(
        "--busy",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="another process using SHARE (0..1) of one core during the paced phase of both "
        "the feed and the broadcast runs (bench.common.Busy; default 0: quiet)",
    )
    ap.add_argument(
        "--budget",
        action="store_true",
        help="also measure the CPU budget of the 0.9 target: a loopback send's CPU, and a third "
        f"run of the feed server with {BUDGET_SESSIONS} sessions (its ingest, storage and the "
        "rounds' fixed part); the summary splits the feed's CPU with them",
    )
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")


BUDGET_SESSIONS = 4  # the floor run of --budget: ingest with a round of a few sessions
BUDGET_FRAME = 2048  # bytes a write in --budget's send measurement (about a feed session's round)


def main_feed(a: argparse.Namespace) -> None:
    raise_nofile()
    t_start = time.time()
    skip = set(filter(None, a.skip.split(",")))
    log(
        f"load average before start: {os.getloadavg()[0]:.2f} (other work on the machine skews "
        "figures: see 'other procs cpu')"
    )
    speed = machine_speed_ms()
    a.workers = a.workers or default_processes()  # serve's default
    log(
        f"streamgauge feed bench: cpu_count={os.cpu_count()}  python={sys.version.split()[0]}  "
        f"stations={a.stations:,}  durability={a.durability}  workers={a.workers}  "
        f"machine speed {speed:.1f} ms (bench/common.machine_speed_ms: lower is faster)"
    )
    cfg = FanoutCfg(
        a.fanout_seconds, a.fanout_rate, a.fanout_batch, a.subscribers, a.sub_procs, a.grace
    )
    m = make_mesonet(a.stations)
    filters = make_feed_filters(m, cfg.subscribers, cfg.rows)
    t1 = feed_t1_ms(cfg.nbatches)
    kinds = Counter(f.kind for f in filters)
    log(
        f"  {len(filters)} sessions with different arguments: "
        + ", ".join(f"{k} {n}" for k, n in kinds.items())
        + f"; metadata=off {sum(not f.metadata for f in filters)}, "
        f"units=english {sum(f.units is not None for f in filters)}"
    )
    sg: FeedRun | None = None
    ws: FeedRun | None = None
    floor: FeedRun | None = None
    send_us = float("nan")
    if a.budget:
        send_us = loopback_send_us(
            cfg.subscribers, BUDGET_FRAME, cfg.procs, round(cfg.batches_per_s)
        )
        log(
            f"  a loopback send of {BUDGET_FRAME:,} bytes to each of {cfg.subscribers:,} "
            f"connections read by {cfg.procs} processes: {send_us:.2f} us of CPU a send (median "
            "of three runs)"
        )
    env = {
        "STREAMGAUGE_QC": "true",
        "STREAMGAUGE_FEED_MESSAGE_ROWS": str(a.message_rows),
        "STREAMGAUGE_WORKERS": str(a.workers),
    }
    for kv in a.server_env:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"--server-env {kv!r}: expected NAME=VALUE")
        env[k] = v
    if a.server_env:
        log(f"  extra server settings: {' '.join(a.server_env)}")
    if "feed" not in skip:
        with StreamgaugeServer(a.durability, env) as srv:
            assert srv.proc is not None
            st = setup_mesonet(srv.port, m)
            log(f"  server setup: {st['sites_s']:.1f} s sites, {st['devices_s']:.1f} s devices")
            log(
                f"\n[1+2] streamgauge feed: {cfg.subscribers} sessions ({cfg.procs} procs), "
                f"{cfg.rate:,.0f} obs/s in batches of {cfg.rows} for {cfg.seconds:.0f} s"
            )
            try:
                sg = feed_fanout(
                    m, cfg, srv, filters, t1, a.fresh_series, a.busy, a.workers, a.owners
                )
                print_run("streamgauge feed", sg)
                if sg.log_errors:
                    log(f"    server log error lines: {sg.log_errors}")
                n, over50, over100, worst = sg.loop_lag
                log(
                    f"    server event-loop lag during ingest (every 50 ms): {n} samples, "
                    f"{over50} over 50 ms, {over100} over 100 ms, "
                    f"the worst up to {worst * 1000:.0f} ms"
                )
                n, p50, p99 = sg.commit_to_send
                log(
                    f"    the server's side (commit to the end of its fan-out round, {n} rounds"
                    f" written to sockets): p50 under {p50 * 1000:.0f} ms, p99 under "
                    f"{p99 * 1000:.0f} ms (histogram buckets); the rest of the latency is the "
                    f"request before its commit, the kernel and the client"
                )
                n, total, longest = sg.gc_full
                log(
                    f"    full GC collections in the server: {n}, {total * 1000:.0f} ms in all, "
                    f"the longest {longest * 1000:.0f} ms; pauses over 100 ms: "
                    f"{len(sg.gc_pauses)} {sg.gc_pauses[:3]}"
                )
            except Exception as e:  # noqa: BLE001
                log(f"  streamgauge feed part failed: {e!r}\n{traceback.format_exc()[-1500:]}")
            if srv.proc.poll() is not None:
                log("  SERVER EXITED:\n" + srv.log_tail())
    if "ws" not in skip:
        log(
            f"\n[3] plain websockets broadcast: {cfg.subscribers} clients, the same messages, "
            "pre-filtered, same rate"
        )
        try:
            ws = broadcast_fanout(m, cfg, filters, t1, a.message_rows, a.busy)
            print_run("websockets broadcast", ws)
        except Exception as e:  # noqa: BLE001
            log(f"  websockets part failed: {e!r}\n{traceback.format_exc()[-1500:]}")
    if a.budget:
        few = replace(cfg, subscribers=BUDGET_SESSIONS, procs=1)
        log(
            f"\n[budget] the streamgauge server again with {BUDGET_SESSIONS} sessions: its "
            "ingest, quality control and storage, and the rounds' fixed part"
        )
        with StreamgaugeServer(a.durability, env) as srv:
            setup_mesonet(srv.port, m)
            try:
                floor = feed_fanout(
                    m, few, srv, filters[:BUDGET_SESSIONS], t1, a.fresh_series, a.busy, a.workers
                )
                log(f"  server cpu {floor.res.server_cpu_pct:.0f}% of a core")
            except Exception as e:  # noqa: BLE001
                log(f"  budget run failed: {e!r}\n{traceback.format_exc()[-1500:]}")
    summary(a, cfg, sg, ws, time.time() - t_start)
    if sg and ws and floor:
        budget(sg, ws, floor, send_us)
    if a.json:
        out = {
            "cpu_count": os.cpu_count(),
            "feed": _jsonable(sg),
            "websockets": _jsonable(ws),
        }
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))


def _jsonable(run: FeedRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    d = asdict(run)
    d["kb_per_idle_session"] = run.kb_per_idle_session
    return d


def summary(
    a: argparse.Namespace, cfg: FanoutCfg, sg: FeedRun | None, ws: FeedRun | None, total: float
) -> None:
    log("\n" + "=" * 86)
    log(
        f"FEED SUMMARY  cpu_count={os.cpu_count()}  sessions={cfg.subscribers}  "
        f"ingest {cfg.rate:,.0f} obs/s x {cfg.seconds:.0f} s  durability={a.durability}  "
        f"busy {a.busy:g} of a core  total {total:.0f} s  load average {os.getloadavg()[0]:.2f}"
    )
    log("-" * 86)
    log(f"{'measure':46s} {'feed':>12s} {'websockets':>12s} {'ratio':>8s}")
    r1 = sg.res if sg else None
    r2 = ws.res if ws else None

    def row(name: str, f: Any, fmt: str = ",.0f", ratio: bool = False) -> None:
        va = f(sg, r1) if sg and r1 else None
        vb = f(ws, r2) if ws and r2 else None
        sa = format(va, fmt) if va is not None else "-"
        sb = format(vb, fmt) if vb is not None else "-"
        rr = f"{va / vb:.2f}" if ratio and va is not None and vb else ""
        log(f"{name:46s} {sa:>12s} {sb:>12s} {rr:>8s}")

    row("sessions / clients connected", lambda _, r: r.connected, "d")
    row("ingest achieved obs/s (paced)", lambda _, r: r.ingest_obs_s)
    row("delivered obs/s (all sessions)", lambda _, r: r.delivered_obs_s, ratio=True)
    row(
        "delivered % of expected",
        lambda _, r: r.delivered / r.expected * 100 if r.expected else float("nan"),
        ".2f",
    )
    row("latency p50 ms", lambda _, r: r.p50_ms, ".1f", ratio=True)
    row("latency p90 ms", lambda _, r: r.p90_ms, ".1f", ratio=True)
    row("latency p99 ms", lambda _, r: r.p99_ms, ".1f", ratio=True)
    row("latency max ms", lambda _, r: r.max_ms, ".1f", ratio=True)
    row("latency p50 ms after the first second", lambda x, _: x.steady_p50_ms, ".1f", True)
    row("latency p99 ms after the first second", lambda x, _: x.steady_p99_ms, ".1f", True)
    row("closed for slowness (code 4000)", lambda _, r: r.closed_behind, "d")
    row("server cpu % (200% = 2 cores)", lambda _, r: r.server_cpu_pct)
    row(
        "delivered obs per server cpu-second",
        lambda x, r: r.delivered / x.server_cpu_s if x.server_cpu_s > 0 else float("nan"),
        ratio=True,
    )
    row("subscriber procs cpu %", lambda _, r: r.subscriber_cpu_pct)
    row("other procs cpu % (should be ~0)", lambda _, r: r.other_cpu_pct)
    row("server rss MB after the run", lambda x, _: x.rss_after_mb)
    if sg:
        log(
            f"memory per idle feed session: {sg.kb_per_idle_session:.1f} KB "
            f"(server heap {sg.rss_before_mb:.0f} -> {sg.rss_connected_mb:.0f} MB for "
            f"{sg.res.connected} sessions; target <= 15 KB)"
        )
    if r1 and r2 and r2.delivered_obs_s:
        log(
            f"ratio feed / broadcast: delivered obs/s {r1.delivered_obs_s / r2.delivered_obs_s:.2f}"
            f" (aim >= 0.5); latency p50 x{r1.p50_ms / r2.p50_ms:.1f}, "
            f"p99 x{r1.p99_ms / r2.p99_ms:.1f} (feed / broadcast)"
        )
    if sg and ws and r1 and r2:
        per_cpu = [
            r.delivered / x.server_cpu_s if x.server_cpu_s > 0 else float("nan")
            for x, r in ((sg, r1), (ws, r2))
        ]
        log(
            f"RATIOS feed / broadcast (busy {a.busy:g}): p99 "
            f"{r1.p99_ms / r2.p99_ms if r2.p99_ms else float('nan'):.2f} (aim <= 2), "
            f"delivered obs per server cpu-second "
            f"{per_cpu[0] / per_cpu[1] if per_cpu[1] else float('nan'):.2f} (aim >= 0.9); "
            f"memory per idle session {sg.kb_per_idle_session:.1f} KB (aim <= 15)"
        )
    if r1:
        log(
            f"feed p99 ingest-to-delivery {r1.p99_ms:.0f} ms (target < 100 ms on 2 cores): "
            f"{'met' if r1.p99_ms < 100 else 'NOT met'}"
        )
    log(
        "latency = wall time a data item was read by the client - wall time just before its "
        "batch was POSTed (feed) or broadcast (websockets)"
    )


def budget(sg: FeedRun, ws: FeedRun, floor: FeedRun, send_us: float) -> None:
    """``--budget``: the feed server's CPU split into the floor run's (ingest, storage and the
    rounds' fixed part, with a few sessions), the kernel's sends (one a session a round, at
    ``send_us``) and the rest (the sessions' own share of the rounds), beside what the 0.9
    target allows."""
    if not (sg.server_cpu_s > 0 and ws.server_cpu_s > 0 and sg.session_rounds):
        return
    n = sg.session_rounds
    allowed = ws.server_cpu_s * (sg.res.delivered / max(ws.res.delivered, 1)) / 0.9
    sends = n * send_us / 1e6
    wall = sg.server_cpu_s / sg.res.server_cpu_pct * 100 if sg.res.server_cpu_pct else 1.0

    def share(cpu_s: float) -> str:
        return f"{cpu_s:6.2f} CPU-s = {cpu_s / wall * 100:4.1f}% of a core"

    log("-" * 86)
    log(f"CPU BUDGET of the 0.9 target ({n:,} writes: a session's rows of a round)")
    log(f"  the broadcast server, whole                     {share(ws.server_cpu_s)}")
    log(f"  the feed server at 0.9 may use                  {share(allowed)}")
    log(f"  the feed server used                            {share(sg.server_cpu_s)}")
    log(f"    of which ingest, storage, rounds' fixed part  {share(floor.server_cpu_s)}")
    log(f"    of which the kernel's sends ({send_us:.2f} us each)  {share(sends)}")
    own = sg.server_cpu_s - floor.server_cpu_s - sends
    left = allowed - floor.server_cpu_s - sends
    log(
        f"    the rest: the sessions' own round work      {share(own)} = "
        f"{own / n * 1e6:.1f} us a write"
    )
    log(
        f"  at 0.9 that rest may be                         {share(left)} = "
        f"{left / n * 1e6:.1f} us a write"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_args(ap)
    main_feed(ap.parse_args())


if __name__ == "__main__":
    main()
