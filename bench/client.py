"""``python -m bench client``: the Python client against its yardsticks, in one run.

1. ``streamgauge import`` of a CSV of ``--rows`` observations (1,000,000 by default) into a
   fresh server, as a user runs it (a subprocess; wall time from start to exit, process start
   included). Target: at least 100,000 rows/s.
2. Reading ``--stream-rows`` observations of the resumable live stream (``since=0``: the
   catch-up from the store, as fast as the server sends) with ``Client.stream()``,
   ``AsyncClient.stream()`` and, as the yardstick, the raw NDJSON stream read with httpx
   (``iter_lines`` + ``orjson.loads`` per line: the least a consumer does). Each is run
   ``--rounds`` times, interleaved; the medians are compared. Target: at least 0.8 of raw.

Prints the machine's core count and speed; the machine is shared, so figures vary by run.
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


def run_import(url: str, path: Path, rows: int) -> tuple[float, str]:
    env = dict(os.environ, STREAMGAUGE_URL=url, STREAMGAUGE_TOKEN=TOKEN)
    exe = [sys.executable, "-m", "streamgauge", "import", "bench", str(path)]
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
        it = c.stream("bench", since=0)
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


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench client", description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the imported CSV")
    ap.add_argument("--stream-rows", type=int, default=300_000, help="rows read per stream run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each stream reader")
    ap.add_argument("--durability", default="normal", choices=["normal", "full"])
    a = ap.parse_args()
    log(
        f"streamgauge client bench: cpu_count={os.cpu_count()} python={sys.version.split()[0]} "
        f"rows={a.rows:,} stream_rows={a.stream_rows:,} durability={a.durability} "
        f"machine speed {machine_speed_ms():.1f} ms (lower is faster)"
    )
    with tempfile.TemporaryDirectory(prefix="sg-bench-client-") as tmp:
        path = Path(tmp) / "obs.csv"
        write_csv(path, a.rows)
        log(f"CSV: {path.stat().st_size / 2**20:.1f} MiB")
        with StreamgaugeServer(a.durability) as srv:
            url = f"http://{HOST}:{srv.port}"
            setup(url)
            rate, summary = run_import(url, path, a.rows)
            log(f"import: {rate:,.0f} rows/s (wall time, process start included)  | {summary}")
            n = min(a.stream_rows, a.rows)
            results: dict[str, list[float]] = {"raw httpx": [], "Client": [], "AsyncClient": []}
            for _ in range(a.rounds):
                results["raw httpx"].append(raw_httpx(url, n))
                results["Client"].append(sync_client(url, n))
                results["AsyncClient"].append(async_client(url, n))
            medians = {k: statistics.median(v) for k, v in results.items()}
            raw = medians["raw httpx"]
            for name, runs in results.items():
                spread = f"{min(runs):,.0f}-{max(runs):,.0f}"
                ratio = medians[name] / raw
                log(
                    f"stream {name:12s} {medians[name]:>10,.0f} obs/s (median of {len(runs)}, "
                    f"spread {spread}) = {ratio:.2f} of raw"
                )
    log(
        f"SUMMARY cpu_count={os.cpu_count()} import={rate:,.0f} rows/s (target 100,000) "
        f"Client/raw={medians['Client'] / raw:.2f} AsyncClient/raw="
        f"{medians['AsyncClient'] / raw:.2f} (target 0.8)"
    )


if __name__ == "__main__":
    main()
