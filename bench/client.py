"""``python -m bench client``: the Python client against its yardsticks, in one run.

1. ``streamgauge import`` of a CSV of ``--rows`` observations (1,000,000 by default) into a
   fresh server, as a user runs it (a subprocess; wall time from start to exit, process start
   included), ``--import-runs`` times (3), each into a server of its own: the median and the
   spread. Target: at least 100,000 rows/s. With ``--compare-json``, the same runs with
   ``--no-columnar`` (JSON batches, as before Arrow IPC), interleaved. The first run then
   imports the same file again (every row a duplicate). ``--also NAME=ARGS`` adds another
   variant (other ``import`` options), interleaved too.
2. Reading ``--stream-rows`` observations of the resumable live stream (``since=0``: the
   catch-up from the store, as fast as the server sends) with ``Client.stream()``,
   ``AsyncClient.stream()`` and, as the yardstick, the raw NDJSON stream read with httpx
   (``iter_lines`` + ``orjson.loads`` per line: the least a consumer does). Each is run
   ``--rounds`` times, interleaved; the medians are compared. Target: at least 0.8 of raw.
   ``--import-only`` leaves this part out.

Prints the machine's core count, load average and speed; the machine is shared, so figures
vary by run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from bench.common import machine_speed_ms
from bench.harness import HOST, TOKEN, StreamgaugeServer, log
from streamgauge.client import AsyncClient, Client

DEVICES = 100
START_MS = 1_700_000_000_000


def write_csv(path: Path, rows: int) -> None:
    """``rows`` observations of ``DEVICES`` devices x (air_temp, wind_speed), a second apart
    per series, written in chunks."""
    with path.open("w") as f:
        f.write("device,variable,time,value\n")
        chunk: list[str] = []
        for i in range(rows):
            series = i % (DEVICES * 2)
            var = "air_temp" if series % 2 == 0 else "wind_speed"
            t = START_MS + (i // (DEVICES * 2)) * 1000
            chunk.append(f"d{series // 2},{var},{t},{(i % 300) / 10}\n")
            if len(chunk) >= 100_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def setup(url: str) -> None:
    with Client(url, token=TOKEN) as c:
        c.create_project(id="bench")
        c.create_device(
            "bench",
            [
                {"id": f"d{i}", "variables": [{"name": "air_temp"}, {"name": "wind_speed"}]}
                for i in range(DEVICES)
            ],
        )


def run_import(url: str, path: Path, rows: int, *extra: str) -> tuple[float, str]:
    env = dict(os.environ, STREAMGAUGE_URL=url, STREAMGAUGE_TOKEN=TOKEN)
    exe = [sys.executable, "-m", "streamgauge", "import", "bench", str(path), *extra]
    started = time.perf_counter()
    done = subprocess.run(exe, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"import failed: {done.stderr[-2000:]}")
    return rows / took, done.stdout.strip()


def raw_httpx(url: str, n: int) -> float:
    started = time.perf_counter()
    seen = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        with http.stream("GET", "/api/v1/projects/bench/stream", params={"since": 0}) as r:
            for line in r.iter_lines():
                obj = orjson.loads(line)
                if "cursor" in obj:
                    seen += 1
                    if seen >= n:
                        break
    return n / (time.perf_counter() - started)


def sync_client(url: str, n: int) -> float:
    started = time.perf_counter()
    with Client(url, token=TOKEN) as c:
        it = c.stream("bench", since=0)  # a generator: close() ends the stream
        for seen, _ in enumerate(it, 1):
            if seen >= n:
                break
        it.close()
    return n / (time.perf_counter() - started)


def async_client(url: str, n: int) -> float:
    async def run() -> float:
        started = time.perf_counter()
        async with AsyncClient(url, token=TOKEN) as c:
            seen = 0
            stream = c.stream("bench", since=0)
            async for _ in stream:
                seen += 1
                if seen >= n:
                    break
            await stream.aclose()
        return n / (time.perf_counter() - started)

    return asyncio.run(run())


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min)"


def spread(runs: list[float]) -> str:
    mid, lo, hi = statistics.median(runs), min(runs), max(runs)
    return f"median of {len(runs)} {mid:,.0f}, spread {lo:,.0f}-{hi:,.0f}"


def stream_runs(url: str, n: int, rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"raw httpx": [], "Client": [], "AsyncClient": []}
    for _ in range(rounds):
        results["raw httpx"].append(raw_httpx(url, n))
        results["Client"].append(sync_client(url, n))
        results["AsyncClient"].append(async_client(url, n))
    medians = {k: statistics.median(v) for k, v in results.items()}
    raw = medians["raw httpx"]
    for name, runs in results.items():
        log(f"stream {name:12s} {spread(runs)} obs/s = {medians[name] / raw:.2f} of raw")
    return medians


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench client", description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the imported CSV")
    ap.add_argument("--import-runs", type=int, default=3, help="imports, each into a new server")
    ap.add_argument("--batch-size", type=int, default=None, help="import --batch-size")
    ap.add_argument(
        "--compare-json", action="store_true", help="also import with --no-columnar (JSON)"
    )
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="another import variant, interleaved (e.g. 'one=--in-flight 1')",
    )
    ap.add_argument("--import-only", action="store_true", help="leave the stream part out")
    ap.add_argument("--stream-rows", type=int, default=300_000, help="rows read per stream run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each stream reader")
    ap.add_argument("--durability", default="normal", choices=["normal", "full"])
    a = ap.parse_args()
    log(
        f"streamgauge client bench: cpu_count={os.cpu_count()} {load()} "
        f"python={sys.version.split()[0]} rows={a.rows:,} stream_rows={a.stream_rows:,} "
        f"durability={a.durability} machine speed {machine_speed_ms():.1f} ms (lower is faster)"
    )
    extra = [] if a.batch_size is None else ["--batch-size", str(a.batch_size)]
    kinds = {"arrow": extra, **({"json": [*extra, "--no-columnar"]} if a.compare_json else {})}
    for variant in a.also:
        name, _, args = variant.partition("=")
        kinds[name] = [*extra, *args.split()]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sg-bench-client-") as tmp:
        path = Path(tmp) / "obs.csv"
        write_csv(path, a.rows)
        log(f"CSV: {path.stat().st_size / 2**20:.1f} MiB")
        for run in range(a.import_runs):
            for kind, args in kinds.items():
                with StreamgaugeServer(a.durability) as srv:
                    url = f"http://{HOST}:{srv.port}"
                    setup(url)
                    rate, summary = run_import(url, path, a.rows, *args)
                    rates[kind].append(rate)
                    log(f"import {kind} run {run + 1}: {rate:,.0f} rows/s, {load()} | {summary}")
                    if run or kind != "arrow":
                        continue
                    again, summary = run_import(url, path, a.rows, *args)
                    log(f"import {kind} again (all duplicates): {again:,.0f} rows/s | {summary}")
                    if not a.import_only:
                        medians = stream_runs(url, min(a.stream_rows, a.rows), a.rounds)
    for kind, runs in rates.items():
        log(f"import {kind}: {spread(runs)} rows/s (wall time, process start included)")
    ratios = ""
    if medians:
        raw = medians["raw httpx"]
        ratios = (
            f" Client/raw={medians['Client'] / raw:.2f} AsyncClient/raw="
            f"{medians['AsyncClient'] / raw:.2f} (target 0.8)"
        )
    log(
        f"SUMMARY cpu_count={os.cpu_count()} {load()} import="
        f"{statistics.median(rates['arrow']):,.0f} rows/s (median; target 100,000)" + ratios
    )


if __name__ == "__main__":
    main()
