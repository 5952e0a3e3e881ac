"""streamgauge benchmark, cluster mode (issue 13): ingest into one node on PostgreSQL against the
embedded mode, then cross-node ingest-to-delivery latency and the fan-out capacity of one node
and of two nodes on PostgreSQL and NATS JetStream.

    .venv/bin/python -m bench cluster            # about 6 minutes
    .venv/bin/python -m bench cluster --quick    # about 2 minutes
    .venv/bin/python -m bench cluster --quick --only ingest   # PostgreSQL ingest alone

1. Ingest. For each mode a server (subprocess, loopback) gets a project and a mesonet (6
   variables per station), then NDJSON batches are POSTed by concurrent producers: one warm-up
   run, then ``--runs`` timed runs; the median obs/s and the spread are printed. The PostgreSQL
   mode stores in a fresh database of the machine's server (``--pg``), dropped after. The
   embedded mode runs with the same durability as PostgreSQL's default (every commit flushed:
   ``full``).
2. A cluster: a fresh database and a fresh cluster name (``--nats``); node A gets the project
   and the mesonet, then one value of every series (so the timed runs create no series).
   - Fan-out capacity of one node: ``--steps`` subscribers (filtered NDJSON streams, the mix of
     ``python -m bench fanout``) on node A, 10,000 obs/s (``--rate``) POSTed to A for
     ``--seconds``; the count grows until a step is not served: fewer lines than the filters
     match, a subscriber closed for falling behind, p99 ingest-to-delivery at 100 ms or more,
     or the ingest falling off its pace.
   - Node B starts (it loads the metadata from PostgreSQL and follows the bus).
   - Cross-node latency: ``--latency-subscribers`` streams on node B, the same paced ingest
     into node A; ingest-to-delivery p50/p99 (POST written on A -> line read from B).
   - Fan-out capacity of two nodes: the same steps, subscribers split over A and B, ingest
     into A.
   Everything the cluster made is removed after: the nodes, the database, the JetStream
   stream and key-value bucket.

The core count and the load average are printed, and with every fan-out step the CPU of each
node, of the PostgreSQL backends of the database, of the NATS server, of the subscriber
processes and of everything else: on a shared machine the figures are lower bounds. Every
process (nodes, PostgreSQL, NATS, subscribers, the bench) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from .cluster_fanout import (
    Cluster,
    create_database,
    database_url,
    drop_database,
    fanout,
    line,
    passed,
)
from .common import machine_speed, make_mesonet
from .harness import (
    FANOUT_T1_MS,
    HOST,
    TOKEN,
    FanoutCfg,
    FanoutResult,
    Ingestor,
    IngestResult,
    StreamgaugeServer,
    log,
    print_fanout,
    setup_mesonet,
)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS = "nats://127.0.0.1:4222"
PARTS = ("embedded", "postgresql", "capacity", "latency")
ALIASES = {"ingest": ("postgresql",), "cluster": ("capacity", "latency")}  # for --only


def _mode(
    name: str, env: dict[str, str], m: Any, rows: int, batch: int, producers: int, runs: int
) -> list[IngestResult]:
    log(f"\n[{name}]")
    with StreamgaugeServer("full", env) as srv:
        assert srv.proc is not None
        st = setup_mesonet(srv.port, m)
        log(f"  setup: {len(m.ids):,} stations in {st['sites_s'] + st['devices_s']:.1f} s")
        ing = Ingestor(m, "streamgauge", HOST, srv.port, srv.proc.pid, TOKEN)
        warm = ing.run(rows // 2, batch, producers)
        log("  warm-up" + warm.line()[1:])
        out = []
        for _ in range(runs):
            r = ing.run(rows, batch, producers)
            log(r.line())
            out.append(r)
        return out


def _summary(name: str, results: list[IngestResult]) -> float:
    rates = [r.obs_s for r in results]
    med = statistics.median(rates)
    log(
        f"  {name:10s} median {med:10,.0f} obs/s  (runs: "
        + ", ".join(f"{x:,.0f}" for x in rates)
        + f"; spread {min(rates):,.0f}..{max(rates):,.0f})"
    )
    return med


class _Times:
    """Each fan-out run's batches get times of their own (1 h ago + k s, runs one after the
    other), so no run's observations are duplicates of an earlier run's."""

    def __init__(self) -> None:
        self.next = FANOUT_T1_MS

    def take(self, cfg: FanoutCfg) -> int:
        t1 = self.next
        self.next += (cfg.nbatches + 5) * 1000
        return t1


def _capacity(
    label: str,
    m: Any,
    a: argparse.Namespace,
    steps: list[int],
    ingest: StreamgaugeServer,
    subscribe: list[StreamgaugeServer],
    cl: Cluster,
    times: _Times,
) -> tuple[int, list[FanoutResult]]:
    """The largest step of ``steps`` served; every step's result."""
    log(f"\n[fan-out capacity, {label}: {a.rate:,.0f} obs/s for {a.seconds:.0f} s a step]")
    best, out = 0, []
    for n in steps:
        cfg = FanoutCfg(seconds=a.seconds, rate=a.rate, subscribers=n, procs=2)
        r = fanout(m, cfg, ingest, subscribe, times.take(cfg), cl)
        log(line(r))
        for e in r.errors[:3]:
            log(f"    error: {e[:300]}")
        if r.short_subscribers:
            log(f"    short subscribers (delivered/expected): {r.short_subscribers[:4]}")
        out.append(r)
        if not passed(r):
            break
        best = n
    return best, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rows, shorter and fewer steps")
    ap.add_argument("--stations", type=int, default=5_000)
    ap.add_argument("--rows", type=int, default=None, help="observations per timed ingest run")
    ap.add_argument("--batch", type=int, default=5_000, help="observations per request")
    ap.add_argument("--producers", type=int, default=2, help="concurrent requests")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pg", default=os.environ.get("STREAMGAUGE_BENCH_PG", DEFAULT_PG))
    ap.add_argument("--nats", default=os.environ.get("STREAMGAUGE_BENCH_NATS", DEFAULT_NATS))
    ap.add_argument("--rate", type=float, default=10_000.0, help="fan-out ingest, obs/s")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per fan-out step")
    ap.add_argument(
        "--steps", default=None, help="subscriber counts tried, comma list (default 100..3000)"
    )
    ap.add_argument("--latency-subscribers", type=int, default=100)
    ap.add_argument("--latency-seconds", type=float, default=None)
    ap.add_argument("--skip", default="", help="comma list of: " + ",".join(PARTS))
    ap.add_argument(
        "--only",
        default="",
        help="comma list of the parts to run (the others are skipped): "
        + ",".join(PARTS + tuple(ALIASES))
        + " (ingest: postgresql; cluster: capacity,latency)",
    )
    a = ap.parse_args(argv)
    rows = a.rows or (100_000 if a.quick else 300_000)
    a.seconds = a.seconds or (5.0 if a.quick else 10.0)
    lat_seconds = a.latency_seconds or (8.0 if a.quick else 20.0)
    steps = [
        int(x)
        for x in (
            a.steps or ("100,250,500,1000" if a.quick else "100,250,500,1000,1500,2000,3000")
        ).split(",")
    ]
    skip = set(filter(None, a.skip.split(",")))
    if skip - set(PARTS):
        ap.error(f"--skip takes {','.join(PARTS)}")
    if a.only:
        only = set(filter(None, a.only.split(",")))
        if only - set(PARTS) - set(ALIASES):
            ap.error(f"--only takes {','.join(PARTS + tuple(ALIASES))}")
        keep = {p for name in only for p in ALIASES.get(name, (name,))}
        skip |= set(PARTS) - keep
    started = time.time()
    log(
        f"streamgauge bench cluster  cpu_count={os.cpu_count()}  load average "
        f"{os.getloadavg()[0]:.2f}  python={sys.version.split()[0]}  rows/run={rows:,}  "
        f"batch={a.batch}  producers={a.producers}  {machine_speed()}"
    )
    m = make_mesonet(a.stations)
    medians: dict[str, float] = {}
    if "embedded" not in skip:
        medians["embedded"] = _summary(
            "embedded", _mode("embedded (SQLite)", {}, m, rows, a.batch, a.producers, a.runs)
        )
    if "postgresql" not in skip:
        db = create_database(a.pg)
        try:
            results = _mode(
                "one node on PostgreSQL",
                {"STREAMGAUGE_STORE": database_url(a.pg, db)},
                m,
                rows,
                a.batch,
                a.producers,
                a.runs,
            )
            medians["postgresql"] = _summary("postgresql", results)
        finally:
            drop_database(a.pg, db)
    latency: FanoutResult | None = None
    capacity: dict[str, tuple[int, list[FanoutResult]]] = {}
    if not {"capacity", "latency"} <= skip:
        log(f"\n[cluster: a fresh database, NATS at {a.nats}]")
        with Cluster(a.pg, a.nats) as cl:
            node_a = cl.nodes[0]
            assert node_a.proc is not None
            st = setup_mesonet(node_a.port, m)
            log(f"  node A: {len(m.ids):,} stations in {st['sites_s'] + st['devices_s']:.1f} s")
            ing = Ingestor(m, "streamgauge", HOST, node_a.port, node_a.proc.pid, TOKEN)
            log("  node A, one value of every series" + ing.run(m.nseries, 5000, 2).line()[1:])
            times = _Times()
            if "capacity" not in skip:
                capacity["one node"] = _capacity(
                    "one node", m, a, steps, node_a, [node_a], cl, times
                )
            t = time.perf_counter()
            node_b = cl.start_node()
            log(f"\n  node B started in {time.perf_counter() - t:.1f} s")
            time.sleep(2.0)
            if "latency" not in skip:
                log(
                    f"\n[cross-node latency: {a.latency_subscribers} subscribers on node B, "
                    f"{a.rate:,.0f} obs/s into node A for {lat_seconds:.0f} s]"
                )
                cfg = FanoutCfg(
                    seconds=lat_seconds, rate=a.rate, subscribers=a.latency_subscribers, procs=2
                )
                latency = fanout(m, cfg, node_a, [node_b], times.take(cfg), cl)
                print_fanout("A -> B", latency)
                log(line(latency))
            if "capacity" not in skip:
                capacity["two nodes"] = _capacity(
                    "two nodes (subscribers split over A and B, ingest into A)",
                    m,
                    a,
                    steps,
                    node_a,
                    [node_a, node_b],
                    cl,
                    times,
                )
    log(
        f"\nsummary (cpu_count={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
        f"{time.time() - started:.0f} s):"
    )
    for name, med in medians.items():
        log(f"  ingest, {name:10s} {med:10,.0f} obs/s")
    if len(medians) == 2:
        log(f"  ingest, postgresql / embedded = {medians['postgresql'] / medians['embedded']:.2f}")
    if latency is not None:
        log(
            f"  cross-node ingest-to-delivery at {latency.ingest_obs_s:,.0f} obs/s, "
            f"{latency.connected} subscribers on B: p50 {latency.p50_ms:.1f} ms, "
            f"p99 {latency.p99_ms:.1f} ms (target: under 100 ms)"
            + ("" if passed(latency) else "  NOT served (see above)")
        )
    for name, (best, runs) in capacity.items():
        top = " (the largest step tried)" if runs and passed(runs[-1]) else ""
        log(
            f"  fan-out capacity, {name}: {best:,} subscribers served at {a.rate:,.0f} obs/s "
            f"with p99 under 100 ms{top}"
        )


if __name__ == "__main__":
    main()
