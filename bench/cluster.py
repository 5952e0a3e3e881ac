"""streamgauge benchmark, cluster part 1: ingest into one node on PostgreSQL, against the
embedded (SQLite) mode in the same run.

    .venv/bin/python -m bench cluster            # about 3 minutes
    .venv/bin/python -m bench cluster --quick    # about 1 minute

For each mode a server (subprocess, loopback) gets a project and a mesonet (6 variables per
station), then NDJSON batches are POSTed by concurrent producers: one warm-up run, then
``--runs`` timed runs; the median obs/s and the spread are printed. The PostgreSQL mode stores
in a fresh database of the machine's server (``--pg``), dropped after. The embedded mode runs
with the same durability as PostgreSQL's default (every commit flushed: ``full``). The core
count and the load average are printed: on a shared machine the figures are lower bounds.
Still to come (the NATS half of issue 13): cross-node ingest-to-delivery latency and the
fan-out capacity of two nodes against one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import uuid
from typing import Any

from .common import make_mesonet
from .harness import HOST, TOKEN, Ingestor, IngestResult, StreamgaugeServer, log, setup_mesonet

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _database(admin_url: str) -> str:
    import psycopg

    name = f"sg_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return name


def _drop(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rows per run")
    ap.add_argument("--stations", type=int, default=5_000)
    ap.add_argument("--rows", type=int, default=None, help="observations per timed run")
    ap.add_argument("--batch", type=int, default=5_000, help="observations per request")
    ap.add_argument("--producers", type=int, default=2, help="concurrent requests")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pg", default=os.environ.get("STREAMGAUGE_BENCH_PG", DEFAULT_PG))
    ap.add_argument("--skip", default="", help="comma list of: embedded,postgresql")
    a = ap.parse_args(argv)
    rows = a.rows or (100_000 if a.quick else 300_000)
    skip = set(filter(None, a.skip.split(",")))
    log(
        f"streamgauge bench cluster  cpu_count={os.cpu_count()}  load average "
        f"{os.getloadavg()[0]:.2f}  python={sys.version.split()[0]}  rows/run={rows:,}  "
        f"batch={a.batch}  producers={a.producers}"
    )
    m = make_mesonet(a.stations)
    medians: dict[str, float] = {}
    if "embedded" not in skip:
        medians["embedded"] = _summary(
            "embedded", _mode("embedded (SQLite)", {}, m, rows, a.batch, a.producers, a.runs)
        )
    if "postgresql" not in skip:
        db = _database(a.pg)
        try:
            url = a.pg.rsplit("/", 1)[0] + "/" + db
            results = _mode(
                "one node on PostgreSQL",
                {"STREAMGAUGE_STORE": url},
                m,
                rows,
                a.batch,
                a.producers,
                a.runs,
            )
            medians["postgresql"] = _summary("postgresql", results)
        finally:
            _drop(a.pg, db)
    log(f"\nsummary (cpu_count={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}):")
    for name, med in medians.items():
        log(f"  {name:10s} {med:10,.0f} obs/s")
    if len(medians) == 2:
        log(f"  postgresql / embedded = {medians['postgresql'] / medians['embedded']:.2f}")


if __name__ == "__main__":
    main()
