"""The registry's records: what the in-memory read model holds of each piece of metadata.

The registry (``core/registry.py``) builds them when it applies metadata events
(``domain/events.py``); the store reads them through ``domain/readmodel.py``. They live here,
below both, so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from streamgauge.domain.catalog import Entry
from streamgauge.domain.model import Device, Project, Role, Site, Variable

__all__ = [
    "AccountRec",
    "DeviceRec",
    "ProjectRec",
    "SeriesRec",
    "SiteRec",
    "VariableRec",
    "series_prefix",
]


@dataclass(slots=True)
class ProjectRec:
    pk: int
    doc: Project


@dataclass(slots=True)
class SiteRec:
    pk: int
    project_pk: int
    doc: Site


@dataclass(slots=True)
class DeviceRec:
    pk: int
    project_pk: int
    doc: Device


@dataclass(slots=True)
class VariableRec:
    """A variable, with its catalog entry and the affine map (``scale``, ``offset``) from the
    unit it is sent in to the entry's canonical unit (the unit it is stored in). The core
    resolves the entry (``core.registry.variable_rec``)."""

    pk: int
    device_pk: int
    doc: Variable
    entry: Entry
    scale: float
    offset: float


@dataclass(slots=True)
class SeriesRec:
    pk: int
    project_pk: int
    device_pk: int
    variable_pk: int
    set: int
    device_id: str
    variable_id: str
    prefix: bytes  # '"device":"d","variable":"v","set":1' ready to splice into a JSON object


@dataclass(slots=True)
class AccountRec:
    pk: int
    id: str
    name: str
    home_project_pk: int
    roles: dict[int, Role] = field(default_factory=dict)  # project pk -> role
    keys: dict[str, str] = field(default_factory=dict)  # key id -> argon2 hash


def series_prefix(device_id: str, variable_id: str, set_: int) -> bytes:
    return (
        b'"device":'
        + orjson.dumps(device_id)
        + b',"variable":'
        + orjson.dumps(variable_id)
        + b',"set":'
        + str(set_).encode()
    )
