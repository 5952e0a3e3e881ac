"""Shared pieces of the streamgauge benchmark: the synthetic mesonet, observation encoders,
subscriber filters, a minimal HTTP/1.1 keep-alive client, and process/CPU helpers.

Everything here is deterministic (fixed seed), so the streamgauge run and the baselines see the
same stations, the same observations and the same filters.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

VARIABLES: list[tuple[str, str]] = [
    ("air_temp", "degC"),
    ("relative_humidity", "%"),
    ("wind_speed", "m/s"),
    ("wind_gust", "m/s"),
    ("pressure", "Pa"),
    ("precip_accum", "mm"),
]
NVARS = len(VARIABLES)
VAR_NAMES = [v for v, _ in VARIABLES]
STATES = ["UT", "CO", "WY", "ID", "NV", "AZ", "NM", "MT", "CA", "OR", "WA"]
NETWORKS = ["MESOWEST", "RAWS", "NWS", "DOT", "AGWX", "CWOP", "SNOTEL", "PRIV"]
DEVICE_TYPES = ["weather_station", "road_weather", "agromet"]
DEVICE_TYPE_P = [0.60, 0.25, 0.15]
SEED = 20240601


def device_id(i: int) -> str:
    return f"SG{i:05d}"


@dataclass
class Mesonet:
    n: int
    state: np.ndarray  # int index into STATES, per station
    network: np.ndarray
    dtype: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    elev: np.ndarray
    base: np.ndarray  # (n, NVARS) base value per series
    ids: list[str] = field(default_factory=list)

    @property
    def nseries(self) -> int:
        return self.n * NVARS


def make_mesonet(n: int = 30_000, seed: int = SEED) -> Mesonet:
    rng = np.random.default_rng(seed)
    state = rng.integers(0, len(STATES), n)
    network = rng.integers(0, len(NETWORKS), n)
    dtype = rng.choice(len(DEVICE_TYPES), n, p=DEVICE_TYPE_P)
    lat = rng.uniform(31.5, 49.0, n)
    lon = rng.uniform(-124.5, -102.0, n)
    elev = rng.uniform(0, 3500, n)
    base = np.empty((n, NVARS))
    base[:, 0] = rng.uniform(-5, 30, n)  # air_temp C
    base[:, 1] = rng.uniform(15, 90, n)  # RH %
    base[:, 2] = rng.uniform(0, 12, n)  # wind speed m/s
    base[:, 3] = base[:, 2] + rng.uniform(1, 5, n)  # gust >= speed
    base[:, 4] = rng.uniform(70_000, 101_000, n)  # pressure Pa
    base[:, 5] = rng.uniform(0, 300, n)  # precip accum mm
    return Mesonet(n, state, network, dtype, lat, lon, elev, base, [device_id(i) for i in range(n)])


def site_bodies(m: Mesonet) -> list[dict[str, Any]]:
    return [
        {
            "id": m.ids[i],
            "name": f"Bench station {i}",
            "lat": round(float(m.lat[i]), 5),
            "lon": round(float(m.lon[i]), 5),
            "elevation": round(float(m.elev[i]), 1),
            "state": STATES[m.state[i]],
            "country": "US",
            "network": NETWORKS[m.network[i]],
            "nwszone": f"{STATES[m.state[i]]}Z{i % 500:03d}",
            "nwsfirezone": f"{STATES[m.state[i]]}Z{(i * 7) % 500:03d}",
            "timezone": "America/Denver",
        }
        for i in range(m.n)
    ]


def device_bodies(m: Mesonet, with_units: bool = True) -> list[dict[str, Any]]:
    out = []
    for i in range(m.n):
        vs = [{"name": v, "unit": u} if with_units else {"name": v} for v, u in VARIABLES]
        out.append(
            {
                "id": m.ids[i],
                "site": m.ids[i],
                "type": DEVICE_TYPES[m.dtype[i]],
                "name": f"Bench device {i}",
                "labels": {"state": STATES[m.state[i]], "network": NETWORKS[m.network[i]]},
                "variables": vs,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Observations. Row r of the endless ingest stream is series r % S at tick r // S; a series s is
# station s // NVARS, variable s % NVARS. Every tick has one time shared by all series, so each
# series is written in time order and every (device, variable, time) key is unique.


def values_for(m: Mesonet, series: np.ndarray, tick: np.ndarray) -> np.ndarray:
    st = series // NVARS
    var = series % NVARS
    b = m.base[st, var]
    wobble = ((series * 2654435761 + tick * 40503) % 1000) / 1000.0 - 0.5
    scale = np.array([2.0, 5.0, 2.0, 2.0, 300.0, 0.0])[var]
    # kept inside the server's catalog ranges, which it removes failures of by default
    lo = np.array([-90.0, 0.0, 0.0, 0.0, 30000.0, 0.0])[var]
    hi = np.array([65.0, 100.0, 120.0, 120.0, 110000.0, 50000.0])[var]
    return cast(np.ndarray, np.clip(np.round(b + wobble * scale, 1), lo, hi))


class NdjsonEncoder:
    """Pre-encodes streamgauge NDJSON ingest rows (per-series prefixes cached)."""

    def __init__(self, m: Mesonet):
        self.m = m
        self.prefix = [
            b'{"device":"%s","variable":"%s","time":'
            % (m.ids[s // NVARS].encode(), VAR_NAMES[s % NVARS].encode())
            for s in range(m.nseries)
        ]

    def rows(self, series: np.ndarray, times: np.ndarray, values: np.ndarray) -> bytes:
        p = self.prefix
        return b"".join(
            [
                p[s] + b'%d,"value":%s}\n' % (t, repr(v).encode())
                for s, t, v in zip(series.tolist(), times.tolist(), values.tolist(), strict=True)
            ]
        )


class ColumnarEncoder:
    """Pre-encodes streamgauge columnar ingest bodies: an Arrow IPC stream (``arrow``) or a
    Parquet file (``parquet``) with dictionary-encoded device and variable columns, times as
    timestamp[ms, UTC] and float64 values."""

    MEDIA = {"arrow": "application/vnd.apache.arrow.stream", "parquet": "application/x-parquet"}

    def __init__(self, m: Mesonet, fmt: str):
        import pyarrow as pa

        self.pa, self.fmt = pa, fmt
        self.devices = pa.array(m.ids)
        self.variables = pa.array(VAR_NAMES)

    def rows(self, series: np.ndarray, times: np.ndarray, values: np.ndarray) -> bytes:
        pa = self.pa
        used, codes = np.unique(series // NVARS, return_inverse=True)  # the batch's own names
        table = pa.table(
            {
                "device": pa.DictionaryArray.from_arrays(
                    pa.array(codes, pa.int32()), self.devices.take(pa.array(used))
                ),
                "variable": pa.DictionaryArray.from_arrays(
                    pa.array(series % NVARS, pa.int32()), self.variables
                ),
                "time": pa.array(times, pa.timestamp("ms", "UTC")),
                "value": pa.array(values, pa.float64()),
            }
        )
        sink = pa.BufferOutputStream()
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, sink)
        else:
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
        return bytes(sink.getvalue())


class LineProtocolEncoder:
    """Pre-encodes InfluxDB line protocol rows: obs,station=..,variable=.. value=.. <ms>."""

    def __init__(self, m: Mesonet):
        self.prefix = [
            b"obs,station=%s,variable=%s value="
            % (m.ids[s // NVARS].encode(), VAR_NAMES[s % NVARS].encode())
            for s in range(m.nseries)
        ]

    def rows(self, series: np.ndarray, times: np.ndarray, values: np.ndarray) -> bytes:
        p = self.prefix
        return b"".join(
            [
                p[s] + b"%s %d\n" % (repr(v).encode(), t)
                for s, t, v in zip(series.tolist(), times.tolist(), values.tolist(), strict=True)
            ]
        )


def ingest_batches(
    m: Mesonet, enc: Any, start_row: int, nrows: int, batch: int, t0_ms: int, tick_ms: int
) -> list[bytes]:
    """Bodies for rows [start_row, start_row + nrows) of the endless stream, `batch` rows each."""
    out = []
    S = m.nseries
    for a in range(start_row, start_row + nrows, batch):
        r = np.arange(a, min(a + batch, start_row + nrows), dtype=np.int64)
        series = r % S
        tick = r // S
        out.append(enc.rows(series, t0_ms + tick * tick_ms, values_for(m, series, tick)))
    return out


# ---------------------------------------------------------------------------------------------
# Fan-out batches: batch k carries `rows` consecutive series (wrapping) and ONE time t1 + k*1000 ms,
# so a delivered observation's time says which batch (and so which send time) it came from.


def fanout_series(m: Mesonet, k: int, rows: int) -> np.ndarray:
    return (np.arange(k * rows, (k + 1) * rows, dtype=np.int64)) % m.nseries


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time_ms(s: bytes) -> int | None:
    try:
        txt = s.decode()
        if txt.endswith("Z"):
            txt = txt[:-1] + "+00:00"
        return round(datetime.fromisoformat(txt).timestamp() * 1000)
    except Exception:  # noqa: BLE001
        try:
            return int(float(s))
        except Exception:  # noqa: BLE001
            return None


# ---------------------------------------------------------------------------------------------
# Subscriber filters: the query string for the streamgauge stream, and the same predicate in numpy
# (OR within a repeated key, AND across keys) to know what each subscriber should receive.


@dataclass
class Filter:
    kind: str
    devices: list[int] | None = None
    variables: list[int] | None = None
    state: int | None = None
    network: int | None = None
    dtype: int | None = None

    def query(self) -> str:
        parts = []
        for d in self.devices or []:
            parts.append(f"device={device_id(d)}")
        for v in self.variables or []:
            parts.append(f"variable={VAR_NAMES[v]}")
        if self.state is not None:
            parts.append(f"label=state={STATES[self.state]}")
        if self.network is not None:
            parts.append(f"label=network={NETWORKS[self.network]}")
        if self.dtype is not None:
            parts.append(f"device_type={DEVICE_TYPES[self.dtype]}")
        return "&".join(parts)

    def mask(self, m: Mesonet, series: np.ndarray) -> np.ndarray:
        st = series // NVARS
        var = series % NVARS
        ok = np.ones(series.shape, bool)
        if self.devices is not None:
            ok &= np.isin(st, np.asarray(self.devices))
        if self.variables is not None:
            ok &= np.isin(var, np.asarray(self.variables))
        if self.state is not None:
            ok &= m.state[st] == self.state
        if self.network is not None:
            ok &= m.network[st] == self.network
        if self.dtype is not None:
            ok &= m.dtype[st] == self.dtype
        return ok


def make_filters(m: Mesonet, count: int = 100, seed: int = SEED) -> list[Filter]:
    """100 different filters: 10 unfiltered, 30 device lists, 12 variable sets, 19 label,
    21 device-type (alone or with a variable), 8 state+variable."""
    rng = np.random.default_rng(seed + 1)
    fs: list[Filter] = [Filter("none") for _ in range(10)]
    for _ in range(30):
        fs.append(Filter("device", devices=sorted(rng.choice(m.n, 20, replace=False).tolist())))
    for v in range(NVARS):
        fs.append(Filter("variable", variables=[v]))
        fs.append(Filter("variable", variables=[v, (v + 2) % NVARS]))
    for s in range(len(STATES)):
        fs.append(Filter("label", state=s))
    for n in range(len(NETWORKS)):
        fs.append(Filter("label", network=n))
    for t in range(len(DEVICE_TYPES)):
        fs.append(Filter("device_type", dtype=t))
        for v in range(NVARS):
            fs.append(Filter("device_type", dtype=t, variables=[v]))
    for i in range(8):
        fs.append(Filter("label+variable", state=i, variables=[i % NVARS]))
    assert len(fs) == 100, len(fs)
    if count <= len(fs):
        # keep the mix when asked for fewer
        idx = np.linspace(0, len(fs) - 1, count).round().astype(int)
        return [fs[i] for i in idx]
    return [fs[i % len(fs)] for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Minimal HTTP/1.1 keep-alive client (low client CPU; bodies pre-encoded).


class HttpConn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.r, self.w = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        sock = self.w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.w is None:
            await self.open()
        assert self.r is not None and self.w is not None
        self.w.write(request)
        await self.w.drain()
        return await read_response(self.r)

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
            self.w = None


async def read_response(r: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    clen = None
    chunked = False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            clen = int(v.strip())
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await r.readuntil(b"\r\n")
                break
            body += await r.readexactly(size)
            await r.readexactly(2)
        return status, bytes(body)
    if clen:
        return status, await r.readexactly(clen)
    return status, b""


def build_request(
    method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes
) -> bytes:
    h = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    h += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


async def post_all(
    host: str, port: int, requests: list[bytes], producers: int, ok_status: tuple[int, ...]
) -> tuple[float, list[tuple[int, bytes]], list[float]]:
    """Send pre-built requests over `producers` keep-alive connections, as fast as answered.
    Returns (elapsed seconds from first send to last answer, responses, request durations)."""
    conns = [HttpConn(host, port) for _ in range(producers)]
    for c in conns:
        await c.open()
    results: list[tuple[int, bytes]] = [(0, b"")] * len(requests)
    durs = [0.0] * len(requests)
    nxt = 0

    async def worker(c: HttpConn) -> None:
        nonlocal nxt
        while nxt < len(requests):
            i = nxt
            nxt += 1
            t1 = time.perf_counter()
            results[i] = await c.send(requests[i])
            durs[i] = time.perf_counter() - t1
            if results[i][0] not in ok_status:
                raise RuntimeError(f"HTTP {results[i][0]}: {results[i][1][:500]!r}")

    t = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return time.perf_counter() - t, results, durs


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its waited-for children) from /proc, plus its running
    children's (a server's fan-out workers, ``serve --workers N``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in parts[11:15])
    except OSError:
        return float("nan")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                child = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(child[1]) == pid:
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_quiet(
    pid: int, limit_s: float = 60.0, window_s: float = 1.0, quiet_cores: float = 0.03
) -> float:
    """Wait until the server ``pid`` (with its fan-out workers) has used less than
    ``quiet_cores`` of a core in each of two windows of ``window_s`` running, at most
    ``limit_s``; return the seconds waited. A server that has just taken a large ingest (or
    restarted on a long log) does upkeep in the background for some seconds: it indexes the
    tail and folds the hour summaries, its SQLite page caches fill and are given back when
    done (tens of MB). A memory reading taken during that work is not the memory at rest:
    between two readings it counted as, or against, what happened in between (the memory
    per idle feed session swung between 5 and 19 KB from this alone)."""
    t0 = time.monotonic()
    quiet = 0
    last = proc_cpu_seconds(pid)
    while time.monotonic() - t0 < limit_s:
        time.sleep(window_s)
        now = proc_cpu_seconds(pid)
        quiet = quiet + 1 if now - last < quiet_cores * window_s else 0
        last = now
        if quiet >= 2:
            break
    return time.monotonic() - t0


def _proc_kib(path: str, field: str) -> float:
    """The ``field:`` line of a /proc file, KiB as MiB (NaN if the process is gone)."""
    try:
        with open(path) as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def proc_rss_mb(pid: int) -> float:
    """Resident memory counted page by page (``Rss`` of ``/proc/PID/smaps_rollup``). ``VmRSS``
    of ``/proc/PID/status`` is the kernel's cached counter, which proc(5) calls inaccurate for
    the sake of scalability: against smaps_rollup it was seen off by up to 10 MB in either
    direction, as much as 1,000 idle feed sessions measured with it."""
    rss = _proc_kib(f"/proc/{pid}/smaps_rollup", "Rss")
    return rss if rss == rss else _proc_kib(f"/proc/{pid}/status", "VmRSS")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a server's fan-out workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def pss_mb(pid: int) -> float:
    """The proportional set size of ``pid`` (its resident pages, each shared page divided among
    the processes sharing it): what summing over processes should use."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def anon_mb(pid: int) -> float:
    """The anonymous memory of ``pid`` (its heap and other private pages, no mapped files)."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Anonymous")


def node_mb(pid: int) -> tuple[float, int]:
    """The memory of a server and its fan-out workers together (sum of PSS), and how many
    processes that is."""
    pids = [pid, *children(pid)]
    return sum(pss_mb(p) for p in pids), len(pids)


def weighted_percentiles(lat: np.ndarray, w: np.ndarray, qs: list[float]) -> list[float]:
    if lat.size == 0 or w.sum() == 0:
        return [float("nan")] * len(qs)
    o = np.argsort(lat)
    lat, w = lat[o], w[o]
    cw = np.cumsum(w)
    out = []
    for q in qs:
        i = int(np.searchsorted(cw, q / 100.0 * cw[-1], side="left"))
        out.append(float(lat[min(i, lat.size - 1)]))
    return out


def loop_factory() -> Any:
    """uvloop's loop if installed (for the bench clients and baselines), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return None


def output_line(cursor: int, device: str, variable: str, time_s: str, value: float) -> bytes:
    """A live-stream line as the streamgauge native NDJSON stream writes it (for the baseline)."""
    return (
        b'{"cursor":%d,"device":"%s","variable":"%s","set":1,"time":"%s","value":%s,"qc":[]}\n'
        % (cursor, device.encode(), variable.encode(), time_s.encode(), repr(value).encode())
    )


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy (user+nice+system+irq+softirq+steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def start_profile(pid: int, seconds: float) -> Any:
    """py-spy (raw collapsed stacks) on ``pid`` for ``seconds`` when BENCH_PYSPY names the output
    file (BENCH_PYSPY_ARGS: more py-spy options, e.g. ``--idle --threads``); None otherwise.
    Wait on the returned process."""
    out = os.environ.get("BENCH_PYSPY")
    if not out:
        return None
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", out]
        + os.environ.get("BENCH_PYSPY_ARGS", "").split(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def machine_speed() -> str:
    """``machine_speed_ms`` as the benches print it beside their figures."""
    return f"machine speed {machine_speed_ms():.0f} ms (lower is faster)"


def machine_speed_ms() -> float:
    """A fixed single-threaded workload of small dict and numpy operations, the kind the
    server's fan-out is made of (best of five, in ms): this machine's speed at this moment.
    Shared machines run the same code 20 to 30 % slower at some times than at others; compare
    runs by this figure."""
    a = np.arange(500)

    def once() -> float:
        d: dict[int, int] = {}
        t0 = time.perf_counter()
        for i in range(200_000):
            d[i & 1023] = i
            if i % 10 == 0:
                (a[a > (i & 255)] >> 1).sum()
        return time.perf_counter() - t0

    return min(once() for _ in range(5)) * 1000


_BURN = """
import os, sys, time
share = float(sys.argv[1])
os.nice(0)
period = 0.02
while True:
    t0 = time.perf_counter()
    x = 0
    while time.perf_counter() - t0 < period * share:
        for i in range(2000):
            x += i * i
    rest = period * (1 - share)
    if rest > 0:
        time.sleep(rest)
"""


class Busy:
    """Another process using ``share`` (0..1) of one core for as long as the ``with`` block
    runs: the "another process busy" condition of the fan-out and feed benches (issue 17 asks
    for their p99 with another process using most of one core). A pure-Python spin loop that
    sleeps the rest of each 20 ms period; ``share=0`` starts nothing."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Busy:
        if self.share > 0:
            self.proc = subprocess.Popen([sys.executable, "-c", _BURN, str(self.share)])
        return self

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
