"""Units: validation, Synoptic-style unit systems and cached affine conversion (pint).

Pure: no I/O and no clocks. One private pint ``UnitRegistry``, built at first use (pint recommends a
single registry per application; quantities from different registries do not mix).

Unit systems follow the Synoptic push ``units`` argument: a comma-separated list mixing whole
systems (``metric``/``english``, case-insensitive) with ``quantity|unit`` overrides, later entries
overriding earlier ones (``english,speed|kts``). Absent or empty means ``metric``.

    kind     metric   english   accepted overrides
    temp     degC     degF      c, f, k
    speed    m/s      mph       mps/ms/m/s, mph, kph/kmh/km/h, kts/kt/knots/knot
    pres     Pa       inHg      pa, hpa, mb/mbar, inhg
    alti     Pa       inHg      pa, hpa, mb/mbar, inhg
    precip   mm       in        mm, cm, in
    height   m        ft        m, ft

``wind|...`` is accepted as an alias of ``speed|...`` (old push reference). Kinds outside this
table (direction, fraction, irradiance, ...) are always returned in their canonical unit.

Every conversion between the units handled here is affine, so :func:`converter` reduces it to a
``(scale, offset)`` pair computed once with pint and cached; :func:`convert` then applies it to a
whole float64 array at numpy speed (NaN stays NaN).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from streamgauge.domain import catalog
from streamgauge.domain.errors import BadRequest, Invalid

__all__ = [
    "ENGLISH",
    "KINDS",
    "METRIC",
    "UnitSystem",
    "compatible",
    "convert",
    "convert_value",
    "converter",
    "describe",
    "kind_of_unit",
    "parse_units",
    "target_unit",
    "to_canonical",
    "unit_label",
    "validate_unit",
]


def _pint() -> Any:
    """The pint module, imported at the first use of a unit (not with this module: pint and its
    registry cost a server's start a fifth of a second in every process). pint's typing is
    partial, so it is kept at arm's length."""
    import pint  # deferred on purpose

    return pint


@lru_cache(maxsize=1)
def _ureg() -> Any:
    """The private pint ``UnitRegistry``, built at its first use."""
    return _pint().UnitRegistry()


MAX_UNIT_TEXT = 100
"""Longest unit expression accepted (pint parses by tokenizing; no reason to take novels)."""

MAX_UNIT_EXPONENT = 12
"""Largest power (in absolute value) a unit expression may write: ``m**3``, ``s**-2``."""

MAX_UNIT_NESTING = 3
"""Deepest parenthesis nesting in a unit expression: ``(m/s)**2``."""

MAX_UNIT_NUMBER = 12
"""Longest number literal (characters) in a unit expression."""

KINDS: tuple[str, ...] = ("temp", "speed", "pres", "alti", "precip", "height")
"""The quantity kinds a ``units`` spec can override."""

_METRIC_UNITS: dict[str, str] = {
    "temp": "degC",
    "speed": "m/s",
    "pres": "Pa",
    "alti": "Pa",
    "precip": "mm",
    "height": "m",
}
_ENGLISH_UNITS: dict[str, str] = {
    "temp": "degF",
    "speed": "mph",
    "pres": "inHg",
    "alti": "inHg",
    "precip": "in",
    "height": "ft",
}

_KIND_ALIASES: dict[str, str] = {k: k for k in KINDS} | {"wind": "speed"}

_PRES_CHOICES = {"pa": "Pa", "hpa": "hPa", "mb": "mbar", "mbar": "mbar", "inhg": "inHg"}
_CHOICES: dict[str, dict[str, str]] = {
    "temp": {"c": "degC", "f": "degF", "k": "K"},
    "speed": {
        "mps": "m/s",
        "ms": "m/s",
        "m/s": "m/s",
        "mph": "mph",
        "kph": "km/h",
        "kmh": "km/h",
        "km/h": "km/h",
        "kts": "knot",
        "kt": "knot",
        "knots": "knot",
        "knot": "knot",
    },
    "pres": _PRES_CHOICES,
    "alti": _PRES_CHOICES,
    "precip": {"mm": "mm", "cm": "cm", "in": "in"},
    "height": {"m": "m", "ft": "ft"},
}


# ---------------------------------------------------------------------------------------------
# validation


def _invalid_unit(text: str, reason: str) -> Invalid:
    return Invalid(f"invalid unit {text!r}: {reason}", [{"field": "unit", "reason": reason}])


# The names responses print (Synoptic's spellings) are accepted back as units.
_LABEL_SPELLINGS = {
    "celsius": "degC",
    "fahrenheit": "degF",
    "kelvin": "K",
    "pascals": "Pa",
    "hectopascals": "hPa",
    "millibars": "mbar",
    "inhg": "inHg",
    "millimeters": "mm",
    "centimeters": "cm",
    "inches": "inch",
    "meters": "m",
    "feet": "ft",
    "degrees": "degree",
    "knots": "knot",
}


_SUPERSCRIPTS = frozenset("⁰¹²³⁴⁵⁶⁷⁸⁹")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_EXPONENT = re.compile(
    r"\(\s*[+-]?\s*({n})\s*(?:/\s*({n})\s*)?\)|[+-]?\s*({n})".format(
        n=r"[0-9.]+(?:[eE][+-]?[0-9]+)?"
    )
)
_UNIT_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UNIT_OPERATORS = frozenset("*/^()+- \t")


def _check_shape(text: str) -> None:
    """Refuse, before pint sees it, any unit expression whose evaluation is not cheap and bounded.

    pint evaluates a unit expression as arithmetic on Python numbers: ``m**9**9**9`` asks for
    ``9**(9**9)``, an integer of 370 million digits, which held the event loop (and so the whole
    server) for good. Here a power's exponent must be a plain number (optionally signed, or a
    parenthesized fraction such as ``(1/2)``) of at most ``MAX_UNIT_EXPONENT``; powers do not
    chain (``a**b**c``); parentheses nest at most ``MAX_UNIT_NESTING`` deep; a number literal has
    at most ``MAX_UNIT_NUMBER`` characters; superscript exponents (``m²``) at most two digits.
    With ``MAX_UNIT_TEXT`` characters in all, the worst accepted expression costs pint
    microseconds. Raises :class:`Invalid` naming the position."""
    i, n, depth = 0, len(text), 0
    after_power = False  # the previous token closed an exponent
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if text.startswith("**", i) or c == "^":
            if after_power:
                raise _invalid_unit(text, f"powers do not chain (position {i}); use parentheses")
            i = _exponent(text, i + (2 if c == "*" else 1))
            after_power = True
            continue
        if c in _SUPERSCRIPTS:
            if after_power:
                raise _invalid_unit(text, f"powers do not chain (position {i}); use parentheses")
            j = i
            while j < n and text[j] in _SUPERSCRIPTS:
                j += 1
            digits = text[i:j].translate(_SUPERSCRIPT_DIGITS)
            if j - i > 2 or int(digits) > MAX_UNIT_EXPONENT:
                raise _invalid_unit(
                    text, f"exponent larger than {MAX_UNIT_EXPONENT} (position {i})"
                )
            i = j
            after_power = True
            continue
        if c != "⁻":  # a superscript minus belongs to the superscript exponent after it
            after_power = False
        if c == "(":
            depth += 1
            if depth > MAX_UNIT_NESTING:
                raise _invalid_unit(
                    text, f"parentheses nest more than {MAX_UNIT_NESTING} deep (position {i})"
                )
        elif c == ")":
            depth -= 1
        elif c.isdigit() or c == ".":
            m = _UNIT_NUMBER.match(text, i)
            if m is None or not c.isascii():
                raise _invalid_unit(text, f"unexpected {c!r} at position {i}")
            if len(m.group()) > MAX_UNIT_NUMBER:
                raise _invalid_unit(text, f"number too long at position {i}")
            i = m.end()
            continue
        elif c not in _UNIT_OPERATORS:  # a unit name: letters, digits after the first, _ ...
            while i < n and text[i] not in _UNIT_OPERATORS and text[i] not in _SUPERSCRIPTS:
                i += 1
            continue
        i += 1


def _exponent(text: str, i: int) -> int:
    """Check the exponent starting at ``i`` (after ``**`` or ``^``); the index after it."""
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    m = _EXPONENT.match(text, i)
    if m is None:
        raise _invalid_unit(text, f"an exponent must be a plain number (position {i})")
    parts = [p for p in m.groups() if p is not None]
    try:
        if any(len(p) > MAX_UNIT_NUMBER for p in parts):
            raise ValueError
        value = float(parts[0]) / (float(parts[1]) if len(parts) > 1 else 1.0)
    except (ValueError, ZeroDivisionError):
        raise _invalid_unit(text, f"bad exponent at position {i}") from None
    if not abs(value) <= MAX_UNIT_EXPONENT:
        raise _invalid_unit(
            text, f"exponent {m.group().strip()} is larger than {MAX_UNIT_EXPONENT} (position {i})"
        )
    return m.end()


@lru_cache(maxsize=1024)
def _parse(text: str) -> Any:
    """The pint Unit for ``text``; raises Invalid. Cached (exceptions are not cached). The text
    is bounded in size and shape (:func:`_check_shape`) before pint evaluates anything."""
    stripped = text.strip()
    if not stripped:
        raise _invalid_unit(text, "unit is empty")
    if len(stripped) > MAX_UNIT_TEXT:
        raise _invalid_unit(text[:MAX_UNIT_TEXT] + "...", "unit is too long")
    _check_shape(stripped)
    stripped = _LABEL_SPELLINGS.get(stripped.lower(), stripped)
    try:
        unit = _ureg().parse_units(stripped)
    except _pint().UndefinedUnitError:
        raise _invalid_unit(text, f"unknown unit {stripped!r}") from None
    except Exception:  # pint's parser raises assorted errors (TypeError, AssertionError, ...)
        raise _invalid_unit(text, f"cannot parse unit {stripped!r}") from None
    # Nested powers multiply, ((km**12)**12)**12 is km**1728: its factor overflows a float in
    # every later conversion; the power of each unit in the result is bounded as well.
    for name, power in unit._units.items():
        if not abs(power) <= MAX_UNIT_EXPONENT:
            raise _invalid_unit(
                text, f"{name} to the power {power:g} (at most {MAX_UNIT_EXPONENT})"
            )
    return unit


_ASCII = (("Δ°C", "delta_degC"), ("Δ°F", "delta_degF"), ("°C", "degC"), ("°F", "degF"))


def _normalize(unit: Any) -> str:
    text = format(unit, "~C")
    for fancy, plain in _ASCII:
        text = text.replace(fancy, plain)
    if text == "":
        return "dimensionless"
    try:
        if _ureg().parse_units(text) == unit:
            return text
    except Exception:  # pragma: no cover - defensive: fall back to pint's long form
        pass
    return format(unit, "C")


def validate_unit(text: str) -> str:
    """A normalized, pint-parsable spelling of ``text`` (``"meter/second"`` -> ``"m/s"``).

    Raises :class:`Invalid` (details ``[{"field": "unit", "reason": ...}]``) for anything pint does
    not know. Odd but real units pass (``"furlongs/fortnight"``).
    """
    return _normalize(_parse(text))


def _root(unit: Any) -> tuple[Any, Any]:
    """(dimensionality, root unit) - the root unit tells apart dimensionless families."""
    _factor, root = _ureg().get_root_units(unit)
    return unit.dimensionality, root


@lru_cache(maxsize=4096)
def compatible(a: str, b: str) -> bool:
    """Whether values in unit ``a`` can be meaningfully converted to unit ``b``.

    Stricter than pint's dimensionality: pint treats angles, percentages and counts all as
    dimensionless, so ``%`` -> ``degree`` would "convert". Here dimensionless units must also share
    their root unit: ratios (``%``, ``ppm``, ``dimensionless``), angles (``degree``, ``radian``)
    and ``count`` are three separate families. Raises Invalid for unparsable units.
    """
    return _root(_parse(a)) == _root(_parse(b))


@lru_cache(maxsize=1)
def _kinds() -> list[tuple[Any, str]]:
    """(dimensionality, quantity kind) of the kinds ``kind_of_unit`` names."""
    reg = _ureg()
    return [
        (reg.parse_units(unit).dimensionality, kind)
        for unit, kind in (("K", "temp"), ("m/s", "speed"), ("Pa", "pres"), ("m", "height"))
    ]


def kind_of_unit(unit: str) -> str:
    """The quantity kind a unit's dimensionality implies: temp, speed, pres, height or other."""
    dim = _parse(unit).dimensionality
    for known, kind in _kinds():
        if dim == known:
            return kind
    return "other"


# ---------------------------------------------------------------------------------------------
# unit systems


@dataclass(frozen=True)
class UnitSystem:
    """The unit chosen per quantity kind; hashable (a tuple of ``(kind, unit)`` in KINDS order).
    Its hash is computed once: unit systems key the per-batch caches every subscriber of every
    fan-out round looks up."""

    units: tuple[tuple[str, str], ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self.units))

    def __hash__(self) -> int:
        return self._hash

    def unit_for(self, kind: str) -> str | None:
        for k, u in self.units:
            if k == kind:
                return u
        return None


def _system(mapping: dict[str, str]) -> UnitSystem:
    return UnitSystem(tuple((k, mapping[k]) for k in KINDS if k in mapping))


METRIC = _system(_METRIC_UNITS)
ENGLISH = _system(_ENGLISH_UNITS)


def _bad_part(index: int, part: str, reason: str) -> BadRequest:
    return BadRequest(
        f"bad units part {index} ({part!r}): {reason}",
        [{"field": "units", "index": index, "reason": f"{reason} in {part!r}"}],
    )


def parse_units(spec: str | None) -> UnitSystem:
    """Parse a Synoptic ``units`` argument; ``None``/empty means metric.

    Empty parts (``"english,"``) are ignored. Raises :class:`BadRequest` naming the bad part and
    its index for an unknown system, quantity or unit.
    """
    chosen = dict(_METRIC_UNITS)
    if spec is None:
        return METRIC
    for index, raw in enumerate(spec.split(",")):
        part = raw.strip()
        if not part:
            continue
        lowered = part.lower()
        if "|" not in lowered:
            if lowered == "metric":
                chosen.update(_METRIC_UNITS)
            elif lowered == "english":
                chosen.update(_ENGLISH_UNITS)
            else:
                raise _bad_part(
                    index, part, f"unknown unit system {part!r} (expected metric or english)"
                )
            continue
        quantity, _, unit = (s.strip() for s in lowered.partition("|"))
        kind = _KIND_ALIASES.get(quantity)
        if kind is None:
            raise _bad_part(
                index,
                part,
                f"unknown quantity {quantity!r} (expected one of {', '.join(_KIND_ALIASES)})",
            )
        target = _CHOICES[kind].get(unit)
        if target is None:
            raise _bad_part(
                index,
                part,
                f"unknown unit {unit!r} for {kind} (expected one of {', '.join(_CHOICES[kind])})",
            )
        chosen[kind] = target
    return _system(chosen)


@lru_cache(maxsize=4096)
def target_unit(system: UnitSystem, kind: str, canonical: str) -> str:
    """The unit values of ``kind`` stored in ``canonical`` are returned in under ``system``.

    Kinds the system does not cover, and (defensively) canonical units that cannot convert to the
    system's choice, keep the canonical unit.
    """
    chosen = system.unit_for(kind)
    if chosen is None or chosen == canonical:
        return canonical
    if not compatible(canonical, chosen):
        return canonical
    return chosen


def describe(system: UnitSystem) -> dict[str, str]:
    """``{kind: label}`` for a response's ``units`` map, e.g. ``{"temp": "Celsius", ...}``."""
    return {kind: unit_label(unit) for kind, unit in system.units}


# ---------------------------------------------------------------------------------------------
# labels

_LABELS: dict[str, str] = {
    "degC": "Celsius",
    "degF": "Fahrenheit",
    "K": "Kelvin",
    "m/s": "m/s",
    "mph": "mph",
    "km/h": "km/h",
    "knot": "knots",
    "Pa": "Pascals",
    "hPa": "Hectopascals",
    "mbar": "Millibars",
    "inHg": "INHG",
    "mm": "Millimeters",
    "cm": "Centimeters",
    "in": "Inches",
    "m": "Meters",
    "ft": "Feet",
    "%": "%",
    "degree": "Degrees",
    "W/m**2": "W/m**2",
    "ppm": "ppm",
}


@lru_cache(maxsize=1)
def _labels_by_unit() -> dict[str, str]:
    return {validate_unit(k): v for k, v in _LABELS.items()}


@lru_cache(maxsize=4096)
def unit_label(unit: str) -> str:
    """The name a response states for ``unit``: Synoptic-style where one exists, else compact.
    Cached: a feed session's first metadata names every sensor's unit, and pint's parse and
    format cost about 60 us each (a thousand sessions opened together paid it 6,000 times in
    their first fan-out rounds).

    ``"degC"`` -> ``"Celsius"``, ``"mbar"`` -> ``"Millibars"``, ``"inHg"`` -> ``"INHG"``;
    ``"furlong/fortnight"`` -> ``"fur/fortnight"``. Unparsable text is returned unchanged (a label
    is never a reason to fail a response).
    """
    label = _LABELS.get(unit)  # a spelling of the table: the same label, no unit parsed
    if label is not None:
        return label
    try:
        normalized = validate_unit(unit)
    except Invalid:
        return unit
    return _labels_by_unit().get(normalized, normalized)


# ---------------------------------------------------------------------------------------------
# conversion


def _bad_conversion(source: str, target: str, reason: str) -> Invalid:
    return Invalid(
        f"cannot convert {source!r} to {target!r}: {reason}",
        [{"field": "unit", "reason": f"cannot convert {source!r} to {target!r}: {reason}"}],
    )


@lru_cache(maxsize=1024)
def converter(canonical: str, target: str) -> tuple[float, float]:
    """``(scale, offset)`` with ``out = value * scale + offset`` converting canonical -> target.

    Raises :class:`Invalid` for unknown or incompatible units and for non-affine conversions
    (logarithmic units such as dB).
    """
    if canonical == target:  # the same unit: nothing parsed (a start, a first read)
        return (1.0, 0.0)
    src, dst = _parse(canonical), _parse(target)
    if src == dst:
        return (1.0, 0.0)
    if not compatible(canonical, target):
        raise _bad_conversion(canonical, target, "incompatible units")
    try:
        points = _ureg().Quantity(np.array([0.0, 1.0, 1000.0]), src).to(dst).magnitude
        out = [float(x) for x in np.asarray(points, dtype=np.float64)]
    except Exception:
        raise _bad_conversion(canonical, target, "pint cannot convert them") from None
    offset = out[0]
    scale = (out[2] - out[0]) / 1000.0  # the wide span keeps rounding out of the scale
    expected = offset + scale
    finite = all(math.isfinite(x) for x in out)
    if not finite or scale == 0.0 or not math.isclose(out[1], expected, rel_tol=1e-9, abs_tol=1e-9):
        raise _bad_conversion(canonical, target, "conversion is not affine")
    return (scale, offset)


_WARM: set[UnitSystem] = set()


def warm(system: UnitSystem) -> None:
    """Make now what answering in ``system`` needs for the catalog's variables: each entry's
    unit in the system, its conversion and its label (pint's registry, built at its first
    use, costs 0.1 to 0.2 s of CPU; it is not built for labels alone). A stream asks before
    it subscribes, so the first fan-out round with a subscriber in English units does not
    build it while a thousand sessions wait for their rows; once per system and process."""
    if system in _WARM:
        return
    targets = []
    for entry in catalog.CATALOG.values():
        target = target_unit(system, entry.kind, entry.unit)
        try:
            converter(entry.unit, target)
        except Invalid:
            pass  # answered in the canonical unit (``output_values``), as before
        targets.append(target)
    built = _ureg.cache_info().currsize > 0
    for target in targets:  # labels, without building pint's registry just for them
        if built or target in _LABELS:
            unit_label(target)
    _WARM.add(system)


def convert(values: npt.ArrayLike, canonical: str, target: str) -> npt.NDArray[np.float64]:
    """``values`` (in ``canonical``) expressed in ``target``; vectorized, NaN stays NaN.

    Returns the input array itself (as float64) when no conversion is needed.
    """
    arr = np.asarray(values, dtype=np.float64)
    if canonical == target:
        return arr
    scale, offset = converter(canonical, target)
    if scale == 1.0 and offset == 0.0:
        return arr
    result: npt.NDArray[np.float64] = arr * scale + offset
    return result


def to_canonical(values: npt.ArrayLike, unit: str, canonical: str) -> npt.NDArray[np.float64]:
    """The inverse of :func:`convert`: ``values`` given in ``unit`` expressed in ``canonical``.

    Used for values ingested in a variable's own unit and for filter comparison values given in
    the subscriber's units.
    """
    return convert(values, unit, canonical)


def convert_value(value: float, source: str, target: str) -> float:
    """One scalar from ``source`` to ``target`` (e.g. a filter's comparison value)."""
    if source == target:
        return float(value)
    scale, offset = converter(source, target)
    return float(value) * scale + offset


# -- catalog entries ------------------------------------------------------------------------------


def _unit_detail(reason: str) -> list[dict[str, str]]:
    return [{"field": "unit", "reason": reason}]


def entry_for(name: str, unit: str | None) -> catalog.Entry:
    """The entry to ingest ``name`` under, given the unit (if any) the client sent it in.

    * Known name: the catalog entry. A given ``unit`` must convert to the canonical one (the
      caller converts with :func:`streamgauge.core.units.to_canonical`), else :class:`Invalid`
      naming field ``unit``.
    * Unknown name: a synthetic entry in the client's unit (required, validated and normalized),
      its kind derived from the unit's dimensionality, with no QC limits.
    """
    if not name:
        raise Invalid("variable name is empty", [{"field": "name", "reason": "empty"}])
    entry = catalog.CATALOG.get(name)
    if entry is not None:
        if unit is not None and unit != entry.unit and not compatible(unit, entry.unit):
            reason = f"unit {unit!r} cannot convert to {name}'s unit {entry.unit!r}"
            raise Invalid(reason, _unit_detail(reason))
        return entry
    if unit is None or not unit.strip():
        reason = f"unit is required for uncatalogued variable {name!r}"
        raise Invalid(reason, _unit_detail(reason))
    normalized = validate_unit(unit)
    return catalog.Entry(name=name, long_name=name, unit=normalized, kind=kind_of_unit(normalized))
