"""The variable catalog: entries, limits, and entry_for for known and unknown names."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.units import (
    ENGLISH,
    KINDS,
    METRIC,
    compatible,
    convert_value,
    entry_for,
    parse_units,
    target_unit,
    validate_unit,
)
from streamgauge.domain.catalog import CATALOG, Entry, lookup
from streamgauge.domain.errors import Invalid, StreamgaugeError

REQUIRED = [
    "air_temp",
    "dew_point_temperature",
    "relative_humidity",
    "wind_speed",
    "wind_direction",
    "wind_gust",
    "pressure",
    "sea_level_pressure",
    "altimeter",
    "precip_accum",
    "precip_accum_one_hour",
    "snow_depth",
    "solar_radiation",
    "soil_temp",
    "temperature",
    "humidity",
    "co2",
    "touch",
    "objectPresent",
    "waterPresent",
    "proximity",
    "rainfall",
]

KNOWN_KINDS = set(KINDS) | {
    "direction",
    "fraction",
    "irradiance",
    "concentration",
    "count",
    "state",
}

ENTRIES = list(CATALOG.values())


def test_required_names_present() -> None:
    missing = [name for name in REQUIRED if name not in CATALOG]
    assert missing == []


def test_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        CATALOG["x"] = CATALOG["air_temp"]  # type: ignore[index]


def test_entry_is_frozen_and_slotted() -> None:
    entry = CATALOG["air_temp"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.min = 0.0  # type: ignore[misc]
    assert not hasattr(entry, "__dict__")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_is_well_formed(entry: Entry) -> None:
    assert CATALOG[entry.name] is entry
    assert entry.long_name
    assert entry.kind in KNOWN_KINDS
    # canonical unit is pint-valid and already in normalized-compatible form
    validate_unit(entry.unit)
    if entry.min is not None and entry.max is not None:
        assert entry.min < entry.max
    for limit in (entry.min, entry.max):
        assert limit is None or math.isfinite(limit)
    assert entry.max_rate is None or entry.max_rate > 0
    assert entry.max_persist_s is None or entry.max_persist_s >= 3600


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_convertible_kinds_match_the_unit_systems(entry: Entry) -> None:
    """Kinds a units spec can override: canonical is the metric unit, and every override works."""
    if entry.kind not in KINDS:
        assert target_unit(ENGLISH, entry.kind, entry.unit) == entry.unit
        return
    assert target_unit(METRIC, entry.kind, entry.unit) == entry.unit
    english = target_unit(ENGLISH, entry.kind, entry.unit)
    assert english == ENGLISH.unit_for(entry.kind)
    assert compatible(entry.unit, english)
    # limits convert into any chosen unit
    if entry.min is not None and entry.max is not None:
        lo = convert_value(entry.min, entry.unit, english)
        hi = convert_value(entry.max, entry.unit, english)
        assert lo < hi


def test_state_and_count_quantities_have_no_limits() -> None:
    for name in ("touch", "objectPresent", "waterPresent", "proximity"):
        entry = CATALOG[name]
        assert entry.kind in {"state", "count"}
        assert (entry.min, entry.max, entry.max_rate, entry.max_persist_s) == (None,) * 4


def limits(name: str) -> tuple[float, float]:
    entry = CATALOG[name]
    assert entry.min is not None and entry.max is not None
    return entry.min, entry.max


def test_realistic_limits() -> None:
    assert (CATALOG["air_temp"].min, CATALOG["air_temp"].max) == (-90.0, 65.0)
    assert (CATALOG["relative_humidity"].min, CATALOG["relative_humidity"].max) == (0.0, 100.0)
    assert (CATALOG["wind_speed"].min, CATALOG["wind_speed"].max) == (0.0, 120.0)
    assert (CATALOG["pressure"].min, CATALOG["pressure"].max) == (30000.0, 110000.0)
    for name in ("altimeter", "sea_level_pressure"):
        assert (CATALOG[name].min, CATALOG[name].max) == (85000.0, 110000.0)
    assert CATALOG["wind_direction"].max == 360.0
    assert CATALOG["rainfall"].unit == "mm"
    assert CATALOG["co2"].unit == "ppm"
    # the world's records sit inside the limits
    assert limits("air_temp")[0] < -89.2 and limits("air_temp")[1] > 56.7
    lo, hi = limits("sea_level_pressure")
    assert lo < 87000 < 108400 < hi
    assert limits("wind_gust")[1] > 113


def test_no_rate_or_persistence_checks_where_jumps_or_runs_are_normal() -> None:
    for name in ("precip_accum", "precip_accum_one_hour", "snow_depth", "rainfall"):
        assert CATALOG[name].max_rate is None
        assert CATALOG[name].max_persist_s is None
    assert CATALOG["wind_direction"].max_rate is None  # wraps at 360
    assert CATALOG["solar_radiation"].max_persist_s is None  # night
    assert CATALOG["air_temp"].max_rate is not None
    assert CATALOG["air_temp"].max_persist_s is not None


def test_lookup() -> None:
    assert lookup("air_temp") is CATALOG["air_temp"]
    assert lookup("no_such_thing") is None
    assert lookup("") is None
    assert lookup("AIR_TEMP") is None  # names are case-sensitive


# --- entry_for ----------------------------------------------------------------------------


def test_entry_for_known_without_unit() -> None:
    assert entry_for("air_temp", None) is CATALOG["air_temp"]


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("air_temp", "degC"),
        ("air_temp", "degF"),
        ("air_temp", "K"),
        ("wind_speed", "mph"),
        ("wind_speed", "knot"),
        ("pressure", "hPa"),
        ("altimeter", "inHg"),
        ("precip_accum", "in"),
        ("relative_humidity", "percent"),
        ("co2", "%"),
        ("wind_direction", "radian"),
        ("touch", "count"),
        ("objectPresent", "dimensionless"),
    ],
)
def test_entry_for_known_with_convertible_unit(name: str, unit: str) -> None:
    assert entry_for(name, unit) is CATALOG[name]


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("air_temp", "m/s"),
        ("air_temp", "banana"),
        ("wind_speed", "Pa"),
        ("wind_direction", "%"),  # pint calls both dimensionless; we do not
        ("relative_humidity", "degree"),
        ("touch", "%"),
        ("precip_accum", "mm/h"),
        ("air_temp", ""),
    ],
)
def test_entry_for_known_with_wrong_unit(name: str, unit: str) -> None:
    with pytest.raises(Invalid) as info:
        entry_for(name, unit)
    assert [d["field"] for d in info.value.details] == ["unit"]


@pytest.mark.parametrize(
    ("unit", "normalized", "kind"),
    [
        ("degF", "degF", "temp"),
        ("kelvin", "K", "temp"),
        ("furlongs/fortnight", "fur/fortnight", "speed"),
        ("psi", "psi", "pres"),
        ("ft", "ft", "height"),
        ("m", "m", "height"),
        ("V", "V", "other"),
        ("%", "%", "other"),
        ("ug/m**3", validate_unit("ug/m**3"), "other"),
    ],
)
def test_entry_for_unknown_name(unit: str, normalized: str, kind: str) -> None:
    entry = entry_for("my_sensor", unit)
    assert entry == Entry(name="my_sensor", long_name="my_sensor", unit=normalized, kind=kind)
    assert (entry.min, entry.max, entry.max_rate, entry.max_persist_s) == (None,) * 4
    assert "my_sensor" not in CATALOG


def test_entry_for_unknown_kinds_follow_unit_systems() -> None:
    entry = entry_for("stage", "ft")
    assert target_unit(parse_units(None), entry.kind, entry.unit) == "m"
    assert target_unit(parse_units("height|ft"), entry.kind, entry.unit) == "ft"


@pytest.mark.parametrize("unit", [None, "", "   "])
def test_entry_for_unknown_name_requires_unit(unit: str | None) -> None:
    with pytest.raises(Invalid) as info:
        entry_for("my_sensor", unit)
    assert info.value.details[0]["field"] == "unit"
    assert "my_sensor" in info.value.message


def test_entry_for_unknown_name_rejects_bad_unit() -> None:
    with pytest.raises(Invalid) as info:
        entry_for("my_sensor", "banana")
    assert info.value.details[0]["field"] == "unit"
    assert "banana" in info.value.details[0]["reason"]


def test_entry_for_empty_name() -> None:
    with pytest.raises(Invalid) as info:
        entry_for("", "m")
    assert info.value.details[0]["field"] == "name"


@given(st.text(max_size=20), st.none() | st.text(max_size=20))
def test_entry_for_raises_only_invalid(name: str, unit: str | None) -> None:
    try:
        entry = entry_for(name, unit)
    except Invalid:
        return
    except StreamgaugeError as err:  # pragma: no cover - would be a bug
        raise AssertionError(f"unexpected {type(err).__name__}") from err
    assert entry.name == name
    validate_unit(entry.unit)
