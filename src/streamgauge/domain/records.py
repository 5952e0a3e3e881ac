"""The registry's records: what the in-memory read model holds of each piece of metadata.

The registry (``core/registry.py``) builds them when it applies metadata events
(``domain/events.py``); the store reads them through ``domain/readmodel.py``. They live here,
below both, so that neither imports the other.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streamgauge.domain.catalog import Entry
from streamgauge.domain.model import Device, Project, QCLimits, Role, Site, Variable

__all__ = [
    "AccountRec",
    "DeviceRec",
    "DocSource",
    "ProjectRec",
    "SeriesRec",
    "Shed",
    "SiteRec",
    "VariableRec",
    "series_prefix",
]

DOC_CACHE = 4096  # site and device documents built from their JSON and kept


@dataclass(slots=True)
class ProjectRec:
    pk: int
    doc: Project


@functools.lru_cache(maxsize=DOC_CACHE)
def _site_doc(stored: str) -> Site:
    return Site.model_validate_json(stored)


@functools.lru_cache(maxsize=DOC_CACHE)
def _device_doc(stored: str) -> Device:
    return Device.model_validate_json(stored)


class DocSource(Protocol):
    """Where a registry that keeps no documents reads a site's or device's JSON when asked
    (``Registry.docs``: a fan-out worker's, which reads them from the database)."""

    def site(self, rec: SiteRec) -> str: ...

    def sites(self, recs: Sequence[SiteRec]) -> list[str]:
        """The documents of ``recs``, in their order (one read for many)."""
        ...

    def device(self, rec: DeviceRec) -> str: ...


class Shed:
    """What a device whose document is not kept holds instead: where to read it, and its
    labels (the registry's label index needs the labels a device had when it changes or
    goes). One is shared by every device with the same labels (``Registry``)."""

    __slots__ = ("source", "labels")

    def __init__(self, source: DocSource, labels: dict[str, str]) -> None:
        self.source = source
        self.labels = labels


class SiteRec:
    """A site: its id, and its document kept as the JSON it is stored as. ``doc`` builds the
    model on demand (the last ``DOC_CACHE`` built are kept): a network has tens of thousands
    of sites and a model with its strings weighs about 1.5 KB, its JSON a tenth of that.
    A registry that keeps no documents (``Registry.docs``) holds the ``DocSource`` instead
    (``shed``), and ``stored`` reads the JSON from it."""

    __slots__ = ("pk", "project_pk", "id", "_stored")

    def __init__(
        self, pk: int, project_pk: int, doc: Site | None = None, *, stored: str = ""
    ) -> None:
        self.pk = pk
        self.project_pk = project_pk
        if doc is not None:
            stored = doc.model_dump_json()
            self.id = sys.intern(doc.id)
        else:
            self.id = sys.intern(orjson.loads(stored)["id"])
        self._stored: str | DocSource = stored

    @property
    def stored(self) -> str:
        found = self._stored
        return found if isinstance(found, str) else found.site(self)

    @stored.setter
    def stored(self, stored: str) -> None:
        self._stored = stored

    def shed(self, source: DocSource) -> None:
        """Keep no document: ``stored`` reads it from ``source`` from now on."""
        self._stored = source

    @property
    def doc(self) -> Site:
        return _site_doc(self.stored)

    @doc.setter
    def doc(self, doc: Site) -> None:
        self.id = sys.intern(doc.id)
        self._stored = doc.model_dump_json()

    def __repr__(self) -> str:
        return f"SiteRec(pk={self.pk}, project_pk={self.project_pk}, id={self.id!r})"


class DeviceRec:
    """A device: its id, site and type (interned: what the hot paths ask), and its document
    kept as the JSON it is stored as (see ``SiteRec``; the registry's indexes by type, site
    and label answer the questions about many devices). Without its document (``shed``) it
    holds a ``Shed``: where to read the JSON, and its labels."""

    __slots__ = ("pk", "project_pk", "id", "site", "type", "_stored")

    def __init__(
        self, pk: int, project_pk: int, doc: Device | None = None, *, stored: str = ""
    ) -> None:
        self.pk = pk
        self.project_pk = project_pk
        self._stored: str | Shed
        if doc is not None:
            self.doc = doc
        else:
            d = orjson.loads(stored)
            self._fields(d["id"], d.get("site"), d.get("type"))
            self._stored = stored

    def _fields(self, id_: str, site: str | None, type_: str | None) -> None:
        self.id = sys.intern(id_)
        self.site = None if site is None else sys.intern(site)
        self.type = None if type_ is None else sys.intern(type_)

    @property
    def stored(self) -> str:
        found = self._stored
        return found if isinstance(found, str) else found.source.device(self)

    @stored.setter
    def stored(self, stored: str) -> None:
        self._stored = stored

    def labels(self) -> dict[str, str]:
        """The document's labels (of the kept JSON, or the ``Shed``'s: do not change them)."""
        found = self._stored
        if isinstance(found, Shed):
            return found.labels
        labels: dict[str, str] = orjson.loads(found).get("labels") or {}
        return labels

    def shed(self, shed: Shed) -> None:
        """Keep no document: ``stored`` reads it from ``shed.source`` from now on."""
        self._stored = shed

    @property
    def doc(self) -> Device:
        return _device_doc(self.stored)

    @doc.setter
    def doc(self, doc: Device) -> None:
        self._fields(doc.id, doc.site, doc.type)
        self._stored = doc.model_dump_json()

    def __repr__(self) -> str:
        return f"DeviceRec(pk={self.pk}, project_pk={self.project_pk}, id={self.id!r})"


@dataclass(slots=True)
class VariableRec:
    """A variable, with its catalog entry and the affine map (``scale``, ``offset``) from the
    unit it is sent in to the entry's canonical unit (the unit it is stored in). The core
    resolves the entry (``core.registry.variable_rec``).

    The document's fields are kept as fields (ids interned, the common defaults as None), not
    as a validated model: a network has hundreds of thousands of variables and a model with its
    dicts and strings weighs about 1.5 KB. ``doc`` builds the document on each call (a few
    microseconds): hot paths read the fields."""

    pk: int
    device_pk: int
    id: str
    name: str
    unit: str | None
    set: int
    project: str  # the ids of the document (the device's project and id when it was stored)
    device: str
    entry: Entry
    scale: float
    offset: float
    limits: QCLimits | None = None
    retention_days: float | None = None
    metadata: dict[str, Any] | None = None  # None: none

    @property
    def doc(self) -> Variable:
        """The variable's document (a new model on each call; the fields a stored document
        leaves at their defaults are left unset)."""
        fields: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "set": self.set,
            "project": self.project,
            "device": self.device,
        }
        if self.unit is not None:
            fields["unit"] = self.unit
        if self.limits is not None:
            fields["limits"] = self.limits
        if self.retention_days is not None:
            fields["retention_days"] = self.retention_days
        if self.metadata:
            fields["metadata"] = self.metadata
        return Variable.model_validate(fields)


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
