"""The cluster half of ``python -m bench cluster``: two nodes on one PostgreSQL database and one
NATS JetStream bus, live fan-out across them.

``Cluster`` starts the nodes (``streamgauge serve`` with ``STREAMGAUGE_STORE``,
``STREAMGAUGE_BUS`` and ``STREAMGAUGE_CLUSTER``, a fresh database and a fresh cluster name) and
removes everything after: the nodes, the database, the JetStream stream and key-value bucket.
``fanout`` is ``harness.fanout_streamgauge`` with the ingest on one node and the subscribers on
one or more nodes: observations are POSTed to ``ingest`` at a paced rate, each batch with a time
of its own (``t1_ms`` + k s), and a subscriber's latency is the wall time it read a line minus
the wall time just before that batch's POST (``harness.analyse``): commit on the ingesting node,
the bus, the receiving node's fan-out, the socket. The CPU of each node, of the PostgreSQL
backends serving the database, of the NATS server and of everything else is printed.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    Mesonet,
    NdjsonEncoder,
    build_request,
    fanout_series,
    make_filters,
    proc_cpu_seconds,
    system_busy_seconds,
    values_for,
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
    fanout_targets,
    log,
    paced_ingest,
    run_async,
    wait_ready,
)

P99_TARGET_MS = 100.0


def create_database(admin_url: str) -> str:
    import psycopg

    name = f"sg_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return name


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


def backend_pids(admin_url: str, database: str) -> list[int]:
    """The PostgreSQL server processes connected to ``database`` (the nodes' connections)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def nats_pids() -> list[int]:
    """Every nats-server process of the machine (the shared one; private test servers too)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "nats-server":
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        s = proc_cpu_seconds(p)
        if s == s:  # a process that ended counts nothing
            total += s
    return total


class Cluster:
    """Nodes of one fresh cluster: a fresh database and a fresh cluster name, removed after."""

    def __init__(self, admin_url: str, nats_url: str, nodes: int = 2):
        self.admin_url, self.nats_url, self.n = admin_url, nats_url, nodes
        self.cluster = f"sgbench_{uuid.uuid4().hex[:10]}"
        self.database = ""
        self.nodes: list[StreamgaugeServer] = []

    def env(self) -> dict[str, str]:
        return {
            "STREAMGAUGE_STORE": database_url(self.admin_url, self.database),
            "STREAMGAUGE_BUS": self.nats_url,
            "STREAMGAUGE_CLUSTER": self.cluster,
        }

    def __enter__(self) -> Cluster:
        self.database = create_database(self.admin_url)
        try:
            self.start_node()  # the first node migrates the schema
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_node(self) -> StreamgaugeServer:
        srv = StreamgaugeServer("full", self.env())
        self.nodes.append(srv)
        srv.__enter__()
        return srv

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.nodes if s.proc is not None]

    def __exit__(self, *exc: object) -> None:
        for srv in self.nodes:
            try:
                srv.__exit__(None, None, None)
            except Exception as e:  # noqa: BLE001
                log(f"  stopping a node: {e!r}")
        if self.database:
            drop_database(self.admin_url, self.database)
        from streamgauge.bus.jetstream import delete_cluster_stream

        try:
            asyncio.run(delete_cluster_stream(self.nats_url, self.cluster))
        except Exception as e:  # noqa: BLE001
            log(f"  removing the cluster's stream and bucket from NATS: {e!r}")


def _start_group(
    ctx: Any,
    port: int,
    targets: list[str],
    indices: list[int],
    procs: int,
    queues: tuple[Any, Any, Any],
) -> list[Any]:
    """Subscriber processes for ``targets`` (filter numbers ``indices``) on node ``port``."""
    from .subscribers import subscriber_process

    ready_q, result_q, stop = queues
    ps = []
    for i in range(procs):
        p = ctx.Process(
            target=subscriber_process,
            args=(
                "http",
                HOST,
                port,
                targets[i::procs],
                indices[i::procs],
                TOKEN,
                ready_q,
                stop,
                result_q,
            ),
            daemon=True,
        )
        p.start()
        ps.append(p)
    return ps


def fanout(
    m: Mesonet,
    cfg: FanoutCfg,
    ingest: StreamgaugeServer,
    subscribe: list[StreamgaugeServer],
    t1_ms: int,
    cluster: Cluster,
) -> FanoutResult:
    """``cfg.subscribers`` filtered streams split over the nodes ``subscribe`` (filter i on node
    i % len), ``cfg.rate`` obs/s POSTed to ``ingest``; see the module's docstring."""
    filters = make_filters(m, cfg.subscribers)
    res = FanoutResult(f"{len(subscribe)} node(s)", asdict(cfg))
    enc = NdjsonEncoder(m)
    path = f"/api/v1/projects/{PROJECT}/observations"
    hdr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    reqs = []
    for k in range(cfg.nbatches):
        s = fanout_series(m, k, cfg.rows)
        body = enc.rows(
            s, np.full(s.shape, t1_ms + k * 1000), values_for(m, s, np.full(s.shape, 20_000 + k))
        )
        reqs.append(build_request("POST", HOST, ingest.port, path, hdr, body))
    targets = fanout_targets(filters, "http")
    ctx = mp.get_context("spawn")
    ready_q, result_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    groups = len(subscribe)
    per_group = max(1, cfg.procs // groups)
    ps: list[Any] = []
    try:
        for g, srv in enumerate(subscribe):
            idx = list(range(g, len(targets), groups))
            ps += _start_group(
                ctx, srv.port, [targets[i] for i in idx], idx, per_group, (ready_q, result_q, stop)
            )
        res.connected, errs = wait_ready(ready_q, len(ps), timeout=120)
        res.errors.extend(errs[:5])
        time.sleep(0.5)
        node_pids = cluster.pids()
        pg_pids = backend_pids(cluster.admin_url, cluster.database)
        nats = nats_pids()
        node0 = [proc_cpu_seconds(p) for p in node_pids]
        pg0, nats0 = cpu_of(pg_pids), cpu_of(nats)
        b0, c0, t0 = system_busy_seconds(), time.process_time(), time.time()
        send_wall, ack, elapsed, lag, perr = run_async(
            paced_ingest(ingest.port, reqs, cfg.batches_per_s)
        )
        res.ack_p50_ms, res.ack_p99_ms, res.ack_max_ms = (
            float(x) * 1000 for x in np.percentile(ack, [50, 99, 100])
        )
        time.sleep(cfg.grace)
        wall = time.time() - t0
        node_s = [proc_cpu_seconds(p) - c for p, c in zip(node_pids, node0, strict=True)]
        pg_s, nats_s = cpu_of(pg_pids) - pg0, cpu_of(nats) - nats0
        busy_s, client_s = system_busy_seconds() - b0, time.process_time() - c0
        res.errors.extend(perr[:5])
        res.sent_obs = cfg.nbatches * cfg.rows
        res.ingest_obs_s = res.sent_obs / elapsed
        res.send_lag_max_s = lag
        subs, meta = collect_subscribers(ps, ready_q, result_q, stop, len(filters), len(ps))
        res.server_cpu_pct = sum(node_s) / wall * 100
        res.subscriber_cpu_pct = meta["cpu"] / wall * 100
        known = sum(node_s) + pg_s + nats_s + client_s + meta["cpu"]
        res.other_cpu_pct = max(0.0, busy_s - known) / wall * 100
        res.cfg["node_cpu_pct"] = [round(x / wall * 100) for x in node_s]
        res.cfg["postgres_cpu_pct"] = round(pg_s / wall * 100)
        res.cfg["nats_cpu_pct"] = round(nats_s / wall * 100)
    finally:
        stop.set()
        for p in ps:
            p.join(5)
            if p.is_alive():
                p.terminate()
    send_ms = t1_ms + np.arange(cfg.nbatches) * 1000
    return analyse(res.name, cfg, m, filters, subs, meta, send_ms, send_wall, t1_ms, res)


def passed(r: FanoutResult) -> bool:
    """Served: every expected line delivered, none closed for falling behind, p99 under
    ``P99_TARGET_MS``, ingest kept its pace, no error."""
    return (
        r.connected == r.cfg["subscribers"]
        and r.expected > 0
        and r.delivered == r.expected
        and r.closed_behind == 0
        and r.p99_ms < P99_TARGET_MS
        and r.ingest_obs_s >= 0.97 * r.cfg["rate"]
        and not r.errors
    )


def line(r: FanoutResult) -> str:
    pct = r.delivered / r.expected * 100 if r.expected else float("nan")
    return (
        f"  {r.name}: {r.cfg['subscribers']:5d} subscribers ({r.connected} connected)  "
        f"ingest {r.ingest_obs_s:7,.0f} obs/s  delivered {pct:5.1f}% = "
        f"{r.delivered_obs_s:9,.0f} lines/s  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:7.1f} ms  "
        f"max {r.max_ms:7.1f} ms  ack p99 {r.ack_p99_ms:5.0f} ms  closed {r.closed_behind}  "
        f"cpu: nodes {r.cfg.get('node_cpu_pct')}% postgres {r.cfg.get('postgres_cpu_pct')}% "
        f"nats {r.cfg.get('nats_cpu_pct')}% subscribers {r.subscriber_cpu_pct:.0f}% "
        f"other {r.other_cpu_pct:.0f}%  load {os.getloadavg()[0]:.1f}  "
        + ("ok" if passed(r) else "NOT served")
    )
