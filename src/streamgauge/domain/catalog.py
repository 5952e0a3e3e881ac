"""The variable catalog: canonical unit, quantity kind and QC limits per variable name.

Pure data plus two lookups. Values are stored in the canonical unit (metric/SI, as Synoptic
does) and converted on output according to the subscriber's ``units`` (see
:mod:`streamgauge.core.units`); ``kind`` is what a ``quantity|unit`` override applies to.

QC fields (all in the canonical unit):

* ``min``/``max`` - ``sl_range_check`` limits (either may be None: no limit on that side);
* ``max_rate`` - largest plausible ``|change|`` per second for ``sl_rate_check``; None where
  jumps are legitimate (accumulators that reset, directions that wrap, gusts, irradiance under
  passing clouds);
* ``max_persist_s`` - longest plausible time a value stays exactly unchanged, for
  ``sl_pers_check``; None where long constant runs are normal (no rain for weeks, zero snow,
  night-time irradiance, indoor and state sensors).

The limits are deliberately generous: a range or rate failure removes data from feeds by
default, so they catch broken sensors, not unusual weather.

Names include Synoptic's common variables, the Disruptive Technologies event quantities
(``temperature``, ``humidity``, ``co2``, ``touch``, ``objectPresent``, ...; DT reports pressure in
hPa, which a connector converts into the catalog's ``pressure`` in Pa) and the Tapis tutorial's
``rainfall``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["CATALOG", "Entry", "lookup"]

HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    long_name: str
    unit: str
    kind: str
    min: float | None = None
    max: float | None = None
    max_rate: float | None = None
    max_persist_s: float | None = None


_ENTRIES: tuple[Entry, ...] = (
    # --- Synoptic common variables --------------------------------------------------------
    Entry("air_temp", "Temperature", "degC", "temp", -90.0, 65.0, 0.1, 12 * HOUR),
    Entry("dew_point_temperature", "Dew Point", "degC", "temp", -100.0, 40.0, 0.1, 12 * HOUR),
    # RH sits at 100 % through long fog, hence two days.
    Entry("relative_humidity", "Relative Humidity", "%", "fraction", 0.0, 100.0, 1.0, 2 * DAY),
    # A stuck anemometer reads a constant; a day of dead calm is implausible.
    Entry("wind_speed", "Wind Speed", "m/s", "speed", 0.0, 120.0, 2.0, DAY),
    Entry("wind_direction", "Wind Direction", "degree", "direction", 0.0, 360.0, None, DAY),
    Entry("wind_gust", "Wind Gust", "m/s", "speed", 0.0, 120.0, None, None),
    Entry("peak_wind_speed", "Peak Wind Speed", "m/s", "speed", 0.0, 120.0, None, None),
    # Station pressure: high plateaus and mountain tops go far below sea-level values.
    Entry("pressure", "Pressure", "Pa", "pres", 30000.0, 110000.0, 5.0, 12 * HOUR),
    Entry(
        "sea_level_pressure", "Sea level pressure", "Pa", "pres", 85000.0, 110000.0, 5.0, 12 * HOUR
    ),
    Entry("altimeter", "Altimeter", "Pa", "alti", 85000.0, 110000.0, 5.0, 12 * HOUR),
    # Accumulators reset, and stay constant through dry spells: no rate or persistence check.
    Entry("precip_accum", "Precipitation accumulated", "mm", "precip", 0.0, 50000.0),
    Entry("precip_accum_one_hour", "Precipitation one hour", "mm", "precip", 0.0, 400.0),
    # Snow depth converts like precipitation (mm / cm / in), as in Synoptic's output.
    Entry("snow_depth", "Snow depth", "mm", "precip", 0.0, 12000.0),
    Entry("solar_radiation", "Solar Radiation", "W/m**2", "irradiance", 0.0, 1800.0),
    Entry("soil_temp", "Soil Temperature", "degC", "temp", -60.0, 80.0, 0.05, 7 * DAY),
    Entry("water_level", "Water Level", "m", "height"),
    # --- Disruptive Technologies event quantities -----------------------------------------
    # Indoor / cold-chain sensors hold steady legitimately: no persistence checks.
    Entry("temperature", "Temperature", "degC", "temp", -40.0, 85.0, 0.1),
    Entry("humidity", "Relative Humidity", "%", "fraction", 0.0, 100.0, 1.0),
    Entry("co2", "CO2 Concentration", "ppm", "concentration", 0.0, 10000.0),
    Entry("touch", "Touch", "count", "count"),
    Entry("touchCount", "Touch Count", "count", "count"),
    Entry("objectPresent", "Object Present", "dimensionless", "state"),
    Entry("objectPresentCount", "Object Present Count", "count", "count"),
    Entry("proximity", "Proximity", "dimensionless", "state"),
    Entry("waterPresent", "Water Present", "dimensionless", "state"),
    Entry("motion", "Motion", "dimensionless", "state"),
    Entry("contact", "Contact", "dimensionless", "state"),
    Entry("batteryStatus", "Battery", "%", "fraction", 0.0, 100.0),
    # --- Tapis tutorial -------------------------------------------------------------------
    # The reporting interval is unknown, so only the lower bound is checked.
    Entry("rainfall", "Rainfall", "mm", "precip", 0.0, None),
)

CATALOG: Mapping[str, Entry] = MappingProxyType({e.name: e for e in _ENTRIES})


def lookup(name: str) -> Entry | None:
    """The catalog entry for ``name``, or None if the name is not catalogued."""
    return CATALOG.get(name)
