"""Pure parts of the simulator: network layout, value generator and scheduler.

Nothing here does I/O or reads the clock: every function takes the time it needs as an argument
(epoch milliseconds, UTC), and everything is deterministic given the seed.

The network is the Tapis tutorial station (site ``tapis_demo_site``, device
``Ohio_River_Robert_C_Byrd_Locks`` with ``temperature`` and ``rainfall``) plus a mesonet of
``N`` weather stations ``SG0001``... spread over several US states, networks and NWS zones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict

__all__ = [
    "BAD_FRACTION",
    "MESONET_VARIABLES",
    "NETWORKS",
    "STATES",
    "TAPIS_DEVICE_ID",
    "TAPIS_SITE_ID",
    "TAPIS_VARIABLES",
    "Climate",
    "Network",
    "Observation",
    "Scheduler",
    "StateInfo",
    "Station",
    "ValueGenerator",
    "VariableSpec",
    "build_network",
    "device_payloads",
    "project_payload",
    "site_payloads",
    "station_pressure",
]

MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000
BAD_FRACTION: Final = 0.005
"""Default fraction of all observations that carry an injected bad value."""


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariableSpec:
    id: str
    unit: str
    set: int = 1

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.id, "unit": self.unit, "set": self.set}


TAPIS_SITE_ID: Final = "tapis_demo_site"
TAPIS_DEVICE_ID: Final = "Ohio_River_Robert_C_Byrd_Locks"
TAPIS_VARIABLES: Final = (VariableSpec("temperature", "degC"), VariableSpec("rainfall", "mm"))
MESONET_VARIABLES: Final = (
    VariableSpec("air_temp", "degC"),
    VariableSpec("relative_humidity", "%"),
    VariableSpec("wind_speed", "m/s"),
    VariableSpec("wind_gust", "m/s"),
    VariableSpec("pressure", "Pa"),
    VariableSpec("precip_accum", "mm"),
)
NETWORKS: Final = ("SG-MESO", "RAWS", "ASOS", "DOT-RWIS", "COOP-AG")


@dataclass(frozen=True, slots=True)
class Climate:
    """Rough climate of a place, enough for plausible numbers."""

    mean_temp_sl: float  # annual mean air temperature reduced to sea level, degC
    seasonal_amp: float  # half the summer-winter difference, degC
    diurnal_amp: float  # half the day-night difference, degC
    dew_depression: float  # mean (temp - dew point), degC; large = dry
    rain_threshold: float  # in [0, 1]; higher = rains less often
    wind_base: float  # typical wind speed, m/s


@dataclass(frozen=True, slots=True)
class StateInfo:
    code: str
    lat: tuple[float, float]
    lon: tuple[float, float]
    elevation: tuple[float, float]
    timezone: str
    nwszones: tuple[str, ...]
    firezones: tuple[str, ...]
    climate: Climate


STATES: Final = (
    StateInfo(
        "UT",
        (37.2, 41.8),
        (-113.8, -109.3),
        (1300, 2900),
        "America/Denver",
        ("UTZ003", "UTZ005", "UTZ008", "UTZ015", "UTZ025"),
        ("UTZ478", "UTZ479", "UTZ482", "UTZ489"),
        Climate(20.0, 13.0, 8.0, 12.0, 0.93, 3.0),
    ),
    StateInfo(
        "CO",
        (37.2, 40.9),
        (-108.8, -102.2),
        (1200, 3300),
        "America/Denver",
        ("COZ034", "COZ039", "COZ040", "COZ058"),
        ("COZ214", "COZ216", "COZ240"),
        Climate(19.0, 12.0, 8.0, 11.0, 0.91, 3.5),
    ),
    StateInfo(
        "AZ",
        (31.5, 36.9),
        (-114.5, -109.2),
        (300, 2400),
        "America/Phoenix",
        ("AZZ537", "AZZ540", "AZZ548"),
        ("AZZ131", "AZZ132"),
        Climate(24.0, 10.0, 9.0, 16.0, 0.95, 2.8),
    ),
    StateInfo(
        "NV",
        (35.2, 41.9),
        (-119.9, -114.2),
        (700, 2300),
        "America/Los_Angeles",
        ("NVZ003", "NVZ020", "NVZ036"),
        ("NVZ453", "NVZ461"),
        Climate(21.0, 12.0, 9.0, 15.0, 0.95, 3.2),
    ),
    StateInfo(
        "WY",
        (41.1, 44.9),
        (-110.9, -104.2),
        (1200, 3000),
        "America/Denver",
        ("WYZ012", "WYZ019", "WYZ106"),
        ("WYZ280", "WYZ289"),
        Climate(16.0, 13.0, 8.0, 10.0, 0.91, 5.0),
    ),
    StateInfo(
        "MT",
        (45.0, 48.9),
        (-114.0, -104.5),
        (700, 2500),
        "America/Denver",
        ("MTZ009", "MTZ056", "MTZ060"),
        ("MTZ110", "MTZ114"),
        Climate(14.0, 14.0, 7.0, 8.0, 0.91, 4.0),
    ),
    StateInfo(
        "CA",
        (33.0, 41.5),
        (-123.5, -116.0),
        (0, 1800),
        "America/Los_Angeles",
        ("CAZ006", "CAZ017", "CAZ041"),
        ("CAZ211", "CAZ264"),
        Climate(16.0, 5.0, 6.0, 6.0, 0.93, 2.5),
    ),
    StateInfo(
        "TX",
        (26.5, 35.0),
        (-103.0, -95.0),
        (10, 1200),
        "America/Chicago",
        ("TXZ103", "TXZ192", "TXZ210"),
        ("TXZ403", "TXZ492"),
        Climate(19.5, 10.0, 6.0, 5.0, 0.93, 4.5),
    ),
    StateInfo(
        "OH",
        (39.0, 41.8),
        (-84.7, -80.7),
        (150, 400),
        "America/New_York",
        ("OHZ055", "OHZ061", "OHZ087"),
        ("OHZ255", "OHZ287"),
        Climate(13.0, 13.0, 5.0, 5.0, 0.87, 3.0),
    ),
)
_STATE_BY_CODE: Final = {s.code: s for s in STATES}


@dataclass(frozen=True, slots=True)
class Station:
    """One site with one device (for the mesonet the device id equals the site id)."""

    index: int  # stable position in the network, used to derive the random streams
    id: str  # site id
    name: str
    device_id: str
    device_type: str
    device_name: str
    kind: str  # "tapis" or "mesonet"
    lat: float
    lon: float
    elevation: float
    state: str
    country: str
    network: str
    nwszone: str
    nwsfirezone: str
    timezone: str
    variables: tuple[VariableSpec, ...]
    climate: Climate
    labels: dict[str, str] = field(default_factory=dict)

    def site_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "lat": self.lat,
            "lon": self.lon,
            "elevation": self.elevation,
            "state": self.state,
            "country": self.country,
            "network": self.network,
            "nwszone": self.nwszone,
            "nwsfirezone": self.nwsfirezone,
            "timezone": self.timezone,
            "metadata": {"simulated": True, "kind": self.kind},
        }

    def device_payload(self) -> dict[str, Any]:
        return {
            "id": self.device_id,
            "site": self.id,
            "type": self.device_type,
            "name": self.device_name,
            "labels": dict(self.labels),
            "metadata": {"simulated": True},
            "variables": [v.payload() for v in self.variables],
        }


@dataclass(frozen=True, slots=True)
class Network:
    project: str
    seed: int
    stations: tuple[Station, ...]  # the Tapis station first, then the mesonet

    @property
    def mesonet(self) -> tuple[Station, ...]:
        return tuple(s for s in self.stations if s.kind == "mesonet")

    @property
    def observations_per_cycle(self) -> int:
        """Observations produced when every station reports once."""
        return sum(len(s.variables) for s in self.stations)


def _tapis_station() -> Station:
    oh = _STATE_BY_CODE["OH"]
    return Station(
        index=0,
        id=TAPIS_SITE_ID,
        name="Tapis demo site",
        device_id=TAPIS_DEVICE_ID,
        device_type="river_gauge",
        device_name="Ohio River at Robert C. Byrd Locks",
        kind="tapis",
        lat=38.65,
        lon=-82.18,
        elevation=173.0,
        state="OH",
        country="US",
        network="TAPIS",
        nwszone="OHZ087",
        nwsfirezone="OHZ287",
        timezone="America/New_York",
        variables=TAPIS_VARIABLES,
        climate=oh.climate,
        labels={"network": "TAPIS", "state": "OH", "kind": "tapis"},
    )


def build_network(project: str, stations: int, seed: int) -> Network:
    """Lay out the Tapis station and ``stations`` mesonet stations, deterministically.

    States are cycled through a seed-dependent order so that every state appears once there are
    at least as many stations as states; networks and zones use other strides so that filters on
    state, network, nwszone and nwsfirezone each select real, different subsets.
    """
    if stations < 0:
        raise ValueError("stations must be >= 0")
    state_order = sorted(STATES, key=lambda s: _hash(seed, 1, _str_key(s.code)))
    result = [_tapis_station()]
    for i in range(stations):
        st = state_order[i % len(state_order)]
        idx = i + 1
        net = NETWORKS[(i + 2 * (i // len(state_order))) % len(NETWORKS)]
        zone = st.nwszones[_hash(seed, 2, idx) % len(st.nwszones)]
        fire = st.firezones[_hash(seed, 3, idx) % len(st.firezones)]
        lat = _lerp(st.lat, _unit(seed, 4, idx))
        lon = _lerp(st.lon, _unit(seed, 5, idx))
        elev = _lerp(st.elevation, _unit(seed, 6, idx))
        c = st.climate
        climate = Climate(
            mean_temp_sl=c.mean_temp_sl + 2.0 * (_unit(seed, 7, idx) - 0.5),
            seasonal_amp=c.seasonal_amp,
            diurnal_amp=c.diurnal_amp * (0.8 + 0.4 * _unit(seed, 8, idx)),
            dew_depression=c.dew_depression * (0.8 + 0.4 * _unit(seed, 9, idx)),
            rain_threshold=c.rain_threshold,
            wind_base=c.wind_base * (0.6 + 0.8 * _unit(seed, 10, idx)),
        )
        sid = f"SG{idx:04d}"
        result.append(
            Station(
                index=idx,
                id=sid,
                name=f"Streamgauge sim {st.code} {idx}",
                device_id=sid,
                device_type="weather_station",
                device_name=f"{sid} weather station",
                kind="mesonet",
                lat=round(lat, 5),
                lon=round(lon, 5),
                elevation=round(elev, 1),
                state=st.code,
                country="US",
                network=net,
                nwszone=zone,
                nwsfirezone=fire,
                timezone=st.timezone,
                variables=MESONET_VARIABLES,
                climate=climate,
                labels={"network": net, "state": st.code, "kind": "mesonet"},
            )
        )
    return Network(project=project, seed=seed, stations=tuple(result))


def project_payload(network: Network) -> dict[str, Any]:
    return {
        "id": network.project,
        "name": f"streamgauge simulator ({network.project})",
        "description": "Simulated Tapis tutorial station and mesonet (streamgauge simulate).",
        "metadata": {"simulated": True, "seed": network.seed},
    }


def site_payloads(network: Network) -> list[dict[str, Any]]:
    return [s.site_payload() for s in network.stations]


def device_payloads(network: Network) -> list[dict[str, Any]]:
    return [s.device_payload() for s in network.stations]


# --------------------------------------------------------------------------------------------
# Deterministic randomness
# --------------------------------------------------------------------------------------------

_MASK64: Final = (1 << 64) - 1


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _hash(*parts: int) -> int:
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix(h ^ (p & _MASK64))
    return h


def _unit(*parts: int) -> float:
    """Uniform in [0, 1)."""
    return (_hash(*parts) >> 11) / 9007199254740992.0


def _str_key(s: str) -> int:
    return int.from_bytes(s.encode()[:8].ljust(8, b"\0"), "little")


def _lerp(bounds: tuple[float, float], u: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _noise(seed: int, channel: int, station: int, t_ms: int, period_ms: int) -> float:
    """Smooth value noise in [-1, 1] with features about ``period_ms`` wide."""
    i, r = divmod(t_ms, period_ms)
    f = r / period_ms
    f = f * f * (3.0 - 2.0 * f)
    a = 2.0 * _unit(seed, channel, station, i) - 1.0
    b = 2.0 * _unit(seed, channel, station, i + 1) - 1.0
    return a + (b - a) * f


# channels for the random streams (arbitrary distinct ints)
_CH_WEATHER: Final = 101
_CH_JITTER_T: Final = 102
_CH_DEW: Final = 103
_CH_WIND: Final = 104
_CH_WIND_J: Final = 105
_CH_GUST: Final = 106
_CH_PRES: Final = 107
_CH_RAIN: Final = 108
_CH_BAD: Final = 109
_CH_BAD_KIND: Final = 110
_CH_TAPIS_RAIN: Final = 111


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def station_pressure(elevation_m: float) -> float:
    """Standard-atmosphere station pressure in Pa at ``elevation_m``."""
    return 101325.0 * float((1.0 - 2.25577e-5 * elevation_m) ** 5.25588)


def solar_hour(lon: float, t_ms: int) -> float:
    """Local mean solar time in hours [0, 24)."""
    return ((t_ms / MS_PER_HOUR) + lon / 15.0) % 24.0


def _day_of_year(t_ms: int) -> float:
    return (t_ms % (365.2425 * MS_PER_DAY)) / MS_PER_DAY


# Values injected as "bad", by variable; air_temp alternates between the two.
_BAD_VALUES: Final[dict[str, tuple[float, ...]]] = {
    "air_temp": (150.0, -90.0),
    "temperature": (150.0, -90.0),
    "relative_humidity": (130.0, -5.0),
    "wind_speed": (-4.0, -1.5),
    "wind_gust": (-6.0, -2.0),
}


class ValueGenerator:
    """Produces plausible readings for a station at a given time.

    Every variable except ``precip_accum`` is a pure function of (seed, station, time).
    ``precip_accum`` is the integral of a deterministic rain rate from ``origin_ms`` (by default
    the start of the UTC day of the first time asked for), so it never decreases as time
    advances; the generator caches the running sum per station, which keeps it cheap.
    """

    def __init__(
        self,
        network: Network,
        *,
        origin_ms: int | None = None,
        bad_fraction: float = BAD_FRACTION,
    ) -> None:
        if not 0.0 <= bad_fraction <= 1.0:
            raise ValueError("bad_fraction must be within [0, 1]")
        self.network = network
        self.seed = network.seed
        self.origin_ms = origin_ms
        self.bad_fraction = bad_fraction
        # station index -> (bucket, accumulated mm at the start of that bucket)
        self._precip_cache: dict[int, tuple[int, float]] = {}

    # -- public ---------------------------------------------------------------------------

    def report(self, station: Station, t_ms: int) -> dict[str, float]:
        """All variables of ``station`` at ``t_ms`` (epoch ms), bad values included."""
        if station.kind == "tapis":
            values = self._tapis(station, t_ms)
        else:
            values = self._mesonet(station, t_ms)
        return self._inject_bad(station, t_ms, values)

    def clean_report(self, station: Station, t_ms: int) -> dict[str, float]:
        """Like :meth:`report` without injected bad values."""
        if station.kind == "tapis":
            return self._tapis(station, t_ms)
        return self._mesonet(station, t_ms)

    # -- internals ------------------------------------------------------------------------

    def _air_temp(self, station: Station, t_ms: int) -> float:
        c = station.climate
        doy = _day_of_year(t_ms)
        seasonal = c.seasonal_amp * math.cos(2.0 * math.pi * (doy - 200.0) / 365.2425)
        mean = c.mean_temp_sl + seasonal - 6.5 * station.elevation / 1000.0
        h = solar_hour(station.lon, t_ms)
        diurnal = c.diurnal_amp * math.cos(2.0 * math.pi * (h - 15.0) / 24.0)
        weather = 3.0 * _noise(self.seed, _CH_WEATHER, station.index, t_ms, 36 * MS_PER_HOUR)
        jitter = 0.3 * _noise(self.seed, _CH_JITTER_T, station.index, t_ms, 600_000)
        return mean + diurnal + weather + jitter

    def _mesonet(self, station: Station, t_ms: int) -> dict[str, float]:
        seed, idx, c = self.seed, station.index, station.climate
        temp = self._air_temp(station, t_ms)
        # Dew point varies slowly, so RH falls as the temperature rises during the day.
        doy = _day_of_year(t_ms)
        seasonal = c.seasonal_amp * math.cos(2.0 * math.pi * (doy - 200.0) / 365.2425)
        daily_mean = c.mean_temp_sl + seasonal - 6.5 * station.elevation / 1000.0
        dew = daily_mean - c.dew_depression
        dew += 3.0 * _noise(seed, _CH_DEW, idx, t_ms, 48 * MS_PER_HOUR)
        dew = min(dew, temp)
        rh = 100.0 * math.exp(17.625 * dew / (243.04 + dew) - 17.625 * temp / (243.04 + temp))
        rh = min(100.0, max(2.0, rh))

        h = solar_hour(station.lon, t_ms)
        afternoon = 0.5 + 0.5 * math.cos(2.0 * math.pi * (h - 15.0) / 24.0)
        gustiness = 0.5 + 0.5 * _noise(seed, _CH_WIND, idx, t_ms, 12 * MS_PER_HOUR)
        speed = c.wind_base * (0.4 + 1.0 * afternoon) * (0.5 + gustiness)
        speed += 0.6 * _noise(seed, _CH_WIND_J, idx, t_ms, 300_000)
        speed = max(0.0, speed)
        gust = speed * (1.15 + 0.5 * _unit(seed, _CH_GUST, idx, t_ms)) + 0.3 * afternoon

        p0 = station_pressure(station.elevation)
        synoptic = 1200.0 * _noise(seed, _CH_PRES, idx, t_ms, 72 * MS_PER_HOUR)
        tide = 100.0 * math.cos(4.0 * math.pi * (h - 10.0) / 24.0)
        pressure = p0 + synoptic + tide

        return {
            "air_temp": round(temp, 2),
            "relative_humidity": round(rh, 1),
            "wind_speed": round(speed, 2),
            "wind_gust": round(max(gust, speed), 2),
            "pressure": round(pressure, 0),
            "precip_accum": round(self._precip_accum(station, t_ms), 2),
        }

    def _tapis(self, station: Station, t_ms: int) -> dict[str, float]:
        temp = self._air_temp(station, t_ms)
        rate = self._rain_rate(station, t_ms // 600_000)  # mm/h over this 10-min bucket
        rain = 0.0
        if rate > 0.0:
            rain = rate / 60.0 * (0.5 + _unit(self.seed, _CH_TAPIS_RAIN, station.index, t_ms))
        return {"temperature": round(temp, 2), "rainfall": round(rain, 2)}

    _BUCKET_MS: Final = 600_000  # rain rates are constant over 10-minute buckets

    def _rain_rate(self, station: Station, bucket: int) -> float:
        """Rain rate in mm/h during ``bucket`` (rain comes in spells lasting hours)."""
        centre = bucket * self._BUCKET_MS + self._BUCKET_MS // 2
        n = _noise(self.seed, _CH_RAIN, station.index, centre, 8 * MS_PER_HOUR)
        u = 0.5 + 0.5 * n
        thr = station.climate.rain_threshold
        if u <= thr:
            return 0.0
        return 4.0 * (u - thr) / (1.0 - thr)

    def _precip_accum(self, station: Station, t_ms: int) -> float:
        if self.origin_ms is None:
            self.origin_ms = t_ms - t_ms % MS_PER_DAY
        if t_ms <= self.origin_ms:
            return 0.0
        bmax = t_ms // self._BUCKET_MS
        b0 = self.origin_ms // self._BUCKET_MS
        cached = self._precip_cache.get(station.index)
        if cached is not None and cached[0] <= bmax:
            b, acc = cached
        else:
            b, acc = b0, 0.0
        while b < bmax:
            start = max(b * self._BUCKET_MS, self.origin_ms)
            end = (b + 1) * self._BUCKET_MS
            acc += self._rain_rate(station, b) * (end - start) / MS_PER_HOUR
            b += 1
        self._precip_cache[station.index] = (b, acc)
        start = max(bmax * self._BUCKET_MS, self.origin_ms)
        return acc + self._rain_rate(station, bmax) * (t_ms - start) / MS_PER_HOUR

    def _inject_bad(
        self, station: Station, t_ms: int, values: dict[str, float]
    ) -> dict[str, float]:
        if self.bad_fraction <= 0.0:
            return values
        eligible = [v for v in values if v in _BAD_VALUES]
        if not eligible:
            return values
        # spread the overall fraction over the variables that can be bad
        p = self.bad_fraction * len(values) / len(eligible)
        for n, var in enumerate(eligible):
            if _unit(self.seed, _CH_BAD, station.index, t_ms, n) < p:
                choices = _BAD_VALUES[var]
                k = _hash(self.seed, _CH_BAD_KIND, station.index, t_ms, n) % len(choices)
                values[var] = choices[k]
        return values


# --------------------------------------------------------------------------------------------
# Scheduling
# --------------------------------------------------------------------------------------------


class Observation(TypedDict):
    device: str
    variable: str
    time: int
    value: float


class Scheduler:
    """Turns elapsed time into batches of observations paced to ``rate`` per second.

    Stations report round-robin; a report carries all the station's variables at one time.
    Report times are spread over the interval since the previous batch, and each station's
    times are strictly increasing (at least 1 ms apart). A station never reports more than
    ``max_lead_ms`` ahead of ``now_ms``; reports that would have to are skipped (so at very
    high rates per station the achieved rate is capped at about 1000 reports/s/station).
    Backlog older than ``max_backlog_s`` is dropped instead of being sent in a burst.
    """

    def __init__(
        self,
        network: Network,
        generator: ValueGenerator,
        rate: float,
        *,
        max_lead_ms: int = 1000,
        max_backlog_s: float = 2.0,
        max_batch: int = 20_000,
    ) -> None:
        if not rate > 0.0 or not math.isfinite(rate):
            raise ValueError("rate must be a positive number")
        if not network.stations:
            raise ValueError("network has no stations")
        self.network = network
        self.generator = generator
        self.rate = rate
        self.max_lead_ms = max_lead_ms
        self.max_backlog_s = max_backlog_s
        self.max_batch = max(max_batch, max(len(s.variables) for s in network.stations))
        self.planned = 0  # observations accounted for (sent or skipped)
        self.skipped = 0  # observations skipped because of max_lead_ms
        self.dropped = 0  # observations dropped as too-old backlog
        self._next = 0
        self._last_time: dict[int, int] = {}
        self._prev_now_ms: int | None = None

    def target(self, elapsed_s: float) -> int:
        return int(self.rate * elapsed_s)

    def next_batch(self, elapsed_s: float, now_ms: int) -> list[Observation]:
        """Observations due by ``elapsed_s`` seconds after the start; ``now_ms`` is wall time."""
        target = self.target(elapsed_s)
        backlog_cap = max(1, int(self.rate * self.max_backlog_s))
        if target - self.planned > backlog_cap:
            self.dropped += target - self.planned - backlog_cap
            self.planned = target - backlog_cap
        stations = self.network.stations
        chosen: list[Station] = []
        budget = 0
        while self.planned + budget < target:
            st = stations[self._next]
            if chosen and budget + len(st.variables) > self.max_batch:
                break
            chosen.append(st)
            budget += len(st.variables)
            self._next = (self._next + 1) % len(stations)
        self.planned += budget

        prev = self._prev_now_ms if self._prev_now_ms is not None else now_ms
        prev = min(prev, now_ms)
        self._prev_now_ms = max(now_ms, self._prev_now_ms or now_ms)
        out: list[Observation] = []
        k = len(chosen)
        for i, st in enumerate(chosen):
            t = prev + (now_ms - prev) * (i + 1) // k
            last = self._last_time.get(st.index)
            if last is not None and t <= last:
                t = last + 1
            if t > now_ms + self.max_lead_ms:
                self.skipped += len(st.variables)
                continue
            self._last_time[st.index] = t
            for var, value in self.generator.report(st, t).items():
                out.append({"device": st.device_id, "variable": var, "time": t, "value": value})
        return out
