"""Units: validation, Synoptic unit-system parsing, affine conversion and labels."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgauge.core.units import (
    ENGLISH,
    KINDS,
    MAX_UNIT_EXPONENT,
    METRIC,
    UnitSystem,
    compatible,
    convert,
    convert_value,
    converter,
    describe,
    kind_of_unit,
    parse_units,
    target_unit,
    to_canonical,
    unit_label,
    validate_unit,
)
from streamgauge.domain.errors import BadRequest, Invalid, StreamgaugeError

METRIC_MAP = {
    "temp": "degC",
    "speed": "m/s",
    "pres": "Pa",
    "alti": "Pa",
    "precip": "mm",
    "height": "m",
}
ENGLISH_MAP = {
    "temp": "degF",
    "speed": "mph",
    "pres": "inHg",
    "alti": "inHg",
    "precip": "in",
    "height": "ft",
}


def as_map(system: UnitSystem) -> dict[str, str]:
    return dict(system.units)


# --- validate_unit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("degC", "degC"),
        ("degree_Celsius", "degC"),
        ("degF", "degF"),
        ("K", "K"),
        ("kelvin", "K"),
        ("%", "%"),
        ("percent", "%"),
        ("m/s", "m/s"),
        ("meter / second", "m/s"),
        ("  m/s  ", "m/s"),
        ("km/h", "km/h"),
        ("mph", "mph"),
        ("knot", "kn"),
        ("degree", "deg"),
        ("Pa", "Pa"),
        ("hPa", "hPa"),
        ("mbar", "mbar"),
        ("inHg", "inHg"),
        ("mm", "mm"),
        ("W/m**2", "W/m**2"),
        ("ppm", "ppm"),
        ("count", "count"),
        ("dimensionless", "dimensionless"),
        ("V", "V"),
        ("lux", "lx"),
        ("furlongs/fortnight", "fur/fortnight"),
    ],
)
def test_validate_unit_accepts_and_normalizes(text: str, normalized: str) -> None:
    assert validate_unit(text) == normalized
    # the normalized form is itself valid and stable
    assert validate_unit(normalized) == normalized


@pytest.mark.parametrize(
    "text",
    [
        "banana",
        "",
        "   ",
        "m/",
        "1/0",
        "m**x",
        "3 m",
        "__class__",
        "m s-1",
        "x" * 500,
        "import os",
        "degC)",
    ],
)
def test_validate_unit_rejects_junk(text: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_unit(text)
    assert info.value.details
    assert all(d["field"] == "unit" and d["reason"] for d in info.value.details)


def test_validate_unit_names_the_unknown_unit() -> None:
    with pytest.raises(Invalid) as info:
        validate_unit("banana")
    assert "banana" in info.value.details[0]["reason"]
    assert info.value.status == 422


@given(st.text(max_size=40))
def test_validate_unit_only_raises_invalid(text: str) -> None:
    try:
        out = validate_unit(text)
    except Invalid:
        return
    assert validate_unit(out) == out


# --- compatibility and kinds --------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "ok"),
    [
        ("degC", "degF", True),
        ("degC", "K", True),
        ("m/s", "knot", True),
        ("Pa", "inHg", True),
        ("mm", "in", True),
        ("%", "ppm", True),
        ("%", "dimensionless", True),
        ("degree", "radian", True),
        ("%", "degree", False),
        ("count", "%", False),
        ("count", "degree", False),
        ("degC", "m/s", False),
        ("Pa", "mm", False),
    ],
)
def test_compatible(a: str, b: str, ok: bool) -> None:
    assert compatible(a, b) is ok
    assert compatible(b, a) is ok


@pytest.mark.parametrize(
    ("unit", "kind"),
    [
        ("degF", "temp"),
        ("K", "temp"),
        ("mph", "speed"),
        ("furlongs/fortnight", "speed"),
        ("psi", "pres"),
        ("ft", "height"),
        ("mm", "height"),
        ("%", "other"),
        ("W/m**2", "other"),
        ("V", "other"),
    ],
)
def test_kind_of_unit(unit: str, kind: str) -> None:
    assert kind_of_unit(unit) == kind


# --- parse_units --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, "", "metric", "METRIC", " Metric ", "english,metric", ","])
def test_metric_spellings(spec: str | None) -> None:
    system = parse_units(spec)
    assert system == METRIC
    assert as_map(system) == METRIC_MAP


@pytest.mark.parametrize("spec", ["english", "ENGLISH", "English", "metric,english"])
def test_english_spellings(spec: str) -> None:
    system = parse_units(spec)
    assert system == ENGLISH
    assert as_map(system) == ENGLISH_MAP


def test_systems_cover_every_kind_in_order() -> None:
    assert [k for k, _ in METRIC.units] == list(KINDS)
    assert [k for k, _ in ENGLISH.units] == list(KINDS)


OVERRIDES = [
    ("temp|c", "temp", "degC"),
    ("temp|f", "temp", "degF"),
    ("temp|F", "temp", "degF"),
    ("temp|k", "temp", "K"),
    ("speed|mps", "speed", "m/s"),
    ("speed|ms", "speed", "m/s"),
    ("speed|m/s", "speed", "m/s"),
    ("speed|mph", "speed", "mph"),
    ("speed|kph", "speed", "km/h"),
    ("speed|kmh", "speed", "km/h"),
    ("speed|km/h", "speed", "km/h"),
    ("speed|kts", "speed", "knot"),
    ("speed|kt", "speed", "knot"),
    ("speed|knots", "speed", "knot"),
    ("wind|ms", "speed", "m/s"),
    ("wind|mph", "speed", "mph"),
    ("wind|kts", "speed", "knot"),
    ("pres|pa", "pres", "Pa"),
    ("pres|hpa", "pres", "hPa"),
    ("pres|mb", "pres", "mbar"),
    ("pres|inhg", "pres", "inHg"),
    ("pres|inHg", "pres", "inHg"),
    ("alti|pa", "alti", "Pa"),
    ("alti|mb", "alti", "mbar"),
    ("alti|inhg", "alti", "inHg"),
    ("precip|mm", "precip", "mm"),
    ("precip|cm", "precip", "cm"),
    ("precip|in", "precip", "in"),
    ("height|m", "height", "m"),
    ("height|ft", "height", "ft"),
    (" TEMP | F ", "temp", "degF"),
]


@pytest.mark.parametrize(("spec", "kind", "unit"), OVERRIDES)
def test_each_override(spec: str, kind: str, unit: str) -> None:
    system = parse_units(spec)
    assert system.unit_for(kind) == unit
    # everything else stays metric
    for other, metric in METRIC_MAP.items():
        if other != kind:
            assert system.unit_for(other) == metric
    # every override unit is a real pint unit convertible from the metric one
    assert compatible(METRIC_MAP[kind], unit)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("english,speed|kts", ENGLISH_MAP | {"speed": "knot"}),
        ("english,speed|mph,temp|F", ENGLISH_MAP),
        ("temp|f,wind|ms", METRIC_MAP | {"temp": "degF"}),
        (
            "temp|f,speed|mph,precip|in,alti|inhg",
            METRIC_MAP | {"temp": "degF", "speed": "mph", "precip": "in", "alti": "inHg"},
        ),
        (
            "temp|f,speed|mph,precip|in,alti|inhg,pres|mb,height|ft",
            ENGLISH_MAP | {"pres": "mbar"},
        ),
        ("speed|kts,english", ENGLISH_MAP),  # later entries win
        ("english,metric,temp|k", METRIC_MAP | {"temp": "K"}),
        ("temp|f,temp|c", METRIC_MAP),
        ("english,,speed|kts,", ENGLISH_MAP | {"speed": "knot"}),
    ],
)
def test_mixed_specs(spec: str, expected: dict[str, str]) -> None:
    assert as_map(parse_units(spec)) == expected


def test_unit_system_is_hashable_and_comparable() -> None:
    assert hash(parse_units("english")) == hash(parse_units("English"))
    assert parse_units("english,speed|kts") != ENGLISH
    assert parse_units("temp|x".replace("x", "c")).unit_for("nope") is None


@pytest.mark.parametrize(
    ("spec", "index", "needle"),
    [
        ("speed|furlong", 0, "furlong"),
        ("english,speed|furlong", 1, "furlong"),
        ("imperial", 0, "imperial"),
        ("temp|f,banana|f", 1, "banana"),
        ("temp|c,temp|r", 1, "'r'"),
        ("pres|kpa", 0, "kpa"),
        ("precip|ft", 0, "ft"),
        ("height|in", 0, "in"),
        ("alti|", 0, "''"),
        ("|f", 0, "''"),
        ("temp|f|c", 0, "f|c"),
        ("metric,english,temp|fahrenheit", 2, "fahrenheit"),
    ],
)
def test_bad_parts_are_named(spec: str, index: int, needle: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_units(spec)
    err = info.value
    assert err.status == 400
    assert not isinstance(err, Invalid)
    bad_part = spec.split(",")[index].strip()
    (detail,) = err.details
    assert detail["field"] == "units"
    assert detail["index"] == index
    assert bad_part in detail["reason"]
    assert needle in detail["reason"]
    assert f"part {index}" in err.message
    assert bad_part in err.message


def test_bad_unit_reason_mentions_kind_and_choices() -> None:
    with pytest.raises(BadRequest) as info:
        parse_units("speed|furlong")
    reason = info.value.details[0]["reason"]
    assert "unknown unit 'furlong' for speed" in reason
    assert "'speed|furlong'" in reason
    assert "mph" in reason


@given(st.text(max_size=60))
def test_parse_units_arbitrary_text_raises_only_streamgauge_errors(spec: str) -> None:
    try:
        system = parse_units(spec)
    except StreamgaugeError as err:
        assert isinstance(err, BadRequest)
        assert err.details and err.details[0]["field"] == "units"
        return
    assert [k for k, _ in system.units] == list(KINDS)


_part = st.one_of(
    st.sampled_from(["metric", "english", "Metric", "ENGLISH", ""]),
    st.sampled_from([spec for spec, _, _ in OVERRIDES]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz|/ ", max_size=12),
)


@given(st.lists(_part, max_size=8))
def test_parse_units_structured_specs(parts: list[str]) -> None:
    spec = ",".join(parts)
    try:
        system = parse_units(spec)
    except BadRequest as err:
        index = err.details[0]["index"]
        assert parts[index].strip() in err.details[0]["reason"]
        # every part before the bad one parses on its own
        for earlier in parts[:index]:
            parse_units(earlier)
        return
    for kind, unit in system.units:
        assert compatible(METRIC_MAP[kind], unit)


# --- target_unit and describe -------------------------------------------------------------


def test_target_unit() -> None:
    english = parse_units("english")
    assert target_unit(english, "temp", "degC") == "degF"
    assert target_unit(english, "speed", "m/s") == "mph"
    assert target_unit(english, "pres", "Pa") == "inHg"
    assert target_unit(english, "precip", "mm") == "in"
    # kinds outside the table keep the canonical unit
    assert target_unit(english, "direction", "degree") == "degree"
    assert target_unit(english, "fraction", "%") == "%"
    assert target_unit(english, "other", "V") == "V"
    # metric is the canonical unit for catalog-style metric variables
    assert target_unit(METRIC, "temp", "degC") == "degC"
    # ... and converts user variables kept in non-metric units
    assert target_unit(METRIC, "temp", "degF") == "degC"
    assert target_unit(METRIC, "speed", "furlong/fortnight") == "m/s"
    # a mislabelled kind whose unit cannot convert keeps its canonical unit
    assert target_unit(english, "temp", "m/s") == "m/s"


def test_describe() -> None:
    assert describe(METRIC) == {
        "temp": "Celsius",
        "speed": "m/s",
        "pres": "Pascals",
        "alti": "Pascals",
        "precip": "Millimeters",
        "height": "Meters",
    }
    assert describe(ENGLISH) == {
        "temp": "Fahrenheit",
        "speed": "mph",
        "pres": "INHG",
        "alti": "INHG",
        "precip": "Inches",
        "height": "Feet",
    }
    assert describe(parse_units("english,speed|kts,pres|mb,temp|k")) == {
        "temp": "Kelvin",
        "speed": "knots",
        "pres": "Millibars",
        "alti": "INHG",
        "precip": "Inches",
        "height": "Feet",
    }


@pytest.mark.parametrize(
    ("unit", "label"),
    [
        ("degC", "Celsius"),
        ("degree_Celsius", "Celsius"),
        ("degF", "Fahrenheit"),
        ("K", "Kelvin"),
        ("m/s", "m/s"),
        ("meter/second", "m/s"),
        ("mph", "mph"),
        ("km/h", "km/h"),
        ("knot", "knots"),
        ("Pa", "Pascals"),
        ("hPa", "Hectopascals"),
        ("mbar", "Millibars"),
        ("inHg", "INHG"),
        ("mm", "Millimeters"),
        ("cm", "Centimeters"),
        ("in", "Inches"),
        ("m", "Meters"),
        ("ft", "Feet"),
        ("%", "%"),
        ("degree", "Degrees"),
        ("W/m**2", "W/m**2"),
        ("ppm", "ppm"),
        ("furlongs/fortnight", "fur/fortnight"),
        ("count", "count"),
        ("banana", "banana"),
    ],
)
def test_unit_label(unit: str, label: str) -> None:
    assert unit_label(unit) == label


def test_a_spelling_of_the_label_table_gets_the_label_parsing_it_would_give() -> None:
    """``unit_label`` answers a spelling of its table without parsing it (no pint registry at
    a server's start): the same label as the parsed, normalized unit's."""
    from streamgauge.core.units import _LABELS, _labels_by_unit

    for unit, label in _LABELS.items():
        assert _labels_by_unit()[validate_unit(unit)] == label
        assert unit_label(unit) == label


def test_every_system_unit_has_a_label() -> None:
    for spec, kind, _ in OVERRIDES:
        unit = parse_units(spec).unit_for(kind)
        assert unit is not None
        assert unit_label(unit) != validate_unit(unit) or unit in {"m/s", "mph", "km/h"}


# --- conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (0.0, "degC", "degF", 32.0),
        (100.0, "degC", "degF", 212.0),
        (-40.0, "degC", "degF", -40.0),
        (0.0, "degC", "K", 273.15),
        (10.0, "m/s", "mph", 22.3694),
        (10.0, "m/s", "knot", 19.4384),
        (10.0, "m/s", "km/h", 36.0),
        (101325.0, "Pa", "mbar", 1013.25),
        (101325.0, "Pa", "hPa", 1013.25),
        (101325.0, "Pa", "inHg", 29.9213),
        (25.4, "mm", "in", 1.0),
        (25.4, "mm", "cm", 2.54),
        (0.3048, "m", "ft", 1.0),
        (50.0, "%", "ppm", 500000.0),
    ],
)
def test_known_values(value: float, source: str, target: str, expected: float) -> None:
    assert convert_value(value, source, target) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    out = convert(np.array([value]), source, target)
    assert out.dtype == np.float64
    assert out[0] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    back = to_canonical(out, target, source)
    assert back[0] == pytest.approx(value, rel=1e-9, abs=1e-9)


def test_converter_is_affine_and_cached() -> None:
    scale, offset = converter("degC", "degF")
    assert scale == pytest.approx(1.8, rel=1e-12)
    assert offset == pytest.approx(32.0, rel=1e-12)
    assert converter("degC", "degF") is converter("degC", "degF")
    assert converter("m/s", "m/s") == (1.0, 0.0)
    assert converter("m/s", "meter/second") == (1.0, 0.0)
    assert converter("mph", "m/s")[1] == 0.0


def test_convert_keeps_nan_and_shape() -> None:
    values = np.array([[0.0, math.nan], [100.0, -40.0]])
    out = convert(values, "degC", "degF")
    assert out.shape == (2, 2)
    assert math.isnan(out[0, 1])
    np.testing.assert_allclose(out[~np.isnan(out)], [32.0, 212.0, -40.0])


def test_convert_identity_and_lists() -> None:
    values = np.array([1.0, 2.0])
    assert convert(values, "mm", "mm") is values
    np.testing.assert_allclose(convert([1, 2], "in", "mm"), [25.4, 50.8])
    assert convert([], "degC", "degF").shape == (0,)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("degC", "m/s"),
        ("%", "degree"),
        ("count", "dimensionless"),
        ("banana", "m"),
        ("m", "banana"),
        ("dB", "dimensionless"),
    ],
)
def test_converter_rejects(source: str, target: str) -> None:
    with pytest.raises(Invalid) as info:
        converter(source, target)
    assert info.value.details[0]["field"] == "unit"
    with pytest.raises(Invalid):
        convert(np.array([1.0]), source, target)


PAIRS = [
    ("degC", "degF"),
    ("degC", "K"),
    ("degF", "K"),
    ("m/s", "mph"),
    ("m/s", "km/h"),
    ("m/s", "knot"),
    ("Pa", "hPa"),
    ("Pa", "mbar"),
    ("Pa", "inHg"),
    ("mm", "cm"),
    ("mm", "in"),
    ("m", "ft"),
    ("%", "ppm"),
    ("furlong/fortnight", "m/s"),
]


@given(
    st.sampled_from(PAIRS),
    st.lists(st.floats(min_value=-1e6, max_value=1e6) | st.just(math.nan), max_size=20),
)
def test_round_trip(pair: tuple[str, str], values: list[float]) -> None:
    canonical, target = pair
    arr = np.array(values, dtype=np.float64)
    back = to_canonical(convert(arr, canonical, target), target, canonical)
    assert back.shape == arr.shape
    nan = np.isnan(arr)
    assert np.array_equal(np.isnan(back), nan)
    np.testing.assert_allclose(back[~nan], arr[~nan], rtol=1e-9, atol=1e-9)


@given(st.sampled_from(PAIRS), st.floats(min_value=-1e6, max_value=1e6))
def test_scalar_matches_vector(pair: tuple[str, str], value: float) -> None:
    canonical, target = pair
    vec = convert(np.array([value]), canonical, target)[0]
    assert convert_value(value, canonical, target) == pytest.approx(vec, rel=1e-12, abs=1e-12)


# -- bounds (issue 11 item 12) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "m**9**9**9",  # pint evaluated 9**(9**9): an integer of 370 million digits
        "m^9^9^9",
        "km**(9**9)",
        "m**(9**9**9)",
        "m**99",
        "m**1e999",
        "m**-13",
        "m**(1/0)",
        "m¹³",
        "m**2²",
        "((((m))))",
        "((km**12)**12)**12",  # each power bounded, the product is km**1728
        "m**6*m**7",
        "1" * 13 + " m",
        "9" * 5000,
        "m" * 101,
    ],
)
def test_unit_expressions_are_bounded_before_pint_evaluates_them(text: str) -> None:
    """issue 11 item 12: a variable defined with the unit `m**9**9**9` made pint compute a
    gigantic exponent on the event loop and the whole server hung. Powers, nesting and number
    literals are bounded before pint sees the text; each case is a prompt Invalid on field
    unit, and every other entry point (compatible, kind_of_unit, converter) refuses it too."""
    with pytest.raises(Invalid) as err:
        validate_unit(text)
    assert err.value.details[0]["field"] == "unit"
    for call in (
        lambda: compatible(text, "m"),
        lambda: kind_of_unit(text),
        lambda: converter(text, "m"),
    ):
        with pytest.raises(Invalid):
            call()


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("m**12", "m**12"),
        ("s**-12", "1/s**12"),
        ("m^-2", "1/m**2"),
        ("m**(1/2)", "m**0.5"),
        ("m ** -2", "1/m**2"),
        ("(m/s)**2", "m**2/s**2"),
        ("(((m)))**2", "m**2"),
        ("kg*m^2*s^-3", "kg*m**2/s**3"),
        ("m²", "m**2"),
        ("m⁻¹²", "1/m**12"),
        ("(m**3)**4", "m**12"),
        ("W/m**2", "W/m**2"),
        ("square meter", "m**2"),
    ],
)
def test_real_unit_expressions_stay_accepted(text: str, normalized: str) -> None:
    """issue 11 item 12: the bounds leave every unit a station writes alone."""
    assert validate_unit(text) == normalized


@settings(deadline=None)  # no time limit on a busy machine; a real hang still hangs the test
@given(st.text(alphabet="mks9012.e+-*/^() ²⁻", max_size=40))
def test_fuzz_unit_arithmetic_is_bounded(text: str) -> None:
    """issue 11 item 12: any arithmetic of units, digits and powers either validates to a
    unit whose powers are all within the bound or is an Invalid, and neither takes long (an
    unbounded case would hang this test, as `m**9**9**9` hung the server)."""
    try:
        normalized = validate_unit(text)
    except Invalid:
        return
    for power in re.findall(r"\*\*(-?[0-9.]+)", normalized):
        assert abs(float(power)) <= MAX_UNIT_EXPONENT


def test_warm_builds_pint_only_for_a_system_that_converts() -> None:
    """A stream warms its unit system before it subscribes (``units.warm``): in English units
    that builds pint's registry and every catalog conversion; in the catalog's own metric
    units nothing needs pint, so a server of metric streams never loads it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from streamgauge.core import units\n"
        "units.warm(units.METRIC)\n"
        "assert 'pint' not in sys.modules, 'metric loaded pint'\n"
        "units.warm(units.ENGLISH)\n"
        "assert units._ureg.cache_info().currsize == 1\n"
        "before = units.converter.cache_info().misses\n"
        "from streamgauge.domain import catalog\n"
        "for e in catalog.CATALOG.values():\n"
        "    units.converter(e.unit, units.target_unit(units.ENGLISH, e.kind, e.unit))\n"
        "assert units.converter.cache_info().misses == before, 'a conversion was not warm'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
