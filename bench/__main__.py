"""``python -m bench WORKLOAD [options]``: one entry point for every benchmark.

    ingest     HTTP NDJSON ingest against InfluxDB 1.6, then live fan-out to 100 filtered
               subscribers against a plain websockets broadcast (about 5 minutes; --quick)
    fanout     1,000 differently filtered native streams at 10,000 obs/s (p50/p99, memory)
    quality    ingest with QC on and off, then the same fan-out as ``fanout``
    feed       1,000 push-feed sessions against a plain websockets broadcast, memory per session
    feed-cpu   the server's CPU per fan-out round of those sessions, in one process, no sockets
    timeseries backfill rate with live p50/p99, a year of minutes aggregated to days against
               reading its rows, latest over 30,000 stations, a retention pass (--quick)
    ports      MQTT messages/s from Mosquitto (1 obs and 500-row messages) and line-protocol
               points/s, against native NDJSON of the same observations
    client     the Python client: import of a 1,000,000-row CSV, Client/AsyncClient.stream()
               against the raw NDJSON stream read with httpx
    catchup    a small project's stream catch-up beside a busy project, against it alone
    columnar   decode + resolve of NDJSON, Arrow IPC and Parquet batches, in one process
    cluster    ingest into one node on PostgreSQL against the embedded mode, cross-node
               ingest-to-delivery latency and the fan-out capacity of one node and of two
               (PostgreSQL + NATS JetStream; issue 13; about 6 minutes, --quick)
    restart    restart time until /healthz and a history read, at two log lengths, and the
               resident memory per series of 30,000 stations x 6 variables

Each workload takes its own ``--help``.
"""

from __future__ import annotations

import compileall
import importlib
import importlib.util
import sys

WORKLOADS = {
    "ingest": "bench.ingest",
    "fanout": "bench.fanout",
    "quality": "bench.quality",
    "feed": "bench.feed",
    "feed-cpu": "bench.feed_cpu",
    "timeseries": "bench.timeseries",
    "ports": "bench.ports",
    "client": "bench.client",
    "catchup": "bench.catchup",
    "columnar": "bench.columnar",
    "cluster": "bench.cluster",
    "restart": "bench.restart",
}


def compile_streamgauge() -> None:
    """Compile streamgauge's modules, as pip does when it installs a package. An editable
    install's modules are compiled at their first import and the bytecode cached, unless
    PYTHONDONTWRITEBYTECODE is set (it is on this project's machines): then every server a
    bench starts compiles all of them again, about 0.4 s of each start (``bench restart``)."""
    spec = importlib.util.find_spec("streamgauge")
    if spec is not None:
        for folder in spec.submodule_search_locations or []:
            compileall.compile_dir(folder, quiet=2)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in WORKLOADS:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    sys.argv = [f"python -m bench {name}", *rest]
    compile_streamgauge()
    importlib.import_module(WORKLOADS[name]).main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
