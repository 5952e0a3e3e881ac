"""Domain types of the sensor-network model (DESIGN section 1) as the native API writes them.

Every id is a user-chosen string (1-128 characters: letters, digits, ``_``, ``-``, ``.``, ``:``,
starting with a letter or digit) or generated. All ``*In`` models forbid unknown fields, so a typo
in a body is a clear 422, not a silently dropped field. Every field has a default, so the same model
serves a partial update (``PATCH``), where only the fields sent are applied.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
ID_RE = re.compile(ID_PATTERN)

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=128)]
Name = Annotated[str, StringConstraints(max_length=256)]
Metadata = dict[str, Any]
Role = Literal["admin", "manager", "user"]
ROLES: tuple[Role, ...] = ("admin", "manager", "user")


def new_id(prefix: str = "") -> str:
    """A generated id: short, random, valid under ``ID_PATTERN``."""
    return prefix + secrets.token_hex(6)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectIn(_In):
    id: Id | None = Field(default=None, description="Project id; generated if omitted.")
    name: Name | None = Field(default=None, description="Display name; defaults to the id.")
    description: Annotated[str, StringConstraints(max_length=4096)] = ""
    owner: Name | None = None
    pi: Name | None = Field(default=None, description="Principal investigator.")
    metadata: Metadata = Field(default_factory=dict)


class Project(ProjectIn):
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


class Variable(VariableIn):
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
    metadata: Metadata


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
