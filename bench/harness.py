"""The shared harness of the benchmarks: a streamgauge server as a subprocess, the mesonet
setup, the ingest producers and the fan-out machinery (subscribers, paced ingest, analysis).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    Busy,
    ColumnarEncoder,
    HttpConn,
    LineProtocolEncoder,
    Mesonet,
    NdjsonEncoder,
    build_request,
    device_bodies,
    fanout_series,
    free_port,
    ingest_batches,
    loop_factory,
    make_filters,
    post_all,
    proc_cpu_seconds,
    site_bodies,
    system_busy_seconds,
    values_for,
    weighted_percentiles,
)

PROJECT = "bench"
TOKEN = "bench-admin-token-0123456789"
HOST = "127.0.0.1"
NOW_MS = int(time.time()) * 1000
INGEST_T0_MS = NOW_MS - 3 * 3600 * 1000  # ingest times: 3 h ago, one tick per 10 s
INGEST_TICK_MS = 10_000
FANOUT_T1_MS = NOW_MS - 3600 * 1000  # fan-out times: 1 h ago, one second per batch


def run_async(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory()) as r:
        return r.run(coro)


def log(*a: Any) -> None:
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------
# streamgauge server


class StreamgaugeServer:
    def __init__(self, durability: str, env: dict[str, str] | None = None):
        self.extra_env = dict(env or {})
        # STREAMGAUGE_BENCH_EXE: another server executable with the same CLI (bench testing)
        self.exe = Path(
            os.environ.get("STREAMGAUGE_BENCH_EXE") or Path(sys.executable).parent / "streamgauge"
        )
        self.data = Path(tempfile.mkdtemp(prefix="sg-bench-data-"))
        self.port = free_port()
        self.durability = durability
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StreamgaugeServer:
        if not self.exe.exists():
            raise RuntimeError(f"{self.exe} not found (pip install -e . first)")
        env = dict(
            os.environ, STREAMGAUGE_ADMIN_TOKEN=TOKEN, STREAMGAUGE_DURABILITY=self.durability
        )
        # One process unless asked (``--workers N``: the fan-out workers of docs/workers.md).
        env.setdefault("STREAMGAUGE_WORKERS", "1")
        env.update(self.extra_env)
        self.logf = open(self.data.parent / f"{self.data.name}.log", "wb")
        self.proc = subprocess.Popen(
            [
                str(self.exe),
                "serve",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--data",
                str(self.data),
            ],
            env=env,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
        )
        import httpx

        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("streamgauge exited:\n" + self.log_tail())
            try:
                r = httpx.get(
                    f"http://{HOST}:{self.port}/healthz",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=2,
                )
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("streamgauge /healthz not 200 in 60 s:\n" + self.log_tail())

    def log_tail(self, n: int = 3000) -> str:
        try:
            self.logf.flush()
            return (self.data.parent / f"{self.data.name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def data_size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.data.rglob("*") if p.is_file()) / 2**20

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        shutil.rmtree(self.data, ignore_errors=True)
        try:
            (self.data.parent / f"{self.data.name}.log").unlink()
        except OSError:
            pass


def setup_mesonet(port: int, m: Mesonet, chunk: int = 2000) -> dict[str, Any]:
    import httpx

    base = f"http://{HOST}:{port}/api/v1/projects"
    h = {"Authorization": f"Bearer {TOKEN}"}
    out: dict[str, Any] = {}
    with httpx.Client(headers=h, timeout=300) as c:
        r = c.post(base, json={"id": PROJECT, "name": "Benchmark mesonet"})
        if r.status_code != 201:
            raise RuntimeError(f"create project: {r.status_code} {r.text[:500]}")
        t = time.perf_counter()
        sites = site_bodies(m)
        for i in range(0, len(sites), chunk):
            r = c.post(f"{base}/{PROJECT}/sites", json=sites[i : i + chunk])
            if r.status_code not in (200, 201):
                raise RuntimeError(f"bulk sites: {r.status_code} {r.text[:800]}")
        out["sites_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with_units = True
        i = 0
        devs = device_bodies(m, with_units=True)
        while i < len(devs):
            r = c.post(f"{base}/{PROJECT}/devices", json=devs[i : i + chunk])
            if r.status_code not in (200, 201):
                if with_units and i == 0 and r.status_code in (400, 422) and "unit" in r.text:
                    log(f"  devices with units rejected ({r.text[:300]}); retrying without units")
                    with_units = False
                    devs = device_bodies(m, with_units=False)
                    continue
                raise RuntimeError(f"bulk devices: {r.status_code} {r.text[:800]}")
            i += chunk
        out["devices_s"] = time.perf_counter() - t
        out["units"] = with_units
    return out


# ---------------------------------------------------------------------------------------------
# ingest


@dataclass
class IngestResult:
    target: str
    rows: int
    batch: int
    producers: int
    seconds: float
    obs_s: float
    server_cpu_s: float
    client_cpu_s: float
    accepted: int | None = None
    duplicates: int | None = None
    encode_s: float = 0.0
    req_p50_ms: float = 0.0
    req_max_ms: float = 0.0
    other_cpu_s: float = 0.0  # busy CPU of processes other than server and client

    def line(self) -> str:
        extra = ""
        if self.accepted is not None:
            extra = f"  accepted={self.accepted} dup={self.duplicates}"
        return (
            f"  {self.target:12s} batch={self.batch:6d} producers={self.producers}  "
            f"{self.rows:9,d} obs in {self.seconds:6.2f} s = {self.obs_s:10,.0f} obs/s  "
            f"server cpu {self.server_cpu_s / self.seconds * 100:4.0f}%  "
            f"client cpu {self.client_cpu_s / self.seconds * 100:3.0f}%  "
            f"other procs cpu {self.other_cpu_s / self.seconds * 100:3.0f}%  "
            f"request p50 {self.req_p50_ms:.0f} ms max {self.req_max_ms:.0f} ms{extra}"
        )


class Ingestor:
    """Posts the endless observation stream (rows continue across runs, so every run has fresh,
    increasing times) to streamgauge (NDJSON) or InfluxDB (line protocol)."""

    def __init__(self, m: Mesonet, target: str, host: str, port: int, pid: int, token: str | None):
        self.m, self.target, self.host, self.port, self.pid = m, target, host, port, pid
        self.row = 0
        self.fmt = "ndjson"
        if target == "streamgauge":
            self.enc: Any = NdjsonEncoder(m)
            self.path = f"/api/v1/projects/{PROJECT}/observations"
            self.headers = {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/x-ndjson",
            }
            self.ok: tuple[int, ...] = (200,)
        else:
            self.enc = LineProtocolEncoder(m)
            self.path = "/write?db=bench&precision=ms"
            self.headers = {"Content-Type": "text/plain"}
            self.ok = (204, 200)

    def use_format(self, fmt: str) -> None:
        """Send the next runs as ``ndjson``, ``arrow`` (IPC stream) or ``parquet`` (streamgauge
        only); the rows go on where the last run ended."""
        self.fmt = fmt
        if fmt == "ndjson":
            self.enc = NdjsonEncoder(self.m)
            self.headers["Content-Type"] = "application/x-ndjson"
        else:
            self.enc = ColumnarEncoder(self.m, fmt)
            self.headers["Content-Type"] = ColumnarEncoder.MEDIA[fmt]

    def run(self, rows: int, batch: int, producers: int, *, profile: bool = False) -> IngestResult:
        """Post ``rows`` more observations; ``profile``: py-spy on the server meanwhile when
        BENCH_PYSPY names an output file (``<name>.<target>`` each target)."""
        t = time.perf_counter()
        bodies = ingest_batches(
            self.m, self.enc, self.row, rows, batch, INGEST_T0_MS, INGEST_TICK_MS
        )
        reqs = [
            build_request("POST", self.host, self.port, self.path, self.headers, b) for b in bodies
        ]
        del bodies
        enc_s = time.perf_counter() - t
        self.row += rows
        cpu0 = proc_cpu_seconds(self.pid)
        c0 = time.process_time()
        b0 = system_busy_seconds()
        spy = None
        if profile and os.environ.get("BENCH_PYSPY"):
            out = f"{os.environ['BENCH_PYSPY']}.{self.target}"
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(self.pid)]
                + ["-d", "3600", "-f", "raw", "-o", out]
                + os.environ.get("BENCH_PYSPY_ARGS", "").split(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        elapsed, resps, durs = run_async(post_all(self.host, self.port, reqs, producers, self.ok))
        if spy is not None:  # stopped as the run ends: py-spy writes its file on SIGINT
            spy.send_signal(signal.SIGINT)
            spy.wait()
        client = time.process_time() - c0
        server = proc_cpu_seconds(self.pid) - cpu0
        other = max(0.0, system_busy_seconds() - b0 - client - server)
        res = IngestResult(
            self.target if self.fmt == "ndjson" else f"sg-{self.fmt}",
            rows,
            batch,
            producers,
            elapsed,
            rows / elapsed,
            server,
            client,
            encode_s=enc_s,
            req_p50_ms=float(np.percentile(durs, 50)) * 1000,
            req_max_ms=max(durs) * 1000,
            other_cpu_s=other,
        )
        if self.target == "streamgauge":
            acc = dup = 0
            for _, body in resps:
                j = json.loads(body)
                acc += int(j.get("accepted", 0))
                dup += int(j.get("duplicates", 0))
            res.accepted, res.duplicates = acc, dup
        return res


def ingest_suite(
    ing: Ingestor,
    grid: list[tuple[int, int]],
    sweep_rows: int,
    final_rows: int,
    final_cfg: tuple[int, int] | None,
) -> tuple[list[IngestResult], IngestResult]:
    """A warmup (every series' first value), a sweep of ``sweep_rows`` over ``grid`` (none if
    0), then ``final_rows`` at ``final_cfg`` (None: the sweep's best, or the grid's first
    setting without a sweep). BENCH_PYSPY profiles the server during the final run."""
    sweep = []
    w = ing.run(ing.m.nseries, grid[0][0], grid[0][1])
    log("  warmup (first value of every series, not ranked):")
    log(w.line())
    for batch, prod in grid if sweep_rows else []:
        r = ing.run(sweep_rows, batch, prod)
        log(r.line())
        sweep.append(r)
    if final_cfg is None:
        best = max(sweep, key=lambda r: r.obs_s) if sweep else None
        final_cfg = (best.batch, best.producers) if best else grid[0]
    final = ing.run(final_rows, *final_cfg, profile=True)
    log(r"  final:" + final.line())
    return sweep, final


# ---------------------------------------------------------------------------------------------
# fan-out


@dataclass
class FanoutCfg:
    seconds: float = 20.0
    rate: float = 10_000.0  # observations/s
    rows: int = 500  # observations per batch
    subscribers: int = 100
    procs: int = 2
    grace: float = 3.0
    busy: float = 0.0  # share of one core another process uses during the paced phase

    @property
    def batches_per_s(self) -> float:
        return self.rate / self.rows

    @property
    def nbatches(self) -> int:
        return int(round(self.batches_per_s * self.seconds))


@dataclass
class FanoutResult:
    name: str
    cfg: dict[str, Any]
    connected: int = 0
    sent_obs: int = 0
    ingest_obs_s: float = 0.0
    send_lag_max_s: float = 0.0
    ack_p50_ms: float = float("nan")
    ack_p99_ms: float = float("nan")
    ack_max_ms: float = float("nan")
    ack_worst: list[str] = field(default_factory=list)
    expected: int = 0
    delivered: int = 0
    delivered_obs_s: float = 0.0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    closed_behind: int = 0
    resume_samples: list[str] = field(default_factory=list)
    short_subscribers: list[str] = field(default_factory=list)
    over_subscribers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_cpu_pct: float = float("nan")
    subscriber_cpu_pct: float = float("nan")
    other_cpu_pct: float = float("nan")
    unmatched: int = 0
    sample_line: str = ""


def start_subscribers(
    kind: str, port: int, targets: list[str], procs: int
) -> tuple[list[Any], Any, Any, Any]:
    ctx = mp.get_context("spawn")
    ready_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    from .subscribers import subscriber_process

    ps = []
    for i in range(procs):
        mine = targets[i::procs]
        idx = list(range(len(targets)))[i::procs]
        p = ctx.Process(
            target=subscriber_process,
            args=(kind, HOST, port, mine, idx, TOKEN, ready_q, stop, result_q),
            daemon=True,
        )
        p.start()
        ps.append(p)
    return ps, ready_q, result_q, stop


def collect_subscribers(
    ps: list[Any], ready_q: Any, result_q: Any, stop: Any, n_targets: int, procs: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    stop.set()
    meta: dict[str, Any] = {"closed": 0, "ended": 0, "errors": [], "cpu": 0.0}
    got = 0
    deadline = time.time() + 60
    # results come back in completion order; each subscriber record carries its filter index
    results: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    while got < procs and time.time() < deadline:
        try:
            item = result_q.get(timeout=1)
        except queue.Empty:
            continue
        got += 1
        if item[0] == "error":
            meta["errors"].append(item[1][-1500:])
            continue
        results.append((item[1], item[2]))
    for p in ps:
        p.join(10)
        if p.is_alive():
            p.terminate()
    flat: list[dict[str, Any]] = []
    for res, mt in results:
        flat.extend(res)
        meta["closed"] += mt.get("closed", 0)
        meta["ended"] += mt.get("ended", 0)
        meta["errors"].extend(mt.get("errors", []))
        meta["cpu"] += mt.get("cpu", 0.0)
    return flat, meta


def wait_ready(ready_q: Any, procs: int, timeout: float = 60) -> tuple[int, list[str]]:
    n, errs = 0, []
    deadline = time.time() + timeout
    for _ in range(procs):
        try:
            item = ready_q.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            errs.append("subscriber process not ready in time")
            continue
        n += item[1]
        errs.extend(item[2])
    return n, errs


def analyse(
    name: str,
    cfg: FanoutCfg,
    m: Mesonet,
    filters: list[Any],
    subs: list[dict[str, Any]],
    meta: dict[str, Any],
    send_ms: np.ndarray,
    send_wall: np.ndarray,
    t1_ms: int,
    res: FanoutResult,
) -> FanoutResult:
    all_series = np.concatenate([fanout_series(m, k, cfg.rows) for k in range(cfg.nbatches)])
    expected = [int(f.mask(m, all_series).sum()) for f in filters]
    res.expected = sum(expected)
    lat_parts, w_parts = [], []
    for s in subs:
        fi = s["fi"]
        res.delivered += s["lines"]
        for ln in s["resume"]:
            res.closed_behind += 1
            if len(res.resume_samples) < 3:
                res.resume_samples.append(ln.decode(errors="replace"))
        if fi >= 0:
            exp = expected[fi]
            if s["lines"] < exp * 0.99 and len(res.short_subscribers) < 8:
                res.short_subscribers.append(
                    f"{filters[fi].query()[:60] or '(none)'}: {s['lines']}/{exp}"
                )
            if s["lines"] > exp and len(res.over_subscribers) < 8:
                res.over_subscribers.append(
                    f"{filters[fi].query()[:60] or '(none)'}: {s['lines']}/{exp}"
                )
        if s["t_ms"].size:
            off = s["t_ms"] - t1_ms
            k = off // 1000
            good = (off % 1000 == 0) & (k >= 0) & (k < len(send_wall))
            res.unmatched += int(s["cnt"][~good].sum())
            lat_parts.append(s["recv"][good] - send_wall[k[good]])
            w_parts.append(s["cnt"][good])
        if not res.sample_line and s.get("sample"):
            res.sample_line = s["sample"]
    res.delivered_obs_s = res.delivered / cfg.seconds
    if lat_parts:
        lat = np.concatenate(lat_parts) * 1000
        w = np.concatenate(w_parts)
        res.p50_ms, res.p90_ms, res.p99_ms, res.max_ms = weighted_percentiles(
            lat, w, [50, 90, 99, 100]
        )
    res.errors.extend(meta["errors"][:10])
    return res


def paced_phase(
    pid: int, port: int, reqs: list[bytes], cfg: Any, res: Any
) -> tuple[float, float, float, float, np.ndarray]:
    """Ingest ``reqs`` paced to ``cfg.batches_per_s``, wait ``cfg.grace``, and fill ``res`` with
    ack latencies, the worst batches, ingest rate and server CPU. Returns (server, busy, client,
    wall) seconds for the caller's CPU accounting, and each batch's send wall time."""
    cpu0, t0 = proc_cpu_seconds(pid), time.time()
    b0, c0 = system_busy_seconds(), time.process_time()
    # ``--busy SHARE``: another process uses SHARE of one core while the batches go in (issue
    # 17's "with another process busy"); its CPU counts as other processes'.
    with Busy(getattr(cfg, "busy", 0.0)):
        send_wall, ack, elapsed, lag, perr = run_async(paced_ingest(port, reqs, cfg.batches_per_s))
    res.ack_p50_ms, res.ack_p99_ms, res.ack_max_ms = (
        float(x) * 1000 for x in np.percentile(ack, [50, 99, 100])
    )
    worst = np.argsort(ack)[::-1][:3]
    res.ack_worst = [
        f"batch {int(k)} sent at +{send_wall[k] - send_wall[0]:.2f} s: {ack[k] * 1000:.0f} ms"
        for k in worst
    ]
    time.sleep(cfg.grace)
    server_s = proc_cpu_seconds(pid) - cpu0
    busy_s, client_s = system_busy_seconds() - b0, time.process_time() - c0
    wall = time.time() - t0
    res.server_cpu_pct = server_s / wall * 100
    res.errors.extend(perr[:5])
    res.sent_obs = cfg.nbatches * cfg.rows
    res.ingest_obs_s = res.sent_obs / elapsed
    res.send_lag_max_s = lag
    return server_s, busy_s, client_s, wall, send_wall


def fanout_targets(filters: list[Any], kind: str) -> list[str]:
    if kind == "http":
        return [
            f"/api/v1/projects/{PROJECT}/stream" + (f"?{f.query()}" if f.query() else "")
            for f in filters
        ]
    return [f"/?sub={i}" for i in range(len(filters))]


async def paced_ingest(
    port: int, reqs: list[bytes], batches_per_s: float, max_inflight: int = 8
) -> tuple[np.ndarray, np.ndarray, float, float, list[str]]:
    conns: asyncio.Queue[HttpConn] = asyncio.Queue()
    for _ in range(max_inflight):
        c = HttpConn(HOST, port)
        await c.open()
        conns.put_nowait(c)
    send_wall = np.zeros(len(reqs))
    ack = np.zeros(len(reqs))
    errors: list[str] = []
    lag_max = 0.0

    async def one(c: HttpConn, req: bytes, k: int) -> None:
        try:
            st, body = await c.send(req)
            ack[k] = time.time() - send_wall[k]
            if st != 200:
                errors.append(f"HTTP {st}: {body[:300]!r}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        conns.put_nowait(c)

    tasks = []
    t0 = time.time() + 0.05
    for k, req in enumerate(reqs):
        delay = t0 + k / batches_per_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        c = await conns.get()
        now = time.time()
        lag_max = max(lag_max, now - (t0 + k / batches_per_s))
        send_wall[k] = now
        tasks.append(asyncio.create_task(one(c, req, k)))
    await asyncio.gather(*tasks)
    elapsed = time.time() - t0
    while not conns.empty():
        conns.get_nowait().close()
    return send_wall, ack, elapsed, lag_max, errors


def fanout_streamgauge(m: Mesonet, cfg: FanoutCfg, srv: StreamgaugeServer) -> FanoutResult:
    filters = make_filters(m, cfg.subscribers)
    res = FanoutResult("streamgauge", asdict(cfg))
    enc = NdjsonEncoder(m)
    reqs = []
    path = f"/api/v1/projects/{PROJECT}/observations"
    hdr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    for k in range(cfg.nbatches):
        s = fanout_series(m, k, cfg.rows)
        body = enc.rows(
            s,
            np.full(s.shape, FANOUT_T1_MS + k * 1000),
            values_for(m, s, np.full(s.shape, 10_000 + k)),
        )
        reqs.append(build_request("POST", HOST, srv.port, path, hdr, body))
    ps, rq, resq, stop = start_subscribers(
        "http", srv.port, fanout_targets(filters, "http"), cfg.procs
    )
    try:
        res.connected, errs = wait_ready(rq, cfg.procs)
        res.errors.extend(errs[:5])
        time.sleep(0.5)
        assert srv.proc is not None
        server_s, busy_s, client_s, wall, send_wall = paced_phase(
            srv.proc.pid, srv.port, reqs, cfg, res
        )
        subs, meta = collect_subscribers(ps, rq, resq, stop, len(filters), cfg.procs)
        res.subscriber_cpu_pct = meta["cpu"] / wall * 100
        # subscriber cpu is counted to the end of their life: a slight overestimate, so clamp
        res.other_cpu_pct = max(0.0, busy_s - server_s - client_s - meta["cpu"]) / wall * 100
    finally:
        stop.set()
        for p in ps:
            p.join(5)
            if p.is_alive():
                p.terminate()
    send_ms = FANOUT_T1_MS + np.arange(cfg.nbatches) * 1000
    return analyse(
        "streamgauge", cfg, m, filters, subs, meta, send_ms, send_wall, FANOUT_T1_MS, res
    )


def fanout_ws_baseline(m: Mesonet, cfg: FanoutCfg) -> FanoutResult:
    from .ws_broadcast_baseline import ws_baseline_process

    filters = make_filters(m, cfg.subscribers)
    res = FanoutResult("websockets", asdict(cfg))
    ctx = mp.get_context("spawn")
    wready, wres, go, wstop = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    port = free_port()
    wp = ctx.Process(
        target=ws_baseline_process,
        args=(
            m.n,
            filters,
            cfg.rows,
            cfg.batches_per_s,
            cfg.seconds,
            FANOUT_T1_MS,
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
    try:
        item = wready.get(timeout=60)
        if item[0] == "error":
            raise RuntimeError(item[1])
        ps, rq, resq, stop = start_subscribers("ws", port, fanout_targets(filters, "ws"), cfg.procs)
        res.connected, errs = wait_ready(rq, cfg.procs)
        res.errors.extend(errs[:5])
        time.sleep(0.5)
        cpu0, t0 = proc_cpu_seconds(wp.pid), time.time()  # type: ignore[arg-type]
        b0 = system_busy_seconds()
        go.set()
        item = wres.get(timeout=cfg.seconds + 120)
        if item[0] == "error":
            raise RuntimeError(item[1])
        _, send_ms, send_wall, elapsed, lag = item
        time.sleep(cfg.grace)
        res.server_cpu_pct = (proc_cpu_seconds(wp.pid) - cpu0) / (time.time() - t0) * 100  # type: ignore[arg-type]
        server_s = proc_cpu_seconds(wp.pid) - cpu0  # type: ignore[arg-type]
        busy_s, wall = system_busy_seconds() - b0, time.time() - t0
        res.sent_obs = cfg.nbatches * cfg.rows
        res.ingest_obs_s = res.sent_obs / elapsed
        res.send_lag_max_s = lag
        subs, meta = collect_subscribers(ps, rq, resq, stop, len(filters), cfg.procs)
        res.subscriber_cpu_pct = meta["cpu"] / wall * 100
        res.other_cpu_pct = max(0.0, busy_s - server_s - meta["cpu"]) / wall * 100
    finally:
        wstop.set()
        if stop is not None:
            stop.set()
        for p in [*ps, wp]:
            p.join(5)
            if p.is_alive():
                p.terminate()
    return analyse("websockets", cfg, m, filters, subs, meta, send_ms, send_wall, FANOUT_T1_MS, res)


def print_fanout(name: str, r: FanoutResult) -> None:
    log(
        f"  {name}: {r.connected} subscribers connected; ingested {r.sent_obs:,} obs at "
        f"{r.ingest_obs_s:,.0f} obs/s (max send lag {r.send_lag_max_s * 1000:.0f} ms)"
    )
    if r.ack_worst:
        log(
            f"    ingest ack latency p50 {r.ack_p50_ms:.1f} ms, p99 {r.ack_p99_ms:.1f} ms, "
            f"max {r.ack_max_ms:.0f} ms; slowest: {'; '.join(r.ack_worst)}"
        )
    pct = r.delivered / r.expected * 100 if r.expected else float("nan")
    log(
        f"    delivered {r.delivered:,} of {r.expected:,} expected ({pct:.1f}%) = "
        f"{r.delivered_obs_s:,.0f} obs/s; latency p50 {r.p50_ms:.1f} ms, p90 {r.p90_ms:.1f} ms, "
        f"p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms"
    )
    log(
        f"    closed for falling behind: {r.closed_behind}; server cpu {r.server_cpu_pct:.0f}%, "
        f"subscriber procs cpu {r.subscriber_cpu_pct:.0f}%, "
        f"other procs cpu {r.other_cpu_pct:.0f}%; "
        f"unmatched lines {r.unmatched}"
    )
    for s in r.resume_samples:
        log(f"    resume line: {s[:200]}")
    if r.short_subscribers:
        log(f"    short subscribers (delivered/expected): {r.short_subscribers}")
    if r.over_subscribers:
        log(f"    subscribers with MORE than expected: {r.over_subscribers}")
    if r.sample_line:
        log(f"    sample line: {r.sample_line[:200]}")
    for e in r.errors[:5]:
        log(f"    error: {e[:400]}")
