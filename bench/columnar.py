"""Decode and resolve only: what the columnar ingest path saves before the log is touched.

    .venv/bin/python -m bench columnar            # about 30 seconds

In one process, with no HTTP and no storage write: an engine's registry holds the 30,000-station
mesonet (180,000 variables); batches of ``--batch`` rows of it are encoded as NDJSON, as an
Arrow IPC stream and as Parquet (before timing), then decoded and resolved to the log's columns
by the JSON path (``core.ingest.decode`` + ``resolve``) and the columnar one
(``core.columnar.read_table`` + ``resolve_table``), best of ``--repeat``. The yardstick is the
NDJSON path in the same run; the ratio is rows per second against it. The end-to-end figure
(HTTP, commit, fsync) is ``python -m bench ingest --format arrow``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    VAR_NAMES,
    ColumnarEncoder,
    NdjsonEncoder,
    device_bodies,
    machine_speed,
    make_mesonet,
)
from .harness import INGEST_T0_MS, log


async def registry_with_mesonet(data: Path, stations: int) -> Any:
    from streamgauge.auth.principals import Principal
    from streamgauge.config import Settings
    from streamgauge.core.engine import Engine
    from streamgauge.domain.model import DeviceIn, ProjectIn

    engine = Engine(Settings(data=data, durability="normal"), "bench-token-0123456789abcdef")
    await engine.store.open(lambda batch: None)
    await engine.metadata.create_projects(Principal(None), [ProjectIn(id="bench")])
    project = engine.registry.projects["bench"]
    m = make_mesonet(stations)
    bodies = device_bodies(m, with_units=True)
    for body in bodies:
        body.pop("site")
    for i in range(0, len(bodies), 2000):
        devices = [DeviceIn.model_validate(b) for b in bodies[i : i + 2000]]
        await engine.metadata.create_devices(project, devices)
    return engine, project, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stations", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    log(
        f"streamgauge bench columnar  cpu_count={os.cpu_count()}  "
        f"python={sys.version.split()[0]}  load average {os.getloadavg()[0]:.2f}  "
        f"{machine_speed()}"
    )
    from streamgauge.core import columnar, ingest

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="sg-bench-columnar-") as tmp:
            engine, project, m = await registry_with_mesonet(Path(tmp), a.stations)
            try:
                S = m.nseries
                rng = np.random.default_rng(1)
                encoders: dict[str, NdjsonEncoder | ColumnarEncoder] = {
                    "ndjson": NdjsonEncoder(m),
                    "arrow": ColumnarEncoder(m, "arrow"),
                    "parquet": ColumnarEncoder(m, "parquet"),
                }
                cases = []
                for k in range(a.batches):
                    series = rng.integers(0, S, a.batch)
                    times = INGEST_T0_MS - 10**9 + (k * a.batch + np.arange(a.batch)) * 7
                    values = np.round(rng.normal(10, 5, a.batch), 1)
                    cases.append({f: e.rows(series, times, values) for f, e in encoders.items()})
                reg = engine.registry
                now = int(time.time() * 1000)
                limit = engine.settings.max_body_bytes

                def json_path(body: bytes) -> Any:
                    rows = ingest.decode(body, ndjson=True)
                    return ingest.resolve(rows, reg, project.pk, now_ms=now, max_future_ms=0)

                def columnar_path(fmt: str) -> Any:
                    def go(body: bytes) -> Any:
                        table = columnar.read_table(body, fmt, max_bytes=limit)
                        return columnar.resolve_table(
                            table, reg, project.pk, now_ms=now, max_future_ms=0
                        )

                    return go

                paths = {
                    "ndjson": json_path,
                    "arrow": columnar_path("arrow"),
                    "parquet": columnar_path("parquet"),
                }
                t = time.perf_counter()
                paths["arrow"](cases[0]["arrow"])
                log(
                    f"  first columnar batch after a metadata change (builds the project's name "
                    f"tables, {S:,} series): {(time.perf_counter() - t) * 1000:.0f} ms"
                )
                same = [paths[f](cases[0][f]) for f in paths]
                for other in same[1:]:  # the paths agree on what they hand to the log
                    assert np.array_equal(other.variable_pks, same[0].variable_pks)
                    assert np.array_equal(other.times, same[0].times)
                    assert other.values == same[0].values
                rate: dict[str, float] = {}
                for fmt, fn in paths.items():
                    best = float("inf")
                    for _ in range(a.repeat):
                        t = time.perf_counter()
                        for case in cases:
                            fn(case[fmt])
                        best = min(best, time.perf_counter() - t)
                    rows = a.batch * a.batches
                    rate[fmt] = rows / best
                    size = sum(len(c[fmt]) for c in cases) / len(cases)
                    log(
                        f"  {fmt:8s} {rows:,} rows in {best * 1000:7.1f} ms = "
                        f"{rate[fmt]:12,.0f} rows/s  ({best / rows * 1e9:6.0f} ns a row; "
                        f"body {size / a.batch:5.1f} B a row)"
                    )
                log("\n" + "=" * 78)
                log(f"SUMMARY decode + resolve, batches of {a.batch:,} rows, {S:,} series")
                for fmt in ("arrow", "parquet"):
                    log(
                        f"  {fmt:8s} vs NDJSON: {rate[fmt] / rate['ndjson']:5.2f}x the rows/s "
                        f"({rate[fmt]:,.0f} vs {rate['ndjson']:,.0f})"
                    )
                log(f"variables: {', '.join(VAR_NAMES)}; the machine may be busy (load above)")
            finally:
                await engine.store.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
