"""1,000 differently filtered native streams at 10,000 obs/s: ingest-to-delivery p50/p99.

The fan-out half of ``python -m bench quality`` on its own (``--skip qc-ingest``); every option
of that workload applies (``--subscribers``, ``--fanout-rate``, ``--fanout-seconds``, ...).
"""

from __future__ import annotations

import argparse

from .quality import add_args, main_quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_args(ap)
    a = ap.parse_args()
    skipped = {s for s in a.skip.split(",") if s}
    a.skip = ",".join(sorted(skipped | {"qc-ingest"}))
    main_quality(a)


if __name__ == "__main__":
    main()
