"""``python -m bench WORKLOAD [options]``: one entry point for every benchmark.

    ingest     HTTP NDJSON ingest against InfluxDB 1.6, then live fan-out to 100 filtered
               subscribers against a plain websockets broadcast (about 5 minutes; --quick)
    quality    ingest with QC on and off, then 1,000 differently filtered streams at 10,000 obs/s
    feed       1,000 push-feed sessions against a plain websockets broadcast, memory per session
    feed-cpu   the server's CPU per fan-out round of those sessions, in one process, no sockets
    cluster    ingest into one node on PostgreSQL against the embedded mode (issue 13, part 1)

Each workload takes its own ``--help``.
"""

from __future__ import annotations

import importlib
import sys

WORKLOADS = {
    "ingest": "bench.ingest",
    "quality": "bench.quality",
    "feed": "bench.feed",
    "feed-cpu": "bench.feed_cpu",
    "cluster": "bench.cluster",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in WORKLOADS:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    sys.argv = [f"python -m bench {name}", *rest]
    importlib.import_module(WORKLOADS[name]).main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
