"""Domain types of the sensor-network model (DESIGN section 1) as the native API writes them.

Every id is a user-chosen string (1-128 characters: letters, digits, ``_``, ``-``, ``.``, ``:``,
starting with a letter or digit) or generated. All ``*In`` models forbid unknown fields, so a typo
in a body is a clear 422, not a silently dropped field. Every field has a default, so the same model
serves a partial update (``PATCH``), where only the fields sent are applied.
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
ID_RE = re.compile(ID_PATTERN)

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=128)]
Name = Annotated[str, StringConstraints(max_length=256)]
MAX_METADATA_DEPTH = 16
"""Deepest nesting of objects and arrays inside a ``metadata`` value."""

MAX_METADATA_BYTES = 64 * 1024
"""Largest ``metadata`` value, as compact JSON."""

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what a JSON encoder of 64-bit integers can write


def _check_json(value: Any, path: str, depth: int) -> None:
    """Raise ValueError naming ``path`` unless ``value`` is JSON that every reply can encode:
    integers within 64 bits, finite numbers, valid Unicode text, bounded nesting."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(
                f"{path}: the integer does not fit in 64 bits (from -2**63 to 2**64-1); "
                "send it as a string"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: numbers must be finite (no NaN or Infinity)")
        return
    if isinstance(value, str):
        _check_text(value, path)
        return
    if depth >= MAX_METADATA_DEPTH:
        raise ValueError(f"{path}: nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: keys must be strings")
            _check_text(key, f"{path} key {key[:40]!r}")
            _check_json(item, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1)
        return
    raise ValueError(f"{path}: a {type(value).__name__} is not JSON")


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path}: text with a lone surrogate is not valid Unicode") from None


def check_metadata(value: dict[str, Any], name: str = "metadata") -> dict[str, Any]:
    """A ``metadata`` value that every reply can serialize, or ValueError saying where it is
    not. Checked before anything is committed: a value that could not be encoded (an integer
    of 65 bits, a NaN) used to be stored and then failed every listing that included it."""
    _check_json(value, name, 0)
    size = len(orjson.dumps(value))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"{name}: {size} bytes as JSON; at most {MAX_METADATA_BYTES} are accepted")
    return value


def bounded_json(name: str) -> AfterValidator:
    """The validator of a free-form JSON object field called ``name`` (see check_metadata)."""
    return AfterValidator(lambda value: check_metadata(value, name))


Metadata = Annotated[dict[str, Any], bounded_json("metadata")]
"""Free-form JSON of the client's, bounded (see :func:`check_metadata`); every ``*In`` model's.
The stored documents (``Project``, ``Site``, ...) take ``StoredMetadata``: a row written before
this check existed must still load, and the listings encode such a row defensively."""

StoredMetadata = dict[str, Any]
Role = Literal["admin", "manager", "user"]
ROLES: tuple[Role, ...] = ("admin", "manager", "user")


def now_iso() -> str:
    """Now, as the documents write times: UTC, whole seconds, ``Z`` (``2026-01-02T03:04:05Z``)."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_id(prefix: str = "") -> str:
    """A generated id: short, random, valid under ``ID_PATTERN``."""
    return prefix + secrets.token_hex(6)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


AggregateName = Literal["mean", "min", "max", "count", "sum", "first", "last"]
AGGREGATES: tuple[AggregateName, ...] = ("mean", "min", "max", "count", "sum", "first", "last")
"""The aggregate functions of an aggregate read (``agg=``) and of a rollup."""

RetentionDays = Annotated[
    float,
    Field(
        gt=0,
        le=1_000_000,
        description="Keep observations this many days (by observation time); null: forever.",
    ),
]


class Rollup(_In):
    """Aggregates a project keeps of observations after retention removed them."""

    every: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,5}[hd]$")] = Field(
        default="1h", description="Bucket size kept, a whole number of hours or days (`1h`, `1d`)."
    )
    agg: list[AggregateName] = Field(
        default_factory=lambda: list(AGGREGATES),
        min_length=1,
        description="Aggregates readable after the raw rows are gone.",
    )


class ProjectIn(_In):
    id: Id | None = Field(default=None, description="Project id; generated if omitted.")
    name: Name | None = Field(default=None, description="Display name; defaults to the id.")
    description: Annotated[str, StringConstraints(max_length=4096)] = ""
    owner: Name | None = None
    pi: Name | None = Field(default=None, description="Principal investigator.")
    metadata: Metadata = Field(default_factory=dict)
    retention_days: RetentionDays | None = None
    rollup: Rollup | None = Field(
        default=None, description="Keep aggregates of expired observations (see retention_days)."
    )
    # Ingest bridges (InfluxDB line protocol, docs/ports.md)
    autocreate: bool = Field(
        default=False,
        description=(
            "Create devices and variables on first sight in line-protocol writes (catalog "
            "units for known variable names); off: they must exist."
        ),
    )
    device_tag: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        default="device", description="The line-protocol tag whose value names the device."
    )
    tags_as_labels: bool = Field(
        default=False,
        description=(
            "Line-protocol tags other than the device tag become the device's labels "
            "(off: they are ignored)."
        ),
    )


class Project(ProjectIn):
    metadata: StoredMetadata = Field(default_factory=dict)
    id: Id
    name: Name
    created_at: str


class SiteIn(_In):
    id: Id | None = Field(default=None, description="Site (station) id; generated if omitted.")
    name: Name | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    elevation: float | None = Field(default=None, description="Metres above sea level.")
    state: Name | None = None
    country: Name | None = None
    network: Name | None = None
    nwszone: Name | None = None
    nwsfirezone: Name | None = None
    timezone: Name | None = None
    metadata: Metadata = Field(default_factory=dict)


class Site(SiteIn):
    metadata: StoredMetadata = Field(default_factory=dict)
    id: Id
    name: Name
    project: Id


class QCLimits(_In):
    """Quality-control limits of one variable, in its canonical unit; they replace the
    catalog's. A field left out keeps the catalog's value; null turns that check off."""

    min: float | None = None
    max: float | None = None
    max_rate: float | None = Field(default=None, gt=0, description="Largest change per second.")
    max_persist_s: float | None = Field(
        default=None, gt=0, description="Longest time a value may stay exactly unchanged."
    )


class VariableIn(_In):
    id: Id | None = Field(default=None, description="Variable id on its device; defaults to name.")
    name: Id | None = Field(default=None, description="Catalog name such as air_temp.")
    unit: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    set: int = Field(default=1, ge=1, le=1000, description="Sensor set number.")
    limits: QCLimits | None = Field(
        default=None, description="QC limits replacing the catalog's (canonical unit)."
    )
    metadata: Metadata = Field(default_factory=dict)
    retention_days: RetentionDays | None = Field(
        default=None, description="Overrides the project's retention_days for this variable."
    )


class Variable(VariableIn):
    metadata: StoredMetadata = Field(default_factory=dict)
    id: Id
    name: Id
    project: Id
    device: Id


Labels = dict[
    Annotated[str, StringConstraints(min_length=1, max_length=128)],
    Annotated[str, StringConstraints(max_length=256)],
]


class DeviceIn(_In):
    id: Id | None = Field(default=None, description="Device id; generated if omitted.")
    site: Id | None = Field(default=None, description="Site the device stands at, if any.")
    type: Name | None = None
    name: Name | None = None
    labels: Labels = Field(default_factory=dict)
    metadata: Metadata = Field(default_factory=dict)
    variables: list[VariableIn] | None = Field(
        default=None, description="Variables created together with the device (create only)."
    )


class Device(_In):
    id: Id
    project: Id
    site: Id | None
    type: Name | None
    name: Name
    labels: Labels
    metadata: StoredMetadata


class ServiceAccountIn(_In):
    id: Id | None = Field(
        default=None, description="Unique in the deployment; generated if omitted."
    )
    name: Name | None = None
    role: Role = "user"


class ServiceAccount(BaseModel):
    id: Id
    name: Name
    project: Id
    roles: dict[str, Role]


class RoleIn(_In):
    role: Role


class Key(BaseModel):
    key_id: str
    created_at: str


class NewKey(Key):
    secret: str
