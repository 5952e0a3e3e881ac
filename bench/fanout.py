"""1,000 differently filtered native streams at 10,000 obs/s: ingest-to-delivery p50/p99.

The fan-out half of ``python -m bench quality`` on its own (``--skip qc-ingest``); every option
of that workload applies (``--subscribers``, ``--fanout-rate``, ``--fanout-seconds``,
``--workers``, ...). ``--busy SHARE``: another process uses SHARE of one core (0..1) while the
batches go in (issue 17: the p99 "with another process busy").
"""

from __future__ import annotations

import argparse
import os

from .quality import add_args, main_quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_args(ap)
    ap.add_argument(
        "--busy",
        type=float,
        default=0.0,
        help="share of one core (0..1) another process uses during the paced ingest",
    )
    a = ap.parse_args()
    skipped = {s for s in a.skip.split(",") if s}
    a.skip = ",".join(sorted(skipped | {"qc-ingest"}))
    before = os.getloadavg()
    main_quality(a)
    after = os.getloadavg()
    print(f"load average (1/5/15 min): {before} before, {after} after", flush=True)


if __name__ == "__main__":
    main()
