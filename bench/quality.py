"""streamgauge quality/filters benchmark: ingest with QC vs without, and 1,000 filtered streams.

    .venv/bin/python -m bench quality            # about 4 minutes

(1) Two servers (STREAMGAUGE_QC=true and STREAMGAUGE_QC=false), the same mesonet, the same
    NDJSON batches, batch size, producers and rows, run alternately; obs/s of each and the ratio.
(2) On the QC server: 1,000 stream subscribers (3 processes), each with a different filter made
    of Synoptic domain arguments (state, network, radius, bbox), vars and filter_on expressions,
    while observations are ingested at a paced 10,000 obs/s for 20 s. Expected deliveries come
    from a numpy mirror of every filter (per station report for filter_on).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import quote

import numpy as np

from .common import (
    NETWORKS,
    NVARS,
    STATES,
    VAR_NAMES,
    Mesonet,
    NdjsonEncoder,
    build_request,
    device_id,
    fanout_series,
    machine_speed,
    make_mesonet,
    proc_rss_mb,
    start_profile,
    values_for,
)
from .harness import (
    FANOUT_T1_MS,
    HOST,
    PROJECT,
    TOKEN,
    FanoutCfg,
    FanoutResult,
    Ingestor,
    IngestResult,
    StreamgaugeServer,
    analyse,
    collect_subscribers,
    log,
    paced_phase,
    print_fanout,
    setup_mesonet,
    wait_ready,
)
from .subscribers import raise_nofile

EARTH_RADIUS_MILES = 3958.8
# catalog ranges of the server's sl_range_check (values outside are removed from streams)
RANGES = {
    "air_temp": (-90.0, 65.0),
    "relative_humidity": (0.0, 100.0),
    "wind_speed": (0.0, 120.0),
    "wind_gust": (0.0, 120.0),
    "pressure": (30000.0, 110000.0),
    "precip_accum": (0.0, 50000.0),
}
OPS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "=": np.equal,
    "!=": np.not_equal,
}


def haversine(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    la1, lo1 = np.radians(lat), np.radians(lon)
    la2, lo2 = np.radians(lats), np.radians(lons)
    h = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return cast(np.ndarray, 2 * EARTH_RADIUS_MILES * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


# ---------------------------------------------------------------------------------------------
# Filters: query text for the stream and a numpy mirror


Cond = tuple[str, str, float]  # (variable, op, value)


@dataclass
class QFilter:
    kind: str
    states: list[str] | None = None  # as written in the query (mixed case)
    networks: list[str] | None = None
    radius: tuple[float, float, float] | None = None  # lat, lon, miles
    radius_stid: tuple[int, float] | None = None  # station index, miles
    bbox: tuple[float, float, float, float] | None = None  # min_lon, min_lat, max_lon, max_lat
    vars: list[int] | None = None
    expr: list[list[Cond]] | None = None  # OR of ANDs
    rows: int = 500  # rows per fan-out batch (a report = one station in one batch)
    _memo: tuple[tuple[int, int], np.ndarray] | None = None

    def expr_text(self) -> str:
        assert self.expr
        terms = [" and ".join(f"({v} {op} {val:g})" for v, op, val in t) for t in self.expr]
        if len(terms) == 1:
            return terms[0]
        return " or ".join(f"({t})" if len(self.expr[i]) > 1 else t for i, t in enumerate(terms))

    def query(self) -> str:
        p = []
        if self.states:
            p.append("state=" + ",".join(self.states))
        if self.networks:
            p.append("network=" + ",".join(self.networks))
        if self.radius:
            p.append("radius={:.4f},{:.4f},{:g}".format(*self.radius))
        if self.radius_stid:
            p.append(f"radius={device_id(self.radius_stid[0])},{self.radius_stid[1]:g}")
        if self.bbox:
            p.append("bbox={:.3f},{:.3f},{:.3f},{:.3f}".format(*self.bbox))
        if self.vars:
            p.append("vars=" + ",".join(VAR_NAMES[v] for v in self.vars))
        if self.expr:
            p.append("filter=" + quote(self.expr_text(), safe=""))
        return "&".join(p)

    def station_mask(self, m: Mesonet) -> np.ndarray:
        ok = np.ones(m.n, bool)
        if self.states:
            ok &= np.isin(m.state, [STATES.index(s.upper()) for s in self.states])
        if self.networks:
            ok &= np.isin(m.network, [NETWORKS.index(s.upper()) for s in self.networks])
        lat, lon = site_coords(m)
        if self.radius:
            ok &= haversine(self.radius[0], self.radius[1], lat, lon) <= self.radius[2]
        if self.radius_stid:
            c = self.radius_stid[0]
            ok &= haversine(float(lat[c]), float(lon[c]), lat, lon) <= self.radius_stid[1]
        if self.bbox:
            x0, y0, x1, y1 = self.bbox
            ok &= (lat >= y0) & (lat <= y1) & (lon >= x0) & (lon <= x1)
        return ok

    def mask(self, m: Mesonet, series: np.ndarray) -> np.ndarray:
        """series: the concatenated fan-out batches (batch k = rows [k*rows, (k+1)*rows))."""
        key = (id(series), series.size)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        ok = self._mask(m, series)
        self._memo = (key, ok)
        return ok

    def _mask(self, m: Mesonet, series: np.ndarray) -> np.ndarray:
        st = series // NVARS
        var = series % NVARS
        ok: np.ndarray = self.station_mask(m)[st]
        if self.vars:
            ok &= np.isin(var, self.vars)
        data = report_data(m, series, self.rows)
        ok &= data[4]  # the server removes sl_range_check failures (e.g. wind_speed < 0)
        if self.expr and ok.any():
            ok &= report_pass(self.expr, data)
        return ok


_COORDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def site_coords(m: Mesonet) -> tuple[np.ndarray, np.ndarray]:
    """Site coordinates as the bench sent them (site_bodies rounds to 5 decimals)."""
    if id(m) not in _COORDS:
        _COORDS[id(m)] = (
            np.array([round(float(x), 5) for x in m.lat]),
            np.array([round(float(x), 5) for x in m.lon]),
        )
    return _COORDS[id(m)]


_REPORT_CACHE: dict[tuple[int, int], Any] = {}


def report_data(m: Mesonet, series: np.ndarray, rows: int) -> Any:
    """(report id per row, n reports, variable per row, value per row, in-range per row)."""
    key = (id(series), rows)
    if key not in _REPORT_CACHE:
        _REPORT_CACHE.clear()
        batch = np.arange(series.size) // rows
        st = series // NVARS
        _, rep = np.unique(batch * m.n + st, return_inverse=True)
        var = series % NVARS
        vals = values_for(m, series, 10_000 + batch)
        lo = np.array([RANGES[v][0] for v in VAR_NAMES])[var]
        hi = np.array([RANGES[v][1] for v in VAR_NAMES])[var]
        _REPORT_CACHE.clear()
        _REPORT_CACHE[key] = (
            series,
            rep,
            int(rep.max()) + 1,
            var,
            vals,
            (vals >= lo) & (vals <= hi),
        )
    return _REPORT_CACHE[key][1:]


def report_pass(expr: list[list[Cond]], data: Any) -> np.ndarray:
    rep, nrep, var, vals, inrange = data
    any_term = np.zeros(nrep, bool)
    for term in expr:
        all_c = np.ones(nrep, bool)
        for v, op, val in term:
            hit = (var == VAR_NAMES.index(v)) & inrange & OPS[op](vals, val)
            all_c &= np.bincount(rep[hit], minlength=nrep) > 0
        any_term |= all_c
    return cast(np.ndarray, any_term[rep])


def make_quality_filters(m: Mesonet, count: int = 1000, rows: int = 500) -> list[QFilter]:
    """A deterministic mix of `count` different filters (see README)."""
    rng = np.random.default_rng(20240602)

    def states() -> list[str]:
        k = int(rng.integers(1, 3))
        ss = rng.choice(STATES, k, replace=False).tolist()
        return [s.lower() if rng.random() < 0.3 else s for s in ss]

    def networks() -> list[str]:
        return cast(
            list[str], rng.choice(NETWORKS, int(rng.integers(1, 3)), replace=False).tolist()
        )

    def radius() -> tuple[float, float, float]:
        return (
            round(float(rng.uniform(32, 48.5)), 4),
            round(float(rng.uniform(-124, -102.5)), 4),
            float(rng.choice([25, 40, 60, 80, 120])),
        )

    def radius_stid() -> tuple[int, float]:
        return int(rng.integers(0, m.n)), float(rng.choice([20, 30, 50, 75, 100]))

    def bbox() -> tuple[float, float, float, float]:
        w, h = float(rng.uniform(0.5, 3)), float(rng.uniform(0.5, 2.5))
        x0, y0 = float(rng.uniform(-124.5, -102 - w)), float(rng.uniform(31.5, 49 - h))
        return (round(x0, 3), round(y0, 3), round(x0 + w, 3), round(y0 + h, 3))

    def vars_() -> list[int]:
        return sorted(rng.choice(NVARS, int(rng.integers(1, 3)), replace=False).tolist())

    def cond() -> Cond:
        v = str(
            rng.choice(["air_temp", "wind_speed", "relative_humidity", "pressure", "wind_gust"])
        )
        if v == "air_temp":
            return (v, str(rng.choice(["<", "<="])), float(rng.integers(-3, 8)))
        if v == "wind_speed":
            return (v, str(rng.choice([">", ">="])), float(rng.integers(2, 9)))
        if v == "relative_humidity":
            return (v, str(rng.choice([">", "<"])), float(rng.choice([30, 50, 80])))
        if v == "pressure":
            return (v, "<", float(rng.choice([75000, 80000, 90000])))
        return (v, ">", float(rng.integers(6, 14)))

    def expr() -> list[list[Cond]]:
        r = rng.random()
        if r < 0.3:
            return [[cond()]]
        if r < 0.8:
            return [[cond(), cond()]]
        return [[cond(), cond()], [cond()]]

    kinds: list[tuple[str, int]] = [
        ("state", 60),
        ("network", 30),
        ("radius", 120),
        ("radius_stid", 100),
        ("bbox", 110),
        ("vars", 20),
        ("filter", 40),
        ("state+vars", 70),
        ("state+filter", 60),
        ("network+state", 50),
        ("radius+vars", 70),
        ("radius_stid+filter", 60),
        ("bbox+vars", 60),
        ("bbox+filter", 50),
        ("state+vars+filter", 50),
        ("radius+network+vars+filter", 50),
    ]
    total = sum(n for _, n in kinds)
    fs: list[QFilter] = []
    seen: set[str] = set()
    for kind, n in kinds:
        n = max(1, round(n * count / total))
        made = 0
        while made < n:
            f = QFilter(kind, rows=rows)
            for part in kind.split("+"):
                if part == "state":
                    f.states = states()
                elif part == "network":
                    f.networks = networks()
                elif part == "radius":
                    f.radius = radius()
                elif part == "radius_stid":
                    f.radius_stid = radius_stid()
                elif part == "bbox":
                    f.bbox = bbox()
                elif part == "vars":
                    f.vars = vars_()
                elif part == "filter":
                    f.expr = expr()
            q = f.query()
            if q in seen:
                continue
            seen.add(q)
            fs.append(f)
            made += 1
    return fs[:count]


# ---------------------------------------------------------------------------------------------
# (1) ingest with QC vs without


@dataclass
class QcIngest:
    qc_on: list[dict[str, Any]] = field(default_factory=list)
    qc_off: list[dict[str, Any]] = field(default_factory=list)
    obs_s_on: float = 0.0
    obs_s_off: float = 0.0
    ratio: float = 0.0
    cpu_per_obs_us_on: float = 0.0
    cpu_per_obs_us_off: float = 0.0


def qc_ingest(
    m: Mesonet,
    on: StreamgaugeServer,
    off: StreamgaugeServer,
    rows: int,
    batch: int,
    prod: int,
    rounds: int,
) -> QcIngest:
    assert on.proc is not None and off.proc is not None
    ings = {
        "on": Ingestor(m, "streamgauge", HOST, on.port, on.proc.pid, TOKEN),
        "off": Ingestor(m, "streamgauge", HOST, off.port, off.proc.pid, TOKEN),
    }
    out = QcIngest()
    log("  warm-up (first value of every series, not ranked):")
    for k, ing in ings.items():
        r = ing.run(m.nseries, batch, prod)
        log(f"   QC {k:3s}" + r.line())
    res: dict[str, list[IngestResult]] = {"on": [], "off": []}
    for i in range(rounds):
        order = ["on", "off"] if i % 2 == 0 else ["off", "on"]
        for k in order:
            r = ings[k].run(rows, batch, prod)
            log(f"   QC {k:3s}" + r.line())
            res[k].append(r)
    for k in ("on", "off"):
        rs = res[k]
        n = sum(r.rows for r in rs)
        secs = sum(r.seconds for r in rs)
        cpu = sum(r.server_cpu_s for r in rs)
        if k == "on":
            out.qc_on, out.obs_s_on, out.cpu_per_obs_us_on = (
                [asdict(r) for r in rs],
                n / secs,
                cpu / n * 1e6,
            )
        else:
            out.qc_off, out.obs_s_off, out.cpu_per_obs_us_off = (
                [asdict(r) for r in rs],
                n / secs,
                cpu / n * 1e6,
            )
        if any(r.accepted != r.rows for r in rs):
            log(f"  WARNING QC {k}: accepted != rows: {[(r.accepted, r.rows) for r in rs]}")
    out.ratio = out.obs_s_on / out.obs_s_off if out.obs_s_off else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# (2) fan-out with 1,000 filtered subscribers


def start_subs(port: int, targets: list[str], procs: int) -> tuple[list[Any], Any, Any, Any]:
    import multiprocessing as mp

    from .subscribers import subscriber_process

    ctx = mp.get_context("spawn")
    ready_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    ps = []
    for i in range(procs):
        p = ctx.Process(
            target=subscriber_process,
            args=(
                "http",
                HOST,
                port,
                targets[i::procs],
                list(range(len(targets)))[i::procs],
                TOKEN,
                ready_q,
                stop,
                result_q,
                90.0,
            ),
            daemon=True,
        )
        p.start()
        ps.append(p)
    return ps, ready_q, result_q, stop


@dataclass
class QFanout:
    res: FanoutResult
    rss_before_mb: float = 0.0
    rss_connected_mb: float = 0.0
    rss_after_mb: float = 0.0
    connect_s: float = 0.0
    units_lines: int = 0
    expected_by_kind: dict[str, list[int]] = field(default_factory=dict)
    mask_s: float = 0.0
    batch_diff: list[str] = field(default_factory=list)
    ingest_s: float = 0.0


def quality_fanout(m: Mesonet, cfg: FanoutCfg, srv: StreamgaugeServer) -> QFanout:

    assert srv.proc is not None
    pid = srv.proc.pid
    filters = make_quality_filters(m, cfg.subscribers, cfg.rows)
    res = FanoutResult("streamgauge-quality", asdict(cfg))
    out = QFanout(res)
    enc = NdjsonEncoder(m)
    path = f"/api/v1/projects/{PROJECT}/observations"
    hdr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    reqs = []
    for k in range(cfg.nbatches):
        s = fanout_series(m, k, cfg.rows)
        body = enc.rows(
            s,
            np.full(s.shape, FANOUT_T1_MS + k * 1000),
            values_for(m, s, np.full(s.shape, 10_000 + k)),
        )
        reqs.append(build_request("POST", HOST, srv.port, path, hdr, body))
    targets = [f"/api/v1/projects/{PROJECT}/stream?{f.query()}" for f in filters]
    out.rss_before_mb = proc_rss_mb(pid)
    t = time.time()
    ps, rq, resq, stop = start_subs(srv.port, targets, cfg.procs)
    subs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"errors": []}
    try:
        res.connected, errs = wait_ready(rq, cfg.procs, timeout=120)
        out.connect_s = time.time() - t
        res.errors.extend(errs[:5])
        time.sleep(1.0)
        out.rss_connected_mb = proc_rss_mb(pid)
        log(
            f"  {res.connected} subscribers connected in {out.connect_s:.1f} s; server rss "
            f"{out.rss_before_mb:.0f} -> {out.rss_connected_mb:.0f} MB"
        )
        spy = start_profile(pid, cfg.seconds)
        server_s, busy_s, client_s, wall, send_wall = paced_phase(pid, srv.port, reqs, cfg, res)
        if spy is not None:
            spy.wait()
        out.rss_after_mb = proc_rss_mb(pid)
        subs, meta = collect_subscribers(ps, rq, resq, stop, len(filters), cfg.procs)
        res.subscriber_cpu_pct = meta["cpu"] / wall * 100
        res.other_cpu_pct = max(0.0, busy_s - server_s - client_s - meta["cpu"]) / wall * 100
    finally:
        stop.set()
        for p in ps:
            p.join(5)
            if p.is_alive():
                p.terminate()
    out.units_lines = sum(s.get("units_lines", 0) for s in subs)
    t = time.perf_counter()
    send_ms = FANOUT_T1_MS + np.arange(cfg.nbatches) * 1000
    analyse("streamgauge", cfg, m, filters, subs, meta, send_ms, send_wall, FANOUT_T1_MS, res)
    # per second of the actual ingest (longer than cfg.seconds when the server cannot keep pace)
    if res.ingest_obs_s:
        out.ingest_s = res.sent_obs / res.ingest_obs_s
        res.delivered_obs_s = res.delivered / max(out.ingest_s, cfg.seconds)
    out.mask_s = time.perf_counter() - t
    # expected/delivered by filter kind (masks are memoized from analyse)
    all_series = _REPORT_CACHE[next(iter(_REPORT_CACHE))][0] if _REPORT_CACHE else None
    if all_series is None:
        all_series = np.concatenate([fanout_series(m, k, cfg.rows) for k in range(cfg.nbatches)])
    got = {s["fi"]: s["lines"] for s in subs}
    # shortfall per batch (which batches lost observations)
    exp_b = np.zeros(cfg.nbatches, np.int64)
    got_b = np.zeros(cfg.nbatches, np.int64)
    bidx = np.arange(all_series.size) // cfg.rows
    for f in filters:
        exp_b += np.bincount(bidx[f.mask(m, all_series)], minlength=cfg.nbatches)
    for sub in subs:
        off = sub["t_ms"] - FANOUT_T1_MS
        batch = off // 1000
        good = (off % 1000 == 0) & (batch >= 0) & (batch < cfg.nbatches)
        got_b += np.bincount(batch[good], weights=sub["cnt"][good], minlength=cfg.nbatches).astype(
            np.int64
        )
    short = np.flatnonzero(got_b != exp_b)
    out.batch_diff = [
        f"batch {int(k)}: {int(got_b[k])}/{int(exp_b[k])}" for k in short[:12].tolist()
    ] + ([f"... {len(short)} batches differ"] if len(short) > 12 else [])
    for i, f in enumerate(filters):
        e = out.expected_by_kind.setdefault(f.kind, [0, 0, 0, 0])
        exp = int(f.mask(m, all_series).sum())
        e[0] += 1
        e[1] += exp
        e[2] += got.get(i, 0)
        e[3] += int(got.get(i, 0) != exp)
    return out


# ---------------------------------------------------------------------------------------------


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--durability", default="full", choices=["full", "normal"])
    ap.add_argument("--stations", type=int, default=30_000)
    ap.add_argument("--qc-rows", type=int, default=360_000, help="rows per QC/no-QC run")
    ap.add_argument("--qc-rounds", type=int, default=2, help="alternating runs of each")
    ap.add_argument("--qc-batch", type=int, default=5000)
    ap.add_argument("--qc-producers", type=int, default=2)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--sub-procs", type=int, default=3)
    ap.add_argument("--fanout-seconds", type=float, default=20.0)
    ap.add_argument("--fanout-rate", type=float, default=10_000.0)
    ap.add_argument("--fanout-batch", type=int, default=500)
    ap.add_argument("--skip", default="", help="comma list of: qc-ingest, fanout")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the port (serve --workers N; 1: one process)",
    )


def main_quality(a: argparse.Namespace) -> None:
    raise_nofile()
    t_start = time.time()
    skip = set(filter(None, a.skip.split(",")))
    log(
        f"streamgauge quality bench: cpu_count={os.cpu_count()}  stations={a.stations:,}  "
        f"durability={a.durability}  workers={a.workers}  busy={getattr(a, 'busy', 0.0)}  "
        f"{machine_speed()}"
    )
    m = make_mesonet(a.stations)
    qi: QcIngest | None = None
    qf: QFanout | None = None
    cfg = FanoutCfg(
        a.fanout_seconds,
        a.fanout_rate,
        a.fanout_batch,
        a.subscribers,
        a.sub_procs,
        busy=getattr(a, "busy", 0.0),  # ``python -m bench fanout --busy SHARE``
    )
    on_env = {"STREAMGAUGE_QC": "true", "STREAMGAUGE_WORKERS": str(a.workers)}
    with StreamgaugeServer(a.durability, on_env) as on:
        assert on.proc is not None
        st = setup_mesonet(on.port, m)
        log(f"  QC-on server: setup {st['sites_s']:.1f} s sites, {st['devices_s']:.1f} s devices")
        if "qc-ingest" not in skip:
            log(
                f"\n[1] ingest with QC vs without (batch {a.qc_batch}, {a.qc_producers} producers, "
                f"{a.qc_rounds} x {a.qc_rows:,} rows each, alternating)"
            )
            with StreamgaugeServer(a.durability, {"STREAMGAUGE_QC": "false"}) as off:
                st = setup_mesonet(off.port, m)
                log(
                    f"  QC-off server: setup {st['sites_s']:.1f} s sites, "
                    f"{st['devices_s']:.1f} s devices"
                )
                qi = qc_ingest(m, on, off, a.qc_rows, a.qc_batch, a.qc_producers, a.qc_rounds)
                if off.proc is not None and off.proc.poll() is not None:
                    log("  QC-off SERVER EXITED:\n" + off.log_tail())
            log(
                f"  QC on  {qi.obs_s_on:10,.0f} obs/s  "
                f"({qi.cpu_per_obs_us_on:.1f} server cpu-us/obs)\n"
                f"  QC off {qi.obs_s_off:10,.0f} obs/s  "
                f"({qi.cpu_per_obs_us_off:.1f} server cpu-us/obs)"
                f"\n  ratio QC/no-QC {qi.ratio:.2f}  (target >= 0.80)"
            )
        if "fanout" not in skip:
            log(
                f"\n[2] fan-out: {cfg.subscribers} filtered subscribers ({cfg.procs} procs), "
                f"{cfg.rate:,.0f} obs/s in batches of {cfg.rows} for {cfg.seconds:.0f} s, QC on"
            )
            qf = quality_fanout(m, cfg, on)
            print_fanout("streamgauge", qf.res)
            log(f"    stream opening units lines: {qf.units_lines} (not counted as observations)")
            log(
                f"    expected computed in {qf.mask_s:.1f} s; by filter kind "
                "(n, expected, delivered, subscribers off):"
            )
            if qf.batch_diff:
                log(f"    batches delivered != expected (delivered/expected): {qf.batch_diff}")
            for k, (n, e, d, bad) in qf.expected_by_kind.items():
                log(f"      {k:28s} n={n:4d} expected={e:9,d} delivered={d:9,d} off={bad}")
        if on.proc.poll() is not None:
            log("  QC-on SERVER EXITED:\n" + on.log_tail())
        else:
            tail = on.log_tail(100_000)
            error_lines = [
                ln
                for ln in tail.splitlines()
                if "Traceback" in ln or " ERROR" in ln or "error" in ln.lower()
            ]
            log(
                f"  server log: {len(error_lines)} error-looking lines"
                + (f"; first: {error_lines[:3]}" if error_lines else "")
            )
            pauses = [ln for ln in tail.splitlines() if "garbage collection paused" in ln]
            log(f"  server log: {len(pauses)} full GC pauses over 100 ms {pauses[:5]}")

    log("\n" + "=" * 78)
    log(
        f"QUALITY SUMMARY  cpu_count={os.cpu_count()}  durability={a.durability}  "
        f"total {time.time() - t_start:.0f} s  {machine_speed()}"
    )
    log("-" * 78)
    if qi:
        log(f"ingest obs/s QC on                        {qi.obs_s_on:12,.0f}")
        log(f"ingest obs/s QC off                       {qi.obs_s_off:12,.0f}")
        log(f"ratio QC on / off (target >= 0.80)        {qi.ratio:12.2f}")
    if qf:
        r = qf.res
        pct = r.delivered / r.expected * 100 if r.expected else float("nan")
        log(f"fan-out subscribers connected             {r.connected:12d}")
        log(
            f"fan-out ingest achieved obs/s (paced)     {r.ingest_obs_s:12,.0f} "
            f"(target {cfg.rate:,.0f}; max send lag {r.send_lag_max_s * 1000:.0f} ms)"
        )
        log(
            f"fan-out ingest ack p50/p99/max ms         "
            f"{r.ack_p50_ms:.0f}/{r.ack_p99_ms:.0f}/{r.ack_max_ms:.0f}"
        )
        log(
            f"fan-out delivered obs/s                   {r.delivered_obs_s:12,.0f} "
            f"({r.delivered:,} over {max(qf.ingest_s, cfg.seconds):.1f} s of ingest)"
        )
        log(f"fan-out delivered % of expected           {pct:12.2f}")
        log(f"fan-out latency p50 ms                    {r.p50_ms:12.1f}")
        log(f"fan-out latency p99 ms                    {r.p99_ms:12.1f}")
        log(f"fan-out subscribers closed (behind)       {r.closed_behind:12d}")
        log(f"fan-out server cpu %                      {r.server_cpu_pct:12.0f}")
        log(
            f"server rss MB before/connected/after      "
            f"{qf.rss_before_mb:.0f}/{qf.rss_connected_mb:.0f}/{qf.rss_after_mb:.0f}"
        )
        n = max(r.connected, 1)
        log(
            f"server rss KB per subscriber              "
            f"{(qf.rss_connected_mb - qf.rss_before_mb) * 1024 / n:12.0f} (connected)  "
            f"{(qf.rss_after_mb - qf.rss_before_mb) * 1024 / n:.0f} (after run)"
        )
        log(f"cpu of other processes during fan-out     {r.other_cpu_pct:12.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_args(ap)
    main_quality(ap.parse_args())


if __name__ == "__main__":
    main()
