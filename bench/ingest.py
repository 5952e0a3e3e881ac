"""streamgauge benchmark: ingest throughput and live fan-out, each against a yardstick.

    .venv/bin/python -m bench ingest            # full: about 5 minutes
    .venv/bin/python -m bench ingest --quick    # about 1 minute
    .venv/bin/python -m bench ingest --quick --format arrow   # + the final run as Arrow IPC
    .venv/bin/python -m bench ingest --issue17  # issue 17's ingest row: about 1 minute

``--issue17`` runs exactly the issue's measurement: 2,000 stations x 6 variables, NDJSON
batches of 5,000 rows from 2 producers, 1,200,000 observations (after a warmup that sends
every series' first value), durability=full, QC on; then the same observations, batch size
and producers to InfluxDB 1.6 in the same run; it prints the ratio (the goal: at least 0.6).
It is short for ``--stations 2000 --grid 5000x2 --rows 1200000 --no-sweep
--skip sg-fanout,ws``.

(a) ingest: a streamgauge server (subprocess, loopback, durability=full by default) gets a
    project and a 30,000-station mesonet (6 variables each), then NDJSON batches are POSTed by
    concurrent producers (a grid of batch size x producers, then the best setting once more with
    more rows). Bodies are pre-encoded before timing; the client is this process.
(b) the same observations, batch size and concurrency written to InfluxDB 1.6 (WAL fsync per
    write) as line protocol.
(c) fan-out: 100 NDJSON stream subscribers with different filters (2 processes) while
    observations are ingested at a paced 10,000 obs/s; delivered obs/s and ingest-to-delivery
    latency (p50/p99).
(d) the same frames broadcast by a plain `websockets` server to the same subscribers at the same
    rate.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import machine_speed, make_mesonet, proc_rss_mb
from .harness import (
    HOST,
    TOKEN,
    FanoutCfg,
    Ingestor,
    IngestResult,
    StreamgaugeServer,
    fanout_streamgauge,
    fanout_ws_baseline,
    ingest_suite,
    log,
    print_fanout,
    setup_mesonet,
)


def series_memory(
    port: int, rss_empty: float, rss_setup: float, rss: float, nseries: int
) -> dict[str, float]:
    """Resident bytes per series above the empty server, and the registry's own estimate
    (``streamgauge_registry_bytes`` of /metrics) per series."""
    import httpx

    registry_bytes = float("nan")
    try:
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith("streamgauge_registry_bytes "):
                registry_bytes = float(line.split()[1])
    except httpx.HTTPError:
        pass
    return {
        "rss_empty_mb": rss_empty,
        "rss_setup_mb": rss_setup,
        "rss_mb": rss,
        "rss_per_series_b": (rss - rss_empty) * 2**20 / nseries,
        "registry_bytes": registry_bytes,
        "registry_per_series_b": registry_bytes / nseries,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 1 minute instead of about 5")
    ap.add_argument(
        "--durability",
        default="full",
        choices=["full", "normal"],
        help="STREAMGAUGE_DURABILITY for the server (default full: fsync per commit, "
        "like InfluxDB with wal-fsync-delay=0s)",
    )
    ap.add_argument("--stations", type=int, default=30_000)
    ap.add_argument(
        "--grid",
        default=None,
        help="batch x producers settings to try, e.g. '5000x1,5000x2,10000x4'",
    )
    ap.add_argument("--rows", type=int, default=None, help="observations in the final ingest run")
    ap.add_argument(
        "--no-sweep",
        action="store_true",
        help="no sweep over the grid: the warmup, then the final run at the grid's first setting",
    )
    ap.add_argument(
        "--issue17",
        action="store_true",
        help="issue 17's ingest measurement: --stations 2000 --grid 5000x2 --rows 1200000 "
        "--no-sweep --skip sg-fanout,ws (InfluxDB in the same run, the ratio printed)",
    )
    ap.add_argument("--fanout-seconds", type=float, default=None)
    ap.add_argument("--fanout-rate", type=float, default=10_000)
    ap.add_argument("--fanout-batch", type=int, default=500)
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument(
        "--format",
        default="ndjson",
        choices=["ndjson", "arrow", "parquet"],
        help="also send the final streamgauge run's rows in this columnar format (Arrow IPC "
        "stream or Parquet) right after the NDJSON one, and print the ratio",
    )
    ap.add_argument("--skip", default="", help="comma list of: sg-ingest,influx,sg-fanout,ws")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    a = ap.parse_args(argv)
    if a.issue17:
        a.stations, a.grid, a.rows, a.no_sweep = 2000, "5000x2", 1_200_000, True
        a.skip = ",".join(filter(None, [a.skip, "sg-fanout", "ws"]))
    skip = set(filter(None, a.skip.split(",")))

    if a.quick:
        grid = [(5000, 2), (10000, 2), (10000, 4)]
        sweep_rows, final_rows, fan_s = 180_000, 540_000, 8.0
    else:
        grid = [(5000, 1), (5000, 2), (5000, 4), (10000, 1), (10000, 2), (10000, 4)]
        sweep_rows, final_rows, fan_s = 360_000, 1_800_000, 20.0
    if a.grid:
        grid = [tuple(int(x) for x in g.split("x")) for g in a.grid.split(",")]  # type: ignore[misc]
    if a.rows:
        final_rows = a.rows
    if a.no_sweep:
        sweep_rows = 0
    fcfg = FanoutCfg(
        seconds=a.fanout_seconds or fan_s,
        rate=a.fanout_rate,
        rows=a.fanout_batch,
        subscribers=a.subscribers,
    )

    t_start = time.time()
    log(
        f"load average before start: {os.getloadavg()[0]:.2f} (other work on the machine skews "
        "figures: see 'other procs cpu')"
    )
    log(
        f"streamgauge bench  mode={'quick' if a.quick else 'full'}  cpu_count={os.cpu_count()}  "
        f"python={sys.version.split()[0]}  durability={a.durability}  {machine_speed()}"
    )
    m = make_mesonet(a.stations)
    out: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "mode": "quick" if a.quick else "full",
        "durability": a.durability,
        "stations": a.stations,
    }
    sg_sweep: list[IngestResult] = []
    sg_final = None
    sg_fan = None
    best_cfg = None

    if not {"sg-ingest", "sg-fanout"} <= skip:
        log(f"\n[a] streamgauge ingest ({a.stations:,} stations x 6 variables)")
        try:
            with StreamgaugeServer(a.durability) as srv:
                assert srv.proc is not None
                rss_empty = proc_rss_mb(srv.proc.pid)
                st = setup_mesonet(srv.port, m)
                rss_setup = proc_rss_mb(srv.proc.pid)
                log(
                    f"  setup: {a.stations:,} sites in {st['sites_s']:.1f} s, {a.stations:,} "
                    f"devices ({a.stations * 6:,} variables) in {st['devices_s']:.1f} s"
                    f"{'' if st['units'] else ' (units dropped)'}"
                )
                out["setup"] = st
                if "sg-ingest" not in skip:
                    ing = Ingestor(m, "streamgauge", HOST, srv.port, srv.proc.pid, TOKEN)
                    sg_sweep, sg_final = ingest_suite(ing, grid, sweep_rows, final_rows, None)
                    best_cfg = (sg_final.batch, sg_final.producers)
                    rss = proc_rss_mb(srv.proc.pid)  # before a columnar run loads pyarrow
                    log(
                        f"  server rss {rss:.0f} MB, data folder "
                        f"{srv.data_size_mb():.0f} MB after {ing.row:,} obs"
                    )
                    memory = series_memory(srv.port, rss_empty, rss_setup, rss, m.nseries)
                    out["memory"] = memory
                    log(
                        f"  memory per series ({m.nseries:,} series): "
                        f"{memory['rss_per_series_b']:,.0f} B resident above the empty server "
                        f"({rss_empty:.0f} MB empty, {rss_setup:.0f} MB after setup, "
                        f"{rss:.0f} MB after ingest); registry estimate "
                        f"{memory['registry_per_series_b']:,.0f} B"
                    )
                    if a.format != "ndjson":
                        ing.use_format(a.format)
                        sg_columnar = ing.run(final_rows, *best_cfg)
                        log(f"  final, {a.format}:" + sg_columnar.line())
                        out["sg_columnar"] = asdict(sg_columnar)
                        log(
                            f"  server rss {proc_rss_mb(srv.proc.pid):.0f} MB after the "
                            f"{a.format} run (pyarrow loaded on the first columnar body)"
                        )
                if "sg-fanout" not in skip:
                    log(
                        f"\n[c] streamgauge fan-out: {fcfg.subscribers} subscribers, "
                        f"{fcfg.rate:,.0f} obs/s in batches of {fcfg.rows} "
                        f"for {fcfg.seconds:.0f} s"
                    )
                    sg_fan = fanout_streamgauge(m, fcfg, srv)
                    print_fanout("streamgauge", sg_fan)
                    log(f"  server rss {proc_rss_mb(srv.proc.pid):.0f} MB")
                if srv.proc.poll() is not None:
                    log("  SERVER EXITED:\n" + srv.log_tail())
        except Exception as e:  # noqa: BLE001
            log(f"  streamgauge part failed: {e}")
    out["sg_sweep"] = [asdict(r) for r in sg_sweep]
    out["sg_final"] = asdict(sg_final) if sg_final else None
    out["sg_fanout"] = asdict(sg_fan) if sg_fan else None

    in_sweep: list[IngestResult] = []
    in_final = None
    if "influx" not in skip:
        log("\n[b] InfluxDB 1.6 ingest (line protocol, wal-fsync-delay=0s)")
        from .influx_baseline import INSTALL_HINT, InfluxServer, ensure_influxd

        exe = ensure_influxd()
        if not exe:
            log("  " + INSTALL_HINT)
        else:
            try:
                with InfluxServer(exe) as isrv:
                    assert isrv.proc is not None
                    ing = Ingestor(m, "influxdb", HOST, isrv.port, isrv.proc.pid, None)
                    in_sweep, in_final = ingest_suite(
                        ing, grid, sweep_rows, final_rows, best_cfg or (5000, 2)
                    )
                    log(f"  influxd rss {proc_rss_mb(isrv.proc.pid):.0f} MB")
            except Exception as e:  # noqa: BLE001
                log(f"  influx part failed: {e}")
    out["influx_sweep"] = [asdict(r) for r in in_sweep]
    out["influx_final"] = asdict(in_final) if in_final else None

    ws_fan = None
    if "ws" not in skip:
        log("\n[d] websockets broadcast baseline: same subscribers, frames and rate")
        try:
            ws_fan = fanout_ws_baseline(m, fcfg)
            print_fanout("websockets", ws_fan)
        except Exception as e:  # noqa: BLE001
            log(f"  websockets part failed: {e}")
    out["ws_fanout"] = asdict(ws_fan) if ws_fan else None

    # ---- summary
    log("\n" + "=" * 78)
    log(
        f"SUMMARY  cpu_count={os.cpu_count()}  mode={out['mode']}  durability={a.durability}  "
        f"total {time.time() - t_start:.0f} s  {machine_speed()}"
    )
    log("-" * 78)
    log(f"{'measure':44s} {'streamgauge':>11s} {'yardstick':>11s} {'ratio':>7s}")

    def row(
        name: str, a_: float | None, b_: float | None, fmt: str = ",.0f", ratio: bool = True
    ) -> None:
        sa = format(a_, fmt) if a_ is not None else "-"
        sb = format(b_, fmt) if b_ is not None else "-"
        rr = f"{a_ / b_:.2f}" if (ratio and a_ is not None and b_) else ""
        log(f"{name:44s} {sa:>11s} {sb:>11s} {rr:>7s}")

    if sg_final or in_final:
        cfg = sg_final or in_final
        assert cfg is not None
        row(
            f"ingest obs/s (batch {cfg.batch}, {cfg.producers} producers)",
            sg_final.obs_s if sg_final else None,
            in_final.obs_s if in_final else None,
        )
        if in_sweep:
            bi = max(in_sweep, key=lambda r: r.obs_s)
            bs = max(sg_sweep, key=lambda r: r.obs_s) if sg_sweep else None
            row("ingest obs/s, best of sweep each", bs.obs_s if bs else None, bi.obs_s)
        if sg_final and in_final:
            row(
                "ingest obs per server cpu-second",
                sg_final.rows / max(sg_final.server_cpu_s, 1e-9),
                in_final.rows / max(in_final.server_cpu_s, 1e-9),
            )
    if sg_final and out.get("sg_columnar"):
        col = out["sg_columnar"]
        row(
            f"ingest obs/s, {a.format} vs NDJSON (same run)",
            col["obs_s"],
            sg_final.obs_s,
        )
        row(
            f"ingest obs per server cpu-second, {a.format} vs NDJSON",
            col["rows"] / max(col["server_cpu_s"], 1e-9),
            sg_final.rows / max(sg_final.server_cpu_s, 1e-9),
        )
    if out.get("memory"):
        row("bytes per series (resident, above empty)", out["memory"]["rss_per_series_b"], None)
    if sg_fan or ws_fan:
        row(
            "fan-out delivered obs/s",
            sg_fan.delivered_obs_s if sg_fan else None,
            ws_fan.delivered_obs_s if ws_fan else None,
        )
        row(
            "fan-out delivered % of expected",
            sg_fan.delivered / sg_fan.expected * 100 if sg_fan and sg_fan.expected else None,
            ws_fan.delivered / ws_fan.expected * 100 if ws_fan and ws_fan.expected else None,
            ".1f",
        )
        row(
            "fan-out latency p50 ms",
            sg_fan.p50_ms if sg_fan else None,
            ws_fan.p50_ms if ws_fan else None,
            ".1f",
        )
        row(
            "fan-out latency p99 ms",
            sg_fan.p99_ms if sg_fan else None,
            ws_fan.p99_ms if ws_fan else None,
            ".1f",
        )
        row(
            "fan-out subscribers closed (behind)",
            sg_fan.closed_behind if sg_fan else None,
            ws_fan.closed_behind if ws_fan else None,
            "d",
            ratio=False,
        )
    others = [
        (n, r.other_cpu_s / r.seconds * 100)
        for n, r in (("sg ingest", sg_final), ("influx ingest", in_final))
        if r is not None
    ] + [(n, f.other_cpu_pct) for n, f in (("sg fan-out", sg_fan), ("ws fan-out", ws_fan)) if f]
    if others:
        log(
            "cpu of OTHER processes during the runs (should be ~0%): "
            + ", ".join(f"{n} {v:.0f}%" for n, v in others)
        )
    log("yardsticks: ingest = InfluxDB 1.6 (fsync per write); fan-out = plain websockets broadcast")
    log("ratio = streamgauge / yardstick (ingest, delivered: higher is better; latency: lower)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))
