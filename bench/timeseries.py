"""``python -m bench timeseries``: issue 15's figures, against a server subprocess.

* backfill: a year of one-minute data of one series (``--years N``: N years), sent newest
  first in NDJSON batches (historical and out of order), with a live subscriber beside it: the
  ingest rate, and the live latency p50/p99 of a paced live series (one row every 50 ms)
  during the backfill, beside the same live series measured alone just before (``--quiet``
  seconds: the machine's own latency, to tell it from what the backfill adds);
* aggregates: that year aggregated to days (``every=1d``) against the yardstick measured in
  the same run, reading its rows (every page of ``limit=100000``);
* latest: ``/latest`` over 30,000 stations (one series each);
* retention: the time from setting ``retention_days`` until every one of ``--rows`` rows is
  gone (one pass, plus at most the 1 s interval set here).

Prints the core count and the figures; ``--quick`` makes each part smaller.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from typing import Any

import httpx
import orjson

from .common import machine_speed
from .harness import HOST, TOKEN, StreamgaugeServer, log

MINUTE = 60_000
DAY = 86_400_000
API = "/api/v1/projects"


def _client(srv: StreamgaugeServer) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{HOST}:{srv.port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=600,
    )


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 300:
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


def _ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in rows)


def _post(c: httpx.Client, project: str, rows: list[dict[str, Any]]) -> None:
    _ok(
        c.post(
            f"{API}/{project}/observations",
            content=_ndjson(rows),
            headers={"content-type": "application/x-ndjson"},
        )
    )


class LiveProbe:
    """A live subscriber of one series and a paced producer of it: per-row latency."""

    def __init__(self, srv: StreamgaugeServer, project: str) -> None:
        self.srv = srv
        self.project = project
        self.sent: dict[int, float] = {}
        self.latency: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def _listen(self) -> None:
        with _client(self.srv) as c:
            params = {"device": "live", "format": "ndjson"}
            with c.stream("GET", f"{API}/{self.project}/stream", params=params) as s:
                self.ready.set()
                for line in s.iter_lines():
                    if self.stop.is_set():
                        return
                    obj = orjson.loads(line)
                    if "cursor" in obj and obj["time"] is not None:
                        key = int(obj["value"])
                        if key in self.sent:
                            self.latency.append(time.perf_counter() - self.sent[key])

    def _produce(self) -> None:
        with _client(self.srv) as c:
            k = 0
            while not self.stop.is_set():
                k += 1
                self.sent[k] = time.perf_counter()
                row = {
                    "device": "live",
                    "variable": "v",
                    "time": int(time.time() * 1000),
                    "value": float(k),
                }
                _post(c, self.project, [row])
                time.sleep(0.05)

    def __enter__(self) -> LiveProbe:
        self.threads = [threading.Thread(target=self._listen, daemon=True)]
        self.threads[0].start()
        self.ready.wait(30)
        self.threads.append(threading.Thread(target=self._produce, daemon=True))
        self.threads[1].start()
        time.sleep(1)
        self.latency.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.threads[1].join(10)

    def percentiles(self) -> tuple[float, float]:
        xs = sorted(self.latency) or [float("nan")]
        return xs[len(xs) // 2] * 1000, xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000


def backfill_and_aggregate(
    srv: StreamgaugeServer,
    minutes: int,
    batch: int,
    years: int,
    quiet: float,
    aggregates: bool = True,
) -> None:
    with _client(srv) as c:
        _ok(c.post(API, json={"id": "ts"}))
        _ok(
            c.post(
                f"{API}/ts/devices",
                json=[
                    {"id": "year", "variables": [{"id": "v", "name": "air_temp", "unit": "degC"}]},
                    {"id": "live", "variables": [{"id": "v", "name": "air_temp", "unit": "degC"}]},
                ],
            )
        )
        end = (int(time.time() * 1000) // DAY - 1) * DAY
        start = end - minutes * MINUTE * years
        total = minutes * years
        bodies = []
        for hi in range(total, 0, -batch):  # newest first
            lo = max(0, hi - batch)
            rows = [
                {
                    "device": "year",
                    "variable": "v",
                    "time": start + i * MINUTE,
                    "value": float(i % 40),
                }
                for i in range(hi - 1, lo - 1, -1)
            ]
            bodies.append(_ndjson(rows))
        # The same live series with nothing else going on: the machine's own latency, to tell
        # it from what the backfill adds.
        with LiveProbe(srv, "ts") as idle:
            time.sleep(quiet)
        q50, q99 = idle.percentiles()
        log(
            f"live subscriber alone ({quiet:.0f} s): p50 {q50:.1f} ms, p99 {q99:.1f} ms "
            f"({len(idle.latency)} live rows)"
        )
        with LiveProbe(srv, "ts") as probe:
            t = time.perf_counter()
            for body in bodies:
                _ok(
                    c.post(
                        f"{API}/ts/observations",
                        content=body,
                        headers={"content-type": "application/x-ndjson"},
                    )
                )
            took = time.perf_counter() - t
        p50, p99 = probe.percentiles()
        log(
            f"backfill: {total:,} rows newest first in batches of {batch:,}: "
            f"{total / took:,.0f} obs/s; live subscriber p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({len(probe.latency)} live rows)"
        )
        if not aggregates:
            return

        def aggregate_median() -> float:
            agg_times = []
            for _ in range(5):
                t = time.perf_counter()
                body = _ok(
                    c.get(
                        f"{API}/ts/observations",
                        params={
                            "device": "year",
                            "every": "1d",
                            "agg": "mean,min,max,count",
                            "limit": 366 * years,
                        },
                    )
                )
                agg_times.append(time.perf_counter() - t)
            assert sum(b["count"] for b in body["aggregates"]) == total, "aggregates not exact"
            return statistics.median(agg_times)

        # Right after the backfill the writer has not folded it into the hour summaries yet
        # (it does when idle): the read summarizes the unfolded rows through the index. Again
        # after the row reads (15 s and more later), when the writer has folded them.
        fresh = aggregate_median()
        raw_times = []
        for _ in range(3):
            t = time.perf_counter()
            n = 0
            page = None
            while True:
                params: dict[str, Any] = {"device": "year", "limit": 100_000, "qc": "none"}
                if page:
                    params["page"] = page
                body = _ok(c.get(f"{API}/ts/observations", params=params))
                n += len(body["observations"])
                page = body["next"]
                if page is None:
                    break
            raw_times.append(time.perf_counter() - t)
        assert n == total
        agg, raw = aggregate_median(), statistics.median(raw_times)
        log(
            f"aggregate every=1d over {total:,} rows: {agg * 1000:.1f} ms (median of 5, after the "
            f"row reads); yardstick, reading the rows: {raw * 1000:.0f} ms (median of 3); "
            f"{raw / agg:.0f}x; right after the backfill, before the writer folded it: "
            f"{fresh * 1000:.1f} ms = {raw / fresh:.0f}x"
        )


def latest(srv: StreamgaugeServer, stations: int) -> None:
    with _client(srv) as c:
        _ok(c.post(API, json={"id": "lt"}))
        for k in range(0, stations, 2000):
            devs = [
                {"id": f"st{i}", "variables": [{"id": "v", "name": "air_temp", "unit": "degC"}]}
                for i in range(k, min(stations, k + 2000))
            ]
            _ok(c.post(f"{API}/lt/devices", json=devs))
        now = int(time.time() * 1000)
        for k in range(0, stations, 10_000):
            _post(
                c,
                "lt",
                [
                    {"device": f"st{i}", "variable": "v", "time": now, "value": 1.0}
                    for i in range(k, min(stations, k + 10_000))
                ],
            )
        times = []
        for _ in range(10):
            t = time.perf_counter()
            body = _ok(c.get(f"{API}/lt/latest"))
            times.append(time.perf_counter() - t)
        assert len(body["latest"]) == stations
        log(
            f"latest over {stations:,} stations: {statistics.median(times) * 1000:.1f} ms "
            f"(median of 10, whole HTTP reply)"
        )


def _gone_upto(c: httpx.Client, project: str) -> int:
    """The highest cursor retention removed from ``project`` (0: none), from the 410 a resume
    from cursor 0 gets."""
    with c.stream("GET", f"{API}/{project}/stream", params={"since": 0}) as r:
        if r.status_code != 410:
            return 0
        r.read()
        return int(r.json()["error"]["earliest"]) - 1


def retention(srv: StreamgaugeServer, rows: int) -> None:
    with _client(srv) as c:
        _ok(c.post(API, json={"id": "rt"}))
        series = 1000
        _ok(
            c.post(
                f"{API}/rt/devices",
                json=[
                    {"id": f"r{i}", "variables": [{"id": "v", "name": "air_temp", "unit": "degC"}]}
                    for i in range(series)
                ],
            )
        )
        _ok(c.post(API, json={"id": "lv"}))
        _ok(
            c.post(
                f"{API}/lv/devices",
                json=[
                    {"id": "live", "variables": [{"id": "v", "name": "air_temp", "unit": "degC"}]}
                ],
            )
        )
        t0 = (int(time.time() * 1000) // DAY - 30) * DAY
        per = rows // series
        t = time.perf_counter()
        for k in range(0, per, 10):
            _post(
                c,
                "rt",
                [
                    {"device": f"r{s}", "variable": "v", "time": t0 + j * MINUTE, "value": 1.0}
                    for j in range(k, min(per, k + 10))
                    for s in range(series)
                ],
            )
        log(f"retention: {per * series:,} rows written in {time.perf_counter() - t:.1f} s")
        top = per * series  # the rt project's rows hold cursors 1..top (written first)
        with LiveProbe(srv, "lv") as probe:
            t = time.perf_counter()
            _ok(c.patch(f"{API}/rt", json={"retention_days": 1}))
            hidden = None
            while True:
                if (
                    hidden is None
                    and not _ok(c.get(f"{API}/rt/observations", params={"limit": 1}))[
                        "observations"
                    ]
                ):
                    hidden = time.perf_counter() - t
                if hidden is not None and _gone_upto(c, "rt") >= top:
                    break
                time.sleep(0.05)
            took = time.perf_counter() - t
        p50, p99 = probe.percentiles()
        log(
            f"retention: {top:,} rows ({series:,} series) removed {took:.1f} s after "
            f"retention_days was set (pass interval 1 s; history empty after {hidden:.1f} s); "
            f"live subscriber meanwhile p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({len(probe.latency)} live rows)"
        )


PARTS = ("backfill", "latest", "retention")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench timeseries")
    ap.add_argument("--quick", action="store_true", help="smaller: 1/8 year, 3,000 stations")
    ap.add_argument("--rows", type=int, default=None, help="rows for the retention pass")
    ap.add_argument(
        "--minutes", type=int, default=None, help="rows of the backfill (default: a year)"
    )
    ap.add_argument(
        "--years",
        type=int,
        default=1,
        help="backfill this many years of the series, newest first (more live rows measured)",
    )
    ap.add_argument(
        "--quiet",
        type=float,
        default=5.0,
        help="seconds the live series is measured alone before the backfill",
    )
    ap.add_argument(
        "--no-aggregates", action="store_true", help="the backfill part without its aggregates"
    )
    ap.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}"
    )
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if not parts <= set(PARTS):
        ap.error(f"--only takes {', '.join(PARTS)}")
    minutes = args.minutes or 525_600 // (8 if args.quick else 1)
    stations = 3000 if args.quick else 30_000
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    log(f"cores: {os.cpu_count()}; load average {os.getloadavg()}; {machine_speed()}")
    env = {"STREAMGAUGE_RETENTION_INTERVAL_SECONDS": "1"}
    if parts & {"backfill", "latest"}:
        with StreamgaugeServer("normal", env) as srv:
            if "backfill" in parts:
                backfill_and_aggregate(
                    srv, minutes, 10_000, args.years, args.quiet, not args.no_aggregates
                )
            if "latest" in parts:
                latest(srv, stations)
    if "retention" in parts:
        with StreamgaugeServer("normal", env) as srv:
            retention(srv, rows)
    log(f"load average after: {os.getloadavg()}")
